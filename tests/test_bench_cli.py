"""`vcap validate --bench dream1k | vdc | carebench` end to end: tiny model, official-format fixtures, a
scripted judge on loopback. A second run makes no new generations and no new judge calls, with equal numbers."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.judge_server import ScriptedServer, scripted_reply


def fixtures(tmp_path, shapes_manifest, bench):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    src = sorted((shapes_manifest.parent / "videos").glob("*.mp4"))[:3]
    if bench == "dream1k":
        rows = []
        for i, path in enumerate(src):
            shutil.copy(path, vdir / f"{100 + i}.mp4")
            rows.append({"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]},
                                      {"role": "assistant", "content": [{"type": "text", "text": "",
                                                                         "reference": f"Shape {i} moves."}]}],
                         "dataset": f"DREAM/{'ab'[i % 2]}", "idx": i, "vid": 100 + i,
                         "extra_info": {"events": [f"Shape {i} moves."] if i else []}})
        ann = tmp_path / "dream.jsonl"
        ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif bench == "carebench":
        meta = []
        for i, path in enumerate(src):
            shutil.copy(path, vdir / f"v_{i}.mp4")
            meta.append({"video": f"v_{i}.mp4", "caption": f"There is a shape {i}. It moves."})
        ann = tmp_path / "metadata.json"
        ann.write_text(json.dumps(meta))
    else:
        ann = tmp_path / "qa"
        ann.mkdir()
        for i, path in enumerate(src[:2]):
            shutil.copy(path, vdir / f"vid{i}.mp4")
        for dim in ("camera", "short", "background", "main_object", "detailed"):
            rows = [{f"vid{i}": [{"question": "What colour is it?", "answer": "red"},
                                 {"question": "Where is it?", "answer": "centre"}]} for i in range(2)]
            (ann / f"{dim}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ann, vdir


@pytest.mark.parametrize("bench", ["dream1k", "vdc", "carebench"])
def test_validate_bench_end_to_end_and_resume(tmp_path, shapes_manifest, bench):
    ann, vdir = fixtures(tmp_path, shapes_manifest, bench)
    out = tmp_path / "out"
    with ScriptedServer(lambda body: ("reply", scripted_reply(body["messages"][0]["content"], {}))) as server:
        args = [sys.executable, "-m", "vcap.cli", "validate", "--bench", bench,
                "--data.init_args.annotations", str(ann), "--data.init_args.video_dir", str(vdir),
                "--data.init_args.output_dir", str(out), "--data.init_args.num_workers", "0",
                "--data.init_args.fps", "null", "--data.init_args.nframes", "4", "--data.init_args.max_pixels", "3136",
                "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": server.url}),
                "--model.init_args.max_new_tokens", "24", "--trainer.accelerator", "cpu"]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        calls = len(server.requests)
        results = json.loads((out / "results.json").read_text())
        generations = (out / "generations.jsonl").read_text()
        second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(server.requests) == calls > 0  # every judge call answered from the cache
    assert (out / "generations.jsonl").read_text() == generations  # nothing generated twice
    again = json.loads((out / "results.json").read_text())
    for key in ("events", "objects", "vdcscore"):
        assert again.get(key) == results.get(key)
    assert results["judge"] == {"backend": "openai", "model": "judge", "temperature": 0.0, "base_url": server.url}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert records and all("completion" in r and "caption" in r for r in records)
    if bench == "vdc":
        assert results["samples"] == 10 and set(results["vdcscore"]["dimensions"]) == {
            "camera", "short", "background", "main_object", "detailed"}
        assert "Avg" in first.stdout
    else:
        assert "overall" in first.stdout and results["events"]["overall"]["success"] == 3
        if bench == "dream1k":
            assert set(results["events"]["sources"]) == {"DREAM/a", "DREAM/b"}
        else:
            assert results["objects"]["overall"]["success"] == 3


def test_periodic_benchmark_inside_fit(tmp_path, tiny_path, shapes_manifest):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from tests.test_grpo_module import make_data, make_module
    from vcap.bench.callback import PeriodicBenchmark

    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    with ScriptedServer(lambda body: ("reply", scripted_reply(body["messages"][0]["content"], {}))) as server:
        callback = PeriodicBenchmark("dream1k", str(ann), str(vdir), every_n_steps=1, limit=2,
                                     output_dir=str(tmp_path / "periodic"),
                                     judge_options={"model": "judge", "base_url": server.url},
                                     data_options={"num_workers": 0, "fps": None, "nframes": 4, "max_pixels": 3136})
        trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=CSVLogger(tmp_path, name="log"),
                            enable_progress_bar=False, enable_checkpointing=False, limit_val_batches=0,
                            num_sanity_val_steps=0, callbacks=[callback])
        trainer.fit(make_module(tiny_path, max_new_tokens=8), datamodule=make_data(tiny_path, shapes_manifest))
    for step in (1, 2):
        results = json.loads((tmp_path / "periodic" / f"step_{step}" / "results.json").read_text())
        assert results["samples"] == 2 and results["model"].endswith(f"@ step {step}")
    header = (tmp_path / "log/version_0/metrics.csv").read_text().splitlines()[0]
    assert "bench/dream1k/events_f1" in header


def test_killed_benchmark_run_resumes_without_paying_twice(tmp_path, shapes_manifest):
    import signal
    from collections import Counter

    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    answered, state = [], {"proc": None, "killed": False}

    def script(body):
        prompt = body["messages"][0]["content"]
        if len(answered) == 3 and not state["killed"]:  # die in the middle of the judge phase
            state["killed"] = True
            os.kill(state["proc"].pid, signal.SIGKILL)
            return ("status", 500)
        answered.append(prompt)
        return ("reply", scripted_reply(prompt, {}))

    def args(url, out):
        return [sys.executable, "-m", "vcap.cli", "validate", "--bench", "dream1k", "--limit", "3",
                "--data.init_args.annotations", str(ann), "--data.init_args.video_dir", str(vdir),
                "--data.init_args.output_dir", str(out), "--data.init_args.num_workers", "0",
                "--data.init_args.fps", "null", "--data.init_args.nframes", "4", "--data.init_args.max_pixels", "3136",
                "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": url, "concurrency": 1,
                                                              "max_retries": 0}),
                "--model.init_args.max_new_tokens", "24", "--trainer.accelerator", "cpu"]

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with ScriptedServer(script) as server:
        state["proc"] = subprocess.Popen(args(server.url, tmp_path / "out"), cwd=tmp_path, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state["proc"].wait(timeout=300)
        assert state["killed"] and not (tmp_path / "out/results.json").exists()
        resumed = subprocess.run(args(server.url, tmp_path / "out"), cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not [p for p, n in Counter(answered).items() if n > 1]  # no judge call paid twice
    with ScriptedServer(lambda body: ("reply", scripted_reply(body["messages"][0]["content"], {}))) as server:
        clean = subprocess.run(args(server.url, tmp_path / "clean"), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert clean.returncode == 0
        assert len(server.requests) == len(answered)  # the killed + resumed run asked exactly what a clean one asks
    got = json.loads((tmp_path / "out/results.json").read_text())
    want = json.loads((tmp_path / "clean/results.json").read_text())
    assert got["events"] == want["events"] and got["samples"] == 3
