"""Stopping a run the ways users stop it, and resuming it with ``--ckpt_path last`` (issue 20 items 2, 10, 11, 12).

The demo recipe as shipped, made small, its caption judge pointed at a scripted OpenAI-compatible server on
127.0.0.1 (dotted flags, as a user writes them). The server is also the clock: at the first judge call of training
step 3 (step 2 checkpointed and validated) it kills, interrupts or terminates the run and never answers that call.
Resuming with ``--ckpt_path last`` must continue in the same run folder and end with the weights, metrics.csv rows
and validations of the run that was never stopped, bit for bit.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_cli import ROOT, small_shapes, user_error_in_process, vcap  # noqa: F401  (fixture)

RUN = Path("runs/demo-grpo/version_0")


def demo_fit(shapes: Path, url: str, *extra) -> list:
    return ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(shapes),
            "--trainer.callbacks.init_args.every_n_train_steps", "1", "--trainer.validate_before_fit", "false",
            "--trainer.val_check_interval", "2", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1",
            "--model.init_args.num_generations", "2", "--model.init_args.max_completion_length", "40",
            "--model.init_args.max_new_tokens", "24", "--data.init_args.batch_size", "2",
            "--model.init_args.reward_options.caption.judge", "openai",
            "--model.init_args.reward_options.caption.judge_options.base_url", url,
            "--model.init_args.reward_options.caption.judge_options.model", "judge",
            "--model.init_args.reward_options.caption.judge_options.cache", "null", *extra]


def answer(body):
    return ("reply", scripted_judge(body, entail_word="moves"))


class StopAtStep3:
    """Answers like ``answer`` until the run has validated step 2; then signals the run once and holds that call."""

    def __init__(self, run_dir: Path, signum: int):
        self.run_dir, self.signum = run_dir, signum
        self.pid, self.signalled_at = None, None
        self.release = threading.Event()

    def step2_validated(self) -> bool:
        try:
            runs = json.loads((self.run_dir / "validation.json").read_text())["runs"]
        except (OSError, ValueError):
            return False
        return any(r["global_step"] == 2 for r in runs)

    def __call__(self, body):
        if self.signalled_at is None and self.step2_validated():
            self.signalled_at = time.monotonic()
            os.kill(self.pid, self.signum)
            self.release.wait(120)  # a hung judge: this call is never answered while the run lives
            return ("status", 500)
        return answer(body)


def run_until_stopped(tmp_path, shapes, signum):
    """The demo fit, stopped by ``signum`` in step 3: (process, its stderr, seconds from the signal to its exit)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    judge = StopAtStep3(tmp_path / RUN, signum)
    with ScriptedServer(judge) as server:
        proc = subprocess.Popen([sys.executable, "-m", "vcap.cli", *map(str, demo_fit(shapes, server.url))],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        judge.pid = proc.pid
        _, stderr = proc.communicate(timeout=600)
        exited = time.monotonic()
        judge.release.set()
    assert judge.signalled_at is not None, stderr[-3000:]
    return proc, stderr, exited - judge.signalled_at


WALL_CLOCK = {"rollout/seconds", "rollout/tokens_per_s", "step/passes_seconds",
              "step/reward_wait_seconds"}  # timings: no two runs share them


def deterministic_columns(path: Path) -> list[dict]:
    """metrics.csv's rows (every column as written) without the wall-clock timings."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and WALL_CLOCK <= set(rows[0])  # the timings are there, and only they are left out
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]


def outcome(run_dir: Path) -> dict:
    """What must not depend on how the run was stopped: final weights, metrics rows, validations."""
    state = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    runs = json.loads((run_dir / "validation.json").read_text())["runs"]
    return {"step": state["global_step"], "weights": state["state_dict"],
            "metrics": deterministic_columns(run_dir / "metrics.csv"),
            "validations": [(r["label"], r["metrics"]) for r in runs]}


def assert_same_run(got: dict, want: dict) -> None:
    assert got["step"] == want["step"] == 3
    assert got["weights"].keys() == want["weights"].keys()
    differing = [k for k in want["weights"] if not torch.equal(got["weights"][k], want["weights"][k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    assert got["metrics"] == want["metrics"]  # every row, the resumed steps included, at the same step numbers
    assert got["validations"] == want["validations"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    with ScriptedServer(answer) as server:
        vcap(*demo_fit(shapes, server.url), cwd=cwd)
    return outcome(cwd / RUN)


def resume(tmp_path, shapes):
    with ScriptedServer(answer) as server:
        out = vcap(*demo_fit(shapes, server.url), "--ckpt_path", "last", cwd=tmp_path)
    assert not (tmp_path / "runs/demo-grpo/version_1").exists()  # continued in its own folder
    return out


def test_ctrl_c_saves_the_last_step_and_resume_equals_the_uninterrupted_run(tmp_path, shapes, uninterrupted):
    proc, stderr, seconds = run_until_stopped(tmp_path, shapes, signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    assert seconds < 30  # not the judge's 60 s timeout: the wait for the hung call is cut short
    lines = [line for line in stderr.splitlines() if line.startswith("vcap:")]
    assert lines == [f"vcap: SIGINT at step 2: saved {RUN}/checkpoints/last.ckpt (step 2); the same command with "
                     "--ckpt_path last continues from there"], stderr[-3000:]
    assert "Traceback" not in stderr
    assert torch.load(tmp_path / RUN / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    assert (tmp_path / RUN / "training_curves.png").stat().st_size > 1000  # curves of the work done
    out = resume(tmp_path, shapes)
    assert "Restoring states from the checkpoint" in out.stdout + out.stderr
    assert_same_run(outcome(tmp_path / RUN), uninterrupted)


def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path, shapes, uninterrupted):
    proc, stderr, _ = run_until_stopped(tmp_path, shapes, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / RUN / "checkpoints").iterdir())
    assert checkpoints == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]  # no temporary file left
    resume(tmp_path, shapes)
    assert_same_run(outcome(tmp_path / RUN), uninterrupted)


def test_sigterm_during_a_hung_judge_call_stops_within_seconds(tmp_path, shapes):
    proc, stderr, seconds = run_until_stopped(tmp_path, shapes, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert seconds < 30
    assert [line for line in stderr.splitlines() if line.startswith("vcap:")] == [
        f"vcap: SIGTERM at step 2: saved {RUN}/checkpoints/last.ckpt (step 2); the same command with --ckpt_path "
        "last continues from there"]
    assert torch.load(tmp_path / RUN / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2


def test_ckpt_path_last_without_a_checkpoint_says_where_it_looked(user_error_in_process, tmp_path):
    (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo.yaml", "--ckpt_path", "last")
    assert line == ("--ckpt_path last: no checkpoint of this run found (looked for "
                    "runs/demo-grpo/*/checkpoints/last.ckpt); drop --ckpt_path to start fresh, or pass a checkpoint file")


def test_a_truncated_checkpoint_is_one_line(user_error_in_process, tmp_path):
    folder = tmp_path / "runs/demo-grpo/version_0/checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 2, "state_dict": {"w": torch.zeros(1000)}}, folder / "last.ckpt")
    whole = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # what a full disk left before writes were atomic
    for ckpt in ("last", folder / "last.ckpt"):
        (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo.yaml", "--ckpt_path", ckpt)
        assert line.startswith("--ckpt_path ") and "version_0/checkpoints/last.ckpt: not a whole checkpoint (" in line
        assert line.endswith("it was cut short while being written (a full disk or a kill): resume from an earlier "
                             "checkpoint of the run, or delete this file and pass --ckpt_path last")


def test_a_full_disk_stops_with_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    """The file-size limit stands in for a full disk: the checkpoint write fails the same way (OSError)."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # the tiny model's checkpoint is ~4 MB

    args = ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path / "shapes"),
            "--trainer.callbacks.init_args.every_n_train_steps", "1", "--trainer.validate_before_fit", "false",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "8", "--data.init_args.batch_size", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "vcap.cli", *map(str, args)], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=600, preexec_fn=small_files)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("vcap: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"vcap: error: could not write checkpoint {RUN}/checkpoints/epoch=0-step=1.ckpt: File too large (errno 27); "
        "nothing was written under that name"), out.stderr[-3000:]
    assert not list((tmp_path / RUN / "checkpoints").glob("*"))  # neither a truncated file nor a temporary one


