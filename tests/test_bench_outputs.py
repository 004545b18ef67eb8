"""Benchmark outputs say what made them and are reused only for exactly that (issue 25, item 1): another model,
other weights or other decoding settings never pick up kept captions, and two runs never write one folder."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_bench_cli import fixtures
from vcap.provenance import (FolderInUseError, MadeByOtherError, OutputFolder, first_difference, slug,
                             weights_fingerprint)


def validate(tmp_path, ann, vdir, server, model, *extra, out=None):
    args = [sys.executable, "-m", "vcap.cli", "validate", "--bench", "dream1k",
            "--model.init_args.name_or_path", model, "--data.init_args.annotations", str(ann),
            "--data.init_args.video_dir", str(vdir), "--data.init_args.num_workers", "0",
            "--data.init_args.fps", "null", "--data.init_args.nframes", "4", "--data.init_args.max_pixels", "3136",
            "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": server.url}),
            "--model.init_args.max_new_tokens", "12", "--trainer.accelerator", "cpu", *extra]
    if out is not None:
        args += ["--data.init_args.output_dir", str(out)]
    return subprocess.run(args, cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                          text=True, timeout=300)


def error_lines(run):
    return [line for line in run.stderr.splitlines() if line.startswith("vcap: error:")]


def completions(folder):
    return {row["id"]: row["completion"] for row in map(json.loads, (folder / "generations.jsonl").open())}


def test_another_model_in_the_same_folder_is_refused_and_default_folders_keep_models_apart(tmp_path, shapes_manifest):
    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    out = tmp_path / "out"
    with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:
        first = validate(tmp_path, ann, vdir, server, "vcap-tiny-sft", out=out)
        assert first.returncode == 0, first.stderr[-3000:]
        kept = (out / "generations.jsonl").read_text()
        made_by = json.loads((out / "made_by.json").read_text())
        assert made_by["key"]["model"] == "vcap-tiny-sft" and len(made_by["key"]["weights"]) == 16
        assert json.loads((out / "results.json").read_text())["made_by"]["key"] == made_by["key"]

        other = validate(tmp_path, ann, vdir, server, "vcap-tiny", out=out)  # today: reused the SFT model's captions
        assert other.returncode == 2, other.stderr[-3000:]
        (line,) = error_lines(other)
        assert line.startswith(f"vcap: error: {out} holds outputs made by something else (model: \"vcap-tiny-sft\" "
                               "there, \"vcap-tiny\" now)"), line
        assert "--data.init_args.output_dir" in line
        assert (out / "generations.jsonl").read_text() == kept  # nothing appended, nothing lost

        longer = validate(tmp_path, ann, vdir, server, "vcap-tiny-sft", "--model.init_args.max_new_tokens", "20",
                          out=out)
        assert longer.returncode == 2
        assert "(decoding.max_new_tokens: 12 there, 20 now)" in error_lines(longer)[0]

        # no output_dir: a folder per model and settings, side by side, each with its own captions
        for model in ("vcap-tiny-sft", "vcap-tiny"):
            run = validate(tmp_path, ann, vdir, server, model)
            assert run.returncode == 0, run.stderr[-3000:]
    folders = {json.loads((f / "made_by.json").read_text())["key"]["model"]: f
               for f in (tmp_path / "runs/bench/dream1k").iterdir() if f.is_dir()}
    assert set(folders) == {"vcap-tiny-sft", "vcap-tiny"}
    assert folders["vcap-tiny"].name.startswith("vcap-tiny-") and (tmp_path / "runs/bench/dream1k/judge_cache.sqlite").is_file()
    assert completions(folders["vcap-tiny-sft"]) == completions(out)  # the same model and settings: same captions
    assert completions(folders["vcap-tiny"]) != completions(out)
    for model, folder in folders.items():
        assert json.loads((folder / "results.json").read_text())["model"] == model


def _hold_lock(folder):
    """A process that holds ``folder``'s lock until its stdin closes."""
    code = ("import sys; from vcap.provenance import OutputFolder; f = OutputFolder(sys.argv[1]); f.lock(); "
            "print('locked', flush=True); sys.stdin.read()")
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, shapes_manifest):
    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:
            run = validate(tmp_path, ann, vdir, server, "vcap-tiny-sft", out=out)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run.returncode == 2
    (line,) = error_lines(run)
    assert line == (f"vcap: error: {out} is in use by another vcap run (its lock {out}/.vcap.lock is held): wait "
                    "for that run to end, or pass another --data.init_args.output_dir")
    assert not (out / "generations.jsonl").exists()


