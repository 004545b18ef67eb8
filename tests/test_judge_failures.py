"""A judge that fails, as users meet it in ``fit`` (issue 20 items 4, 5, 7): a failed judgment is unknown, never 0
and never cached; a judge that stops answering stops the run with one line naming its URL; a dead one is refused
before anything loads. The demo recipe, small, with its caption judge pointed at a scripted server (dotted flags)."""
import csv
import json
import socket
import sqlite3

import pytest

from tests.judge_server import ScriptedServer, scripted_judge
from tests.test_cli import ROOT, small_shapes, user_error_in_process, vcap  # noqa: F401  (fixture)
from tests.test_interrupts import RUN


def judged_demo(shapes, url, *extra):
    return ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(shapes),
            "--trainer.log_every_n_steps", "1", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "64", "--model.init_args.max_new_tokens", "64",
            "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "4",
            "--model.init_args.reward_options.caption.judge", "openai",
            "--model.init_args.reward_options.caption.judge_options.base_url", url,
            "--model.init_args.reward_options.caption.judge_options.model", "judge",
            "--model.init_args.reward_options.caption.judge_options.max_retries", "0", *extra]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def test_prose_answers_are_failures_not_zeros_and_never_cached(tmp_path, shapes):
    cache = tmp_path / "judge.sqlite"
    with ScriptedServer(lambda body: ("reply", "Sure! The caption describes the video well.")) as server:
        out = vcap(*judged_demo(shapes, server.url, "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
                                "--model.init_args.reward_options.caption.on_failure", "exclude",
                                "--model.init_args.reward_options.caption.judge_options.cache", cache),
                   cwd=tmp_path, env={"COLUMNS": "300"})
    report = json.loads((tmp_path / RUN / "validation.json").read_text())
    for run in report["runs"]:  # the warm start and step 1: nothing could be scored, so nothing reads 0
        metrics = run["metrics"]
        assert metrics["caption_failed"] == 4 and metrics["judge_failures"] == 4
        assert all(metrics[k] is None for k in ("caption_event_f1", "caption_event_recall",
                                                "caption_event_precision", "caption_escore")), metrics
        assert metrics["reward/caption"] is None and metrics["reward/format"] is not None
    assert "n/a" in out.stdout  # the table says so too
    rows = list(csv.DictReader((tmp_path / RUN / "metrics.csv").open()))
    train = next(r for r in rows if r.get("train/reward/caption"))
    assert train["train/reward/caption"] == "nan" and float(train["train/judge_failures"]) == 4.0
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0  # asked again by the next run
    warnings = [line for line in out.stderr.splitlines() if f"judge judge @ {server.url}:" in line]
    assert warnings and all("calls failed, e.g. unparseable reply after 3 tries" in w for w in warnings)


def test_a_judge_that_goes_down_stops_the_run_with_one_line_naming_it(tmp_path, shapes):
    state = {"answered": 0}

    def script(body):  # answers the first step's calls, then every call gets HTTP 500
        if (tmp_path / RUN / "checkpoints/epoch=0-step=1.ckpt").exists():
            return ("status", 500)
        state["answered"] += 1
        return ("reply", scripted_judge(body, entail_word="moves"))

    with ScriptedServer(script) as server:
        out = vcap(*judged_demo(shapes, server.url, "--trainer.max_steps", "3", "--trainer.validate_before_fit",
                                "false", "--trainer.callbacks.init_args.every_n_train_steps", "1"),
                   cwd=tmp_path, check=False, env={"COLUMNS": "300"})
    assert out.returncode == 1, out.stderr[-3000:]
    assert state["answered"] > 0 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("vcap:")]
    assert lines[0] == (f"vcap: stopped at step 1: saved {RUN}/checkpoints/last.ckpt (step 1); the same command with "
                        "--ckpt_path last continues from there")
    assert lines[1].startswith(f"vcap: error: judge judge @ {server.url} failed 5 calls in a row (last: "
                               "InternalServerError: ")
    assert lines[1].endswith("check that the server is up and answering, or raise "
                             "judge_options.max_consecutive_failures (0: never stop)")
    assert len(lines) == 2


def test_a_dead_judge_is_refused_before_anything_loads(user_error_in_process, shapes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    (line,) = user_error_in_process(*judged_demo(shapes, url))
    assert line == (f"the judge at {url} is not reachable ([Errno 111] Connection refused): start the server, or "
                    "point model.init_args.reward_options.caption.judge_options.base_url at one that runs")
