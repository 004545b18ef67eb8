"""`vcap validate --bench dream1k | vdc | carebench` end to end: tiny model, official-format fixtures, a
scripted judge on loopback. A second run makes no new generations and no new judge calls, with equal numbers."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.judge_server import ScriptedServer, scripted_judge


def fixtures(tmp_path, shapes_manifest, bench, bad_video=False):
    """Three good videos (VDC: two) in the official formats; ``bad_video`` adds one that cannot be decoded, in a
    source of its own (VDC: a video id of its own)."""
    vdir = tmp_path / "videos"
    vdir.mkdir()
    src = sorted((shapes_manifest.parent / "videos").glob("*.mp4"))[:3]
    n = len(src) + bad_video

    def copy(i, name):
        if i < len(src):
            shutil.copy(src[i], vdir / name)
        else:
            (vdir / name).write_bytes(b"\x00not a video" * 64)

    if bench == "dream1k":
        rows = []
        for i in range(n):
            copy(i, f"{100 + i}.mp4")
            rows.append({"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]},
                                      {"role": "assistant", "content": [{"type": "text", "text": "",
                                                                         "reference": f"Shape {i} moves."}]}],
                         "dataset": f"DREAM/{'abc'[i % 2] if i < 3 else 'c'}", "idx": i, "vid": 100 + i,
                         "extra_info": {"events": [f"Shape {i} moves."] if i else []}})
        ann = tmp_path / "dream.jsonl"
        ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif bench == "carebench":
        meta = []
        for i in range(n):
            copy(i, f"v_{i}.mp4")
            meta.append({"video": f"v_{i}.mp4", "caption": f"There is a shape {i}. It moves."})
        ann = tmp_path / "metadata.json"
        ann.write_text(json.dumps(meta))
    else:
        ann = tmp_path / "qa"
        ann.mkdir()
        ids = [0, 1] + ([2] if bad_video else [])
        for i in ids:
            copy(i if i < 2 else 99, f"vid{i}.mp4")
        for dim in ("camera", "short", "background", "main_object", "detailed"):
            rows = [{f"vid{i}": [{"question": "What colour is it?", "answer": "red"},
                                 {"question": "Where is it?", "answer": "centre"}]} for i in ids]
            (ann / f"{dim}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ann, vdir


@pytest.mark.parametrize("bench", ["dream1k", "vdc", "carebench"])
def test_validate_bench_end_to_end_and_resume(tmp_path, shapes_manifest, bench):
    """Official protocol (the default); a bad video is counted and named (issue 7 point 14), and CaReBench's one
    group prints one row per kind (point 15)."""
    ann, vdir = fixtures(tmp_path, shapes_manifest, bench, bad_video=True)
    out = tmp_path / "out"
    with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:
        args = [sys.executable, "-m", "vcap.cli", "validate", "--bench", bench,
                "--model.init_args.name_or_path", "vcap-tiny-sft",
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
        if bench == "vdc":  # the run again (one benchmark is enough: the cache and resume code is shared)
            second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert second.returncode == 0, second.stderr[-3000:]
            assert len(server.requests) == calls > 0  # every judge call answered from the cache
            assert (out / "generations.jsonl").read_text() == generations  # nothing generated twice
            again = json.loads((out / "results.json").read_text())
            for key in ("events", "objects", "vdcscore"):
                assert again.get(key) == results.get(key)
    assert results["judge"] == {"backend": "openai", "model": "judge", "base_url": server.url,
                                "response_format": "json_schema"}
    assert results["protocol"] == "official" and "protocol: official" in first.stdout
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert all("completion" in r and "caption" in r for r in records if "bad_video" not in r)
    bad_name = {"dream1k": "103.mp4", "carebench": "v_3.mp4", "vdc": "vid2.mp4"}[bench]
    assert [Path(b["video"]).name for b in results["bad_videos"]][:1] == [bad_name]
    assert "cannot decode" in results["bad_videos"][0]["error"] or "no frames" in results["bad_videos"][0]["error"]
    if bench == "vdc":
        dims = results["vdcscore"]["dimensions"]
        assert results["samples"] == 10 and set(dims) == {"camera", "short", "background", "main_object", "detailed"}
        assert all(d["skipped_ids"] == ["vid2"] for d in dims.values())
        assert "Avg" in first.stdout
    else:
        assert results["events"]["overall"]["success"] == 3 and results["events"]["failed"] == 1
        if bench == "dream1k":
            assert set(results["events"]["sources"]) == {"DREAM/a", "DREAM/b"}
            assert results["events"]["failed_by_source"] == {"DREAM/c": 1}  # its source is still reported
            assert "DREAM/c" in first.stdout
        else:
            assert results["objects"]["overall"]["success"] == 3
            rows = [line for line in first.stdout.splitlines() if "overall" in line]
            assert len(rows) == 2  # one row per kind, not the group row and the overall row


def test_periodic_benchmark_inside_fit(tmp_path, tiny_path, shapes_manifest):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from tests.test_grpo_module import make_data, make_module
    from vcap.bench.callback import PeriodicBenchmark

    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:
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
    """Killed while a concurrent judge batch is in flight (two of its three calls answered, the third hanging):
    the server log shows that the restarted run asks neither answered call again (issue 7 point 13)."""
    import signal
    import threading
    import time
    from collections import Counter

    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    answered, state, lock = [], {"proc": None, "killed": False, "seen": 0}, threading.Lock()

    def script(body):
        key = json.dumps(body["messages"])
        with lock:
            state["seen"] += 1
            kill = state["seen"] == 3 and not state["killed"]
            state["killed"] |= kill
        if kill:  # the third call of the first batch: wait until the other two are delivered, then die
            time.sleep(1.5)
            os.kill(state["proc"].pid, signal.SIGKILL)
            return ("status", 500)
        with lock:
            answered.append(key)
        return ("reply", scripted_judge(body, entail_word="moves"))

    def args(url, out):
        return [sys.executable, "-m", "vcap.cli", "validate", "--bench", "dream1k", "--limit", "3",
                "--model.init_args.name_or_path", "vcap-tiny-sft",
                "--data.init_args.annotations", str(ann), "--data.init_args.video_dir", str(vdir),
                "--data.init_args.output_dir", str(out), "--data.init_args.num_workers", "0",
                "--data.init_args.fps", "null", "--data.init_args.nframes", "4", "--data.init_args.max_pixels", "3136",
                "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": url, "concurrency": 8,
                                                              "max_retries": 0}),
                "--model.init_args.max_new_tokens", "24", "--trainer.accelerator", "cpu"]

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with ScriptedServer(script) as server:
        state["proc"] = subprocess.Popen(args(server.url, tmp_path / "out"), cwd=tmp_path, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state["proc"].wait(timeout=300)
        assert state["killed"] and not (tmp_path / "out/results.json").exists()
        before_restart = list(answered)
        assert len(before_restart) == 2  # killed mid-batch: two answers delivered, one call in flight
        resumed = subprocess.run(args(server.url, tmp_path / "out"), cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    asked_after = answered[len(before_restart):]
    assert not set(before_restart) & set(asked_after)  # no answered request asked again
    assert not [p for p, n in Counter(answered).items() if n > 1]
    with ScriptedServer(lambda body: ("reply", scripted_judge(body, entail_word="moves"))) as server:
        clean = subprocess.run(args(server.url, tmp_path / "clean"), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert clean.returncode == 0
        assert len(server.requests) == len(answered)  # the killed + resumed run asked exactly what a clean one asks
    got = json.loads((tmp_path / "out/results.json").read_text())
    want = json.loads((tmp_path / "clean/results.json").read_text())
    assert got["events"] == want["events"] and got["samples"] == 3
    assert got["events"]["overall"]["recall"] > 0 and got["events"]["overall"]["f1"] > 0  # numbers that can differ


def test_a_judge_that_answers_prose_fails_the_run_and_poisons_nothing(tmp_path, shapes_manifest):
    """Every judgment failed: results.json is written (strict JSON) but the exit status is non-zero; nothing was
    cached, so the same command against a working judge asks every call again and scores (issue 20 items 4, 5)."""
    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    out = tmp_path / "out"

    def args(url):
        return [sys.executable, "-m", "vcap.cli", "validate", "--bench", "dream1k", "--limit", "2",
                "--model.init_args.name_or_path", "vcap-tiny-sft", "--data.init_args.annotations", str(ann),
                "--data.init_args.video_dir", str(vdir), "--data.init_args.output_dir", str(out),
                "--data.init_args.num_workers", "0", "--data.init_args.fps", "null", "--data.init_args.nframes", "4",
                "--data.init_args.max_pixels", "3136", "--model.init_args.max_new_tokens", "24",
                "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": url, "max_retries": 0}),
                "--trainer.accelerator", "cpu"]

    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="300")
    with ScriptedServer(lambda body: ("reply", "I think the caption is quite good overall.")) as prose:
        failed = subprocess.run(args(prose.url), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    # the judging progress bar shares stderr: take the error line from where it starts
    errors = [line[line.index("vcap: error:"):] for line in failed.stderr.splitlines() if "vcap: error:" in line]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert errors[0].startswith("vcap: error: dream1k: no sample could be scored (2 failed, e.g. ")
    assert f"Check the judge ({prose.url})" in errors[0]
    text = (out / "results.json").read_text()
    assert "NaN" not in text  # strict JSON: null where the official F1 is nan
    results = json.loads(text)
    assert results["events"]["overall"]["f1"] is None and results["events"]["failed"] == 2
    assert "temperature" not in results["judge"]  # official requests send none; judge_sampling says what was sent
    with ScriptedServer(lambda body: ("reply", scripted_judge(body, entail_word="moves"))) as good:
        fixed = subprocess.run(args(good.url), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert fixed.returncode == 0, fixed.stderr[-3000:]
        asked = len(good.requests)
    results = json.loads((out / "results.json").read_text())
    assert results["judge_calls"] == asked > 0  # nothing came from the cache: the failures were not kept
    assert results["judge_answers"] == {f"judge @ {good.url}": asked}  # who answered
    assert results["events"]["overall"]["success"] == 2 and results["events"]["failed"] == 0
