"""A user's lost time, driven through the CLI: a fit without validation records, a strategy the accelerator cannot
run, and output that repeats itself (warnings twice, an empty table, a validation Lightning runs again, a progress
bar that counts wrong)."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_bench_cli import fixtures
from tests.test_cli import ROOT, small_shapes, user_error, user_error_in_process, vcap  # noqa: F401  (fixture)

DEMO = ["fit", "--config", ROOT / "configs/demo.yaml"]
SHORT = ["--trainer.log_every_n_steps", "1", "--model.init_args.num_generations", "2",
         "--model.init_args.max_completion_length", "16", "--model.init_args.max_new_tokens", "16",
         "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "4"]
WIDE = {"COLUMNS": "200"}  # log lines and progress bars unwrapped


def lines_with(text, needle):
    return [line for line in text.splitlines() if needle in line]


def test_fit_without_validation_records_trains_without_validation(tmp_path):
    """The warning says 'training without validation': the run does that (no pre-fit validation, no val loop), it
    does not fail on the missing split after creating a run folder."""
    shapes = [*small_shapes(tmp_path / "shapes")]
    shapes[shapes.index("--data.init_args.num_val") + 1] = "0"
    out = vcap(*DEMO, *shapes, *SHORT, "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
               cwd=tmp_path, env=WIDE)
    text = out.stdout + out.stderr
    assert len(lines_with(text, "training without validation")) == 1, text[-3000:]  # once, not by preflight and setup
    assert "no records for" not in text and "Total length of" not in text  # nor Lightning's empty-loader warning
    run = tmp_path / "runs/demo-grpo/version_0"
    assert (run / "checkpoints/last.ckpt").exists() and not (run / "validation.json").exists()
    assert "val sample" not in text and "Validation" not in text


def test_an_empty_val_manifest_stops_before_anything_is_written(user_error_in_process, tmp_path, shapes_manifest):
    empty = tmp_path / "val.jsonl"
    empty.write_text("")
    (line,) = user_error_in_process(*DEMO, "--data", "CaptionDataModule", "--data.init_args.manifest",
                                    shapes_manifest, "--data.init_args.val_manifest", empty)
    assert "val.jsonl" in line and "empty" in line, line


@pytest.mark.parametrize("args, expected", [
    (["--trainer.strategy", "fsdp"], "--trainer.strategy fsdp with --trainer.accelerator cpu: Lightning's FSDP "
                                     "needs CUDA GPUs"),
    (["--trainer.strategy", "fsdp", "--trainer.accelerator", "auto"],
     "--trainer.strategy fsdp with --trainer.accelerator auto: Lightning's FSDP needs CUDA GPUs"),
    (["--config", ROOT / "configs/grpo_fsdp.yaml", "--trainer.accelerator", "cpu"],
     "--trainer.strategy FSDPStrategy with --trainer.accelerator cpu: Lightning's FSDP needs CUDA GPUs"),
    (["--trainer.strategy", "deepspeed_stage_2"], "--trainer.strategy deepspeed_stage_2 with --trainer.accelerator "
                                                  "cpu: DeepSpeed runs on CUDA GPUs only"),
    (["--trainer.strategy", "DDPStrategy", "--trainer.strategy.init_args.process_group_backend", "nccl"],
     "--trainer.strategy DDPStrategy with --trainer.accelerator cpu: process_group_backend 'nccl' needs CUDA GPUs; "
     "set --trainer.strategy.init_args.process_group_backend gloo"),
    (["--trainer.strategy", "fdsp"], "--trainer.strategy fdsp: not a strategy name; did you mean 'fsdp'?"),
])
def test_strategy_the_accelerator_cannot_run_is_one_line(user_error_in_process, tmp_path, args, expected):
    (line,) = user_error_in_process(*DEMO, *small_shapes(tmp_path / "shapes"), *args)
    assert line.startswith(expected), line
    assert not (tmp_path / "shapes").exists()  # stopped before the synthetic data was built


def test_strategy_mismatch_leaves_no_judge_cache_or_run_folder(tmp_path, shapes_manifest):
    """The paper recipe's judge opens runs/judge_cache.sqlite when the model is built; Lightning refused FSDP on the
    CPU only after that. Run from an empty folder, which stays empty."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:  # the judge answers: not the problem
        (line,) = user_error("fit", "--config", ROOT / "configs/grpo.yaml", "--trainer.accelerator", "cpu",
                             "--trainer.strategy", "fsdp", "--model.init_args.name_or_path", "vcap-tiny-sft",
                             "--data.init_args.manifest", shapes_manifest,
                             "--model.init_args.reward_options.caption.judge_options.base_url", server.url, cwd=cwd)
    assert line.startswith("--trainer.strategy fsdp with --trainer.accelerator cpu"), line
    assert list(cwd.iterdir()) == []


