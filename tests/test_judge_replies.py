"""The ``openai`` judge behind a proxy (issue "no silently wrong number", items 2 and 3): credentials in its URL
are sent as HTTP basic auth and never shown; a reply that is not a chat completion (a proxy's HTML page with
status 200) is a failed judgment with a one-line reason, counted, never 0 and never a crash."""
import base64
import json
import logging
import socket

import pytest

from tests.judge_server import ScriptedServer
from tests.test_judge_failures import judged_demo
from tests.test_cli import user_error_in_process, vcap  # noqa: F401  (fixture)
from vcap.judges import build_judge
from vcap.judges.base import JudgeUnavailableError
from vcap.judges.openai_judge import reachability_problem
from vcap.judges.urls import masked, without_credentials

REQ = [("A red circle moves left.", ["the red circle moves left", "a dog barks"])]
VERDICTS = '{"verdicts": ["entailment", "neutral"]}'
HTML = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1></body>\n</html>"


def with_credentials(url: str, password: str = "secret") -> str:
    return url.replace("http://", f"http://user:{password}@")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_placeholders_by_hand(monkeypatch):
    from vcap.errors import UsageError
    from vcap.judges.urls import has_literal_password

    monkeypatch.setenv("VCAP_PW", "p@ss")
    monkeypatch.setenv("VCAP_EMPTY", "")
    assert without_credentials("http://u:${VCAP_PW}@h:1/v1") == ("http://h:1/v1", {"Authorization": basic("u", "p@ss")})
    assert not has_literal_password("http://u:${VCAP_PW}@h/v1") and has_literal_password("http://u:x${VCAP_PW}@h/v1")
    assert not has_literal_password("http://h/v1") and not has_literal_password("http://u@h/v1")
    for name, why in (("VCAP_UNSET_FOR_TEST", "not set"), ("VCAP_EMPTY", "empty")):
        with pytest.raises(UsageError, match=rf"names \${{{name}}}, which is {why} in the environment"):
            without_credentials(f"http://u:${{{name}}}@h/v1")