def test_output_folder_checks_replaces_and_locks(tmp_path):
    folder = OutputFolder(tmp_path / "f")
    folder.open({"model": "a", "weights": "1"}, outputs=("gen.jsonl",))
    (tmp_path / "f/gen.jsonl").write_text("a's captions\n")
    folder.release()
    again = OutputFolder(tmp_path / "f")
    again.open({"model": "a", "weights": "1"}, outputs=("gen.jsonl",))  # the same identity: kept
    assert (tmp_path / "f/gen.jsonl").read_text() == "a's captions\n"
    again.release()
    with pytest.raises(MadeByOtherError, match=r"\(weights: \"1\" there, \"2\" now\)"):
        OutputFolder(tmp_path / "f").open({"model": "a", "weights": "2"}, outputs=("gen.jsonl",))
    replaced = OutputFolder(tmp_path / "f")
    replaced.open({"model": "a", "weights": "2"}, outputs=("gen.jsonl",), on_mismatch="replace")
    assert not (tmp_path / "f/gen.jsonl").exists()
    assert json.loads((tmp_path / "f/made_by.json").read_text())["key"] == {"model": "a", "weights": "2"}
    replaced.release()
    # outputs without made_by.json (an older vcap) are of unknown origin: never reused
    (tmp_path / "old").mkdir()
    (tmp_path / "old/gen.jsonl").write_text("x\n")
    with pytest.raises(MadeByOtherError, match="unknown"):
        OutputFolder(tmp_path / "old").open({"model": "a"}, outputs=("gen.jsonl",))
    holder = _hold_lock(tmp_path / "busy")
    try:
        with pytest.raises(FolderInUseError, match="is in use by another vcap run"):
            OutputFolder(tmp_path / "busy").open({"model": "a"})
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    OutputFolder(tmp_path / "busy").open({"model": "a"})  # released when the holder ended


def test_first_difference_and_slug_by_hand():
    assert first_difference({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4}}) == "b.d: 3 there, 4 now"
    assert first_difference({"a": 1}, {"a": 1, "z": None}) is None  # an absent key reads as null
    assert first_difference({"a": 1}, {"a": 1, "z": 0}) == "z: null there, 0 now"
    assert first_difference({"m": "x"}, {"m": "x"}) is None
    assert slug("Qwen/Qwen2-VL-7B-Instruct") == "Qwen2-VL-7B-Instruct"
    assert slug("runs/sft stage1/export/") == "export" and slug("a b:c") == "a-b-c"


def test_weights_fingerprint_sees_training_steps_dtypes_and_adapters():
    torch.manual_seed(0)
    big = torch.randn(300, 100)  # more values than are sampled
    small = torch.randn(7)
    base = weights_fingerprint([("w", big), ("b", small)])
    assert base == weights_fingerprint([("w", big.clone()), ("b", small.clone())])
    assert len(base) == 16
    step = big - 1e-6 * torch.randn_like(big).sign()  # an update that moves every weight a little
    assert weights_fingerprint([("w", step), ("b", small)]) != base
    small_step = small.clone()
    small_step[3] += 1e-3  # small tensors are hashed whole: one value is enough
    assert weights_fingerprint([("w", big), ("b", small_step)]) != base
    assert weights_fingerprint([("w", big.bfloat16()), ("b", small)]) != base  # the dtype is part of it
    assert weights_fingerprint([("v", big), ("b", small)]) != base  # so are the names
    assert weights_fingerprint([("w", big.reshape(100, 300)), ("b", small)]) != base  # and the shapes
    lora_b = torch.zeros(4, 8)
    with_adapter = weights_fingerprint([("w", big), ("b", small), ("lora_B", lora_b)])
    assert with_adapter != base
    assert weights_fingerprint([("w", big), ("b", small), ("lora_B", lora_b + 0.01)]) != with_adapter
    assert weights_fingerprint([("q", torch.tensor([1, 2, 3], dtype=torch.uint8))]) != \
        weights_fingerprint([("q", torch.tensor([1, 2, 4], dtype=torch.uint8))])  # 4-bit weights are stored as bytes


def test_robust_protocol_with_every_sample_failed_shows_na_not_zero(tmp_path, shapes_manifest):
    """Item 5: nothing scored under protocol robust is nan in results.json (null) and n/a in the table, as under
    official; the run exits 1."""
    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    out = tmp_path / "out"
    with ScriptedServer(lambda body: ("reply", "I think the caption is quite good overall.")) as prose:
        run = validate(tmp_path, ann, vdir, prose, "vcap-tiny-sft", "--data.init_args.protocol", "robust",
                       "--data.init_args.judge_options",
                       json.dumps({"model": "judge", "base_url": prose.url, "max_retries": 0, "parse_retries": 0}),
                       out=out)
    assert run.returncode == 1, run.stderr[-3000:]
    overall = json.loads((out / "results.json").read_text())["events"]["overall"]
    assert overall == {"f1": None, "precision": None, "recall": None, "success": 0}
    row = next(line for line in run.stdout.splitlines() if "overall" in line)
    assert row.count("n/a") == 3 and "0.0" not in row, row