def test_benchmark_output_says_each_thing_once(tmp_path, shapes_manifest):
    """dream1k with a duplicate record, on one CPU with two DataLoader workers: the duplicate warning and torch's
    worker warning print once, the benchmark's table is not followed by an empty 'validation' table, and the
    validation bar shows a rate."""
    ann, vdir = fixtures(tmp_path, shapes_manifest, "dream1k")
    rows = ann.read_text().splitlines()
    ann.write_text("\n".join([*rows, rows[0]]) + "\n")
    one_cpu = min(os.sched_getaffinity(0))
    with ScriptedServer(lambda body: ("reply", scripted_judge(body))) as server:
        out = subprocess.run(
            [sys.executable, "-m", "vcap.cli", "validate", "--bench", "dream1k",
             "--model.init_args.name_or_path", "vcap-tiny-sft", "--data.init_args.annotations", str(ann),
             "--data.init_args.video_dir", str(vdir), "--data.init_args.output_dir", str(tmp_path / "out"),
             "--data.init_args.num_workers", "2", "--data.init_args.fps", "null", "--data.init_args.nframes", "4",
             "--data.init_args.max_pixels", "3136", "--data.init_args.val_batch_size", "1",
             "--data.init_args.judge_options", json.dumps({"model": "judge", "base_url": server.url}),
             "--model.init_args.max_new_tokens", "8", "--trainer.accelerator", "cpu"],
            cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1", **WIDE), capture_output=True, text=True,
            timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert len(lines_with(text, "duplicate (dataset, idx) records skipped")) == 1, text[-3000:]
    assert len(lines_with(text, "This DataLoader will create 2 worker processes")) == 1, text[-3000:]
    assert "dream1k — vcap-tiny-sft" in out.stdout and "validation (" not in out.stdout and "metric" not in out.stdout
    (bar,) = lines_with(out.stdout, "Validation")
    assert "3/3" in bar and "0.00it/s" not in bar and re.search(r"\d+\.\d\d(it/s|s/it)", bar), bar


def test_validation_runs_once_before_the_first_step_and_a_resumed_bar_counts_right(tmp_path):
    """validate_before_fit scores the warm start; Lightning's sanity check would validate the same model again
    before step 1. A mid-epoch resume's progress bar counts the epoch's batches out of the epoch's total."""
    args = [*DEMO, *small_shapes(tmp_path / "shapes"), *SHORT, "--trainer.val_check_interval", "2",
            "--trainer.callbacks.init_args.every_n_train_steps", "1"]
    out = vcap(*args, "--trainer.max_steps", "2", cwd=tmp_path, env=WIDE)
    text = out.stdout + out.stderr
    assert len(lines_with(text, "val sample")) == 2, text[-3000:]  # the start and step 2, nothing in between
    first_step = text.index("step 1 sample")
    assert len(lines_with(text[:first_step], "val sample")) == 1
    report = json.loads((tmp_path / "runs/demo-grpo/version_0/validation.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["start", "step 2"]
    (bar,) = lines_with(out.stdout, "Validation")  # the one-batch warm-start validation
    assert "1/1" in bar and "0.00it/s" not in bar, bar

    # 4 batches an epoch: step 2 is mid-epoch; the resumed epoch shows its 3rd batch of 3 (Lightning: 3/1)
    resumed = vcap(*args, "--trainer.max_steps", "3", "--ckpt_path", "last", cwd=tmp_path, env=WIDE)
    (bar,) = lines_with(resumed.stdout, "Epoch 0")
    assert "3/3" in bar and "0.00it/s" not in bar, bar


def test_an_explicit_sanity_check_is_kept(tmp_path):
    out = vcap(*DEMO, *small_shapes(tmp_path / "shapes"), *SHORT, "--trainer.max_steps", "1",
               "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "1", cwd=tmp_path, env=WIDE)
    assert len(lines_with(out.stdout + out.stderr, "val sample")) == 2  # the start, then the sanity check asked for