def test_masking_and_splitting_by_hand():
    assert masked("http://user:secret@127.0.0.1:8001/v1") == "http://user:***@127.0.0.1:8001/v1"
    assert masked("https://user@host/v1") == "https://user@host/v1"  # no password: nothing to hide
    assert masked("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert without_credentials("http://u:p%40ss@h:1/v1") == ("http://h:1/v1", {"Authorization": basic("u", "p@ss")})
    assert without_credentials("http://h:1/v1") == ("http://h:1/v1", {})


def test_credentials_in_the_url_reach_the_judge_as_basic_auth_and_are_never_shown(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with ScriptedServer(lambda body: ("reply", VERDICTS)) as server:
        url = with_credentials(server.url)
        assert reachability_problem(url) is None  # was: "not reachable ([Errno -2] Name or service not known)"
        assert server.get_headers[-1]["authorization"] == basic("user", "secret")
        j = build_judge("openai", model="m", base_url=url, cache=str(tmp_path / "c.sqlite"), max_retries=0)
        assert j.reachability_problem() is None
        assert j.entail_many(REQ)[0].entailed == [True, False]
        assert server.headers[-1]["authorization"] == basic("user", "secret")  # in place of the Bearer key
        shown = with_credentials(server.url, "***")
        assert j.describe()["base_url"] == shown and j.source() == f"m @ {shown}" and shown in repr(j)
        assert j.answered_by == {f"m @ {shown}": 1}  # what the cache records as who answered
    dead = with_credentials(free_port_url())
    problem = reachability_problem(dead)
    assert problem == f"the judge at {masked(dead)} is not reachable ([Errno 111] Connection refused)"
    with ScriptedServer(lambda body: ("status", 500)) as server:
        j = build_judge("openai", model="m", base_url=with_credentials(server.url), cache=None, max_retries=0,
                        max_consecutive_failures=1)
        with pytest.raises(JudgeUnavailableError) as err:
            j.entail_many(REQ)
    assert str(err.value).startswith(f"judge m @ {with_credentials(server.url, '***')} failed 1 calls in a row")
    texts = [caplog.text, problem, str(err.value), repr(j), json.dumps(j.describe()), (tmp_path / "c.sqlite").read_bytes()]
    assert not any(("secret" if isinstance(t, str) else b"secret") in t for t in texts)


def test_fit_with_credentials_in_the_judge_url_runs_and_prints_no_password(tmp_path):
    with ScriptedServer(lambda body: ("reply", VERDICTS if "Statements" in body["messages"][-1]["content"]
                                      else '{"events": ["a red circle moves"]}')) as server:
        args = judged_demo(tmp_path / "shapes", with_credentials(server.url), "--trainer.max_steps", "1",
                           "--trainer.validate_before_fit", "false", "--trainer.limit_val_batches", "0")
        out = vcap(*args, cwd=tmp_path)
        assert server.requests and all(h["authorization"] == basic("user", "secret") for h in server.headers)
    assert "secret" not in out.stdout + out.stderr
    assert "secret" not in (tmp_path / "runs/demo-grpo/version_0/metrics.csv").read_text()
    cache = (tmp_path / "judge_cache.sqlite").read_bytes()  # who answered each cached reply: masked
    assert b"secret" not in cache and b"user:***@127.0.0.1" in cache
    # run files keep the option as given, so a password written out gets one warning saying how to keep it out
    assert out.stderr.count("carries its password written out") == 1, out.stderr[-3000:]
    assert "secret" in (tmp_path / "runs/demo-grpo/version_0/config.yaml").read_text()


def test_a_password_placeholder_is_read_from_the_environment_and_kept_out_of_run_files(tmp_path):
    with ScriptedServer(lambda body: ("reply", VERDICTS if "Statements" in body["messages"][-1]["content"]
                                      else '{"events": ["a red circle moves"]}')) as server:
        url = with_credentials(server.url, "${VCAP_TEST_JUDGE_PASSWORD}")
        args = judged_demo(tmp_path / "shapes", url, "--trainer.max_steps", "1", "--trainer.validate_before_fit",
                           "false", "--trainer.limit_val_batches", "0")
        out = vcap(*args, cwd=tmp_path, env={"VCAP_TEST_JUDGE_PASSWORD": "hunter2"})
        assert server.requests and all(h["authorization"] == basic("user", "hunter2") for h in server.headers)
        missing = vcap(*args, cwd=tmp_path, check=False)
    assert "carries its password" not in out.stderr
    run = tmp_path / "runs/demo-grpo/version_0"
    saved = [(run / "config.yaml").read_text(), (run / "hparams.yaml").read_text(), out.stdout + out.stderr]
    saved += [p.read_bytes().decode("latin-1") for p in run.rglob("*.ckpt")]
    token = base64.b64encode(b"user:hunter2").decode()  # nor as the Authorization header's token
    assert "${VCAP_TEST_JUDGE_PASSWORD}" in saved[0]
    assert not any("hunter2" in text or token in text for text in saved)
    assert missing.returncode != 0
    assert "names ${VCAP_TEST_JUDGE_PASSWORD}, which is not set in the environment" in missing.stderr
    assert "Traceback" not in missing.stderr, missing.stderr[-2000:]


def test_a_proxy_html_page_is_a_failed_judgment_named_by_its_content_type(tmp_path):
    with ScriptedServer(lambda body: ("raw", 200, "text/html; charset=utf-8", HTML)) as server:
        j = build_judge("openai", model="m", base_url=server.url, cache=str(tmp_path / "c.sqlite"), max_retries=0)
        (result,) = j.entail_many(REQ)
    assert result.verdicts is None
    assert result.error == ("NotAChatReply: judge reply was not JSON (text/html: '<html> <head><title>502 Bad Gateway"
                            "</title></head> <body><h1')")
    assert j.failures == 1 and j.answered_by == {}  # counted, never cached
    with ScriptedServer(lambda body: ("raw", 200, "application/json", '{"error": "overloaded"}')) as server:
        (result,) = build_judge("openai", model="m", base_url=server.url, cache=None, max_retries=0).entail_many(REQ)
    assert result.error == ("NotAChatReply: judge reply was not a chat completion, no choices[0].message "
                            "(application/json: '{\"error\": \"overloaded\"}')")


@pytest.mark.parametrize("on_failure", ["zero", "exclude"])
def test_an_html_reply_in_the_caption_reward_is_a_counted_failure_not_a_score(on_failure):
    from vcap.rewards import RewardSet, parse_completion

    with ScriptedServer(lambda body: ("raw", 200, "text/html", HTML)) as server:
        rewards = RewardSet({"caption": 1.0}, {"caption": {"judge": "openai", "on_failure": on_failure,
                                                           "judge_options": dict(model="m", base_url=server.url,
                                                                                 cache=None, max_retries=0)}})
        out = rewards([parse_completion("<think>[]</think><answer>A red circle.</answer>")],
                      [{"events": ["the red circle moves left"]}])
    assert out.failed.tolist() == [True] and out.excluded.tolist() == [on_failure == "exclude"]
    assert out.components["caption"].isnan().all()  # n/a in the logged means, not 0
    assert out.failures == [(0, "caption: judge failed: NotAChatReply: judge reply was not JSON (text/html: "
                                 "'<html> <head><title>502 Bad Gateway</title></head> <body><h1')")]


def test_a_dead_judge_with_credentials_is_refused_with_the_password_masked(user_error_in_process, tmp_path_factory):
    url = with_credentials(free_port_url())
    shapes = tmp_path_factory.mktemp("shapes")  # outside the folder that must stay untouched
    (line,) = user_error_in_process(*judged_demo(shapes, url))
    assert line == (f"the judge at {masked(url)} is not reachable ([Errno 111] Connection refused): start the "
                    "server, or point model.init_args.reward_options.caption.judge_options.base_url at one that runs")
    assert "user:***@127.0.0.1" in line