def test_ctrl_c_in_validate_keeps_the_batches_it_finished(tmp_path):
    """`vcap validate --bench shapes`, one video per batch, its caption judge on a scripted server that presses
    Ctrl-C when the third batch's caption arrives: the two finished batches are scored in validation.json."""
    from tests.judge_server import parse_request

    state = {"pid": None, "extracts": 0}
    release = threading.Event()

    def script(body):
        if parse_request(body)["task"] == "extract_events":  # once per batch: the caption metric's extraction
            state["extracts"] += 1
            if state["extracts"] == 3:
                os.kill(state["pid"], signal.SIGINT)
                release.wait(60)
                return ("status", 500)
        return answer(body)

    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="300")
    with ScriptedServer(script) as server:
        args = ["validate", "--bench", "shapes", *small_shapes(tmp_path / "shapes"), "--data.init_args.val_batch_size",
                "1", "--model.init_args.max_new_tokens", "64", "--model.init_args.reward_options.caption.judge",
                "openai", "--model.init_args.reward_options.caption.judge_options.base_url", server.url,
                "--model.init_args.reward_options.caption.judge_options.model", "judge",
                "--model.init_args.reward_options.caption.judge_options.cache", "null"]
        proc = subprocess.Popen([sys.executable, "-m", "vcap.cli", *map(str, args)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        state["pid"] = proc.pid
        _, stderr = proc.communicate(timeout=600)
        release.set()
    assert proc.returncode == 130, stderr[-3000:]
    report = tmp_path / "runs/validate-shapes/version_0/validation.json"
    assert [line for line in stderr.splitlines() if line.startswith("vcap:")] == [
        f"vcap: SIGINT in validate: the metrics of the 2 of 4 batches done are in {report.relative_to(tmp_path)}"]
    (run,) = json.loads(report.read_text())["runs"]
    assert run["label"] == "validate (interrupted: 2 of 4 batches)" and run["batches"] == [2, 4]
    assert {"think_f1", "caption_event_f1", "caption_failed"} <= set(run["metrics"])
    assert run["metrics"]["caption_failed"] == 0
