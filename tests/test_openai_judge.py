"""The ``openai`` judge against a scripted chat-completions server on loopback."""
import json
import logging
import socket

import pytest

from tests.judge_server import ScriptedServer
from vcap.judges import build_judge
from vcap.judges.llm_text import ReplyError, parse_json_object, parse_verdicts

REQ = [("A red circle moves left.", ["the red circle moves left", "a dog barks"])]


def judge(server_url, tmp_path, **kw):
    opts = dict(model="judge-model", base_url=server_url, cache=str(tmp_path / "cache.sqlite"), max_retries=2,
                timeout=5.0)
    opts.update(kw)
    return build_judge("openai", **opts)


@pytest.mark.parametrize("reply", [
    '{"verdicts": ["entailment", "neutral"]}',
    '```json\n{"verdicts": ["entailment", "neutral"]}\n```',
    'Sure! Here is my answer:\n{"verdicts": ["Entailment", "neutral",]}\nHope this helps.',
    "{'verdicts': ['entailment', 'neutral']}",
])
def test_reply_shapes_that_parse(reply):
    assert parse_verdicts(reply, 2) == ["entailment", "neutral"]


@pytest.mark.parametrize("reply, message", [
    ("no json here", "no JSON object"), ('{"verdicts": ["yes", "no"]}', "unknown verdict"),
    ('{"verdicts": ["entailment"]}', "expected 2"), ('{"verdicts": [entailment}', "malformed"),
])
def test_reply_shapes_that_do_not(reply, message):
    with pytest.raises(ReplyError, match=message):
        parse_verdicts(reply, 2)
    assert parse_json_object('x {"a": 1} y') == {"a": 1}


def test_normal_reply_and_cache_hits_on_second_run(tmp_path):
    with ScriptedServer(lambda body: ("reply", '{"verdicts": ["entailment", "neutral"]}')) as server:
        first = judge(server.url, tmp_path).entail_many(REQ * 3)
        assert [r.entailed for r in first] == [[True, False]] * 3
        assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["model"] == "judge-model"
        sent = len(server.requests)
        again = judge(server.url, tmp_path)  # a new process would build a new judge on the same cache file
        assert [r.verdicts for r in again.entail_many(REQ * 3)] == [r.verdicts for r in first]
        assert len(server.requests) == sent and again.calls == 0


def test_malformed_reply_is_re_asked_then_recorded_as_failure(tmp_path):
    replies = iter(["not json at all", '{"verdicts": ["entailment", "neutral"]}'])
    with ScriptedServer(lambda body: ("reply", next(replies))) as server:
        assert judge(server.url, tmp_path).entail_many(REQ)[0].entailed == [True, False]
        assert len(server.requests) == 2
    with ScriptedServer(lambda body: ("reply", "{garbage")) as server:
        result = judge(server.url, tmp_path, parse_retries=1, cache=None).entail_many(REQ)[0]
        assert result.verdicts is None and "unparseable" in result.error and len(server.requests) == 2


@pytest.mark.parametrize("status", [429, 500])
def test_http_errors_are_retried_then_succeed(tmp_path, status):
    def script(body):  # two failures, then an answer
        return ("status", status) if len(server.requests) <= 2 else ("reply", '{"verdicts": ["entailment", "entailment"]}')

    with ScriptedServer(script) as server:
        result = judge(server.url, tmp_path).entail_many(REQ)[0]
        assert result.entailed == [True, True] and len(server.requests) == 3


def test_timeout_becomes_a_recorded_failure(tmp_path):
    with ScriptedServer(lambda body: ("sleep", 2.0, '{"verdicts": ["entailment", "neutral"]}')) as server:
        result = judge(server.url, tmp_path, timeout=0.3, max_retries=1).entail_many(REQ)[0]
        assert result.verdicts is None and "Timeout" in result.error and len(server.requests) == 2


def test_server_down_gives_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=0).entail_many(REQ)[0]
    assert result.verdicts is None and "Connection" in result.error


def test_extract_events_caps_at_max(tmp_path):
    events = json.dumps({"events": [f"event {i}" for i in range(12)]})
    with ScriptedServer(lambda body: ("reply", events)) as server:
        out = judge(server.url, tmp_path, max_events=10).extract_events(["a long description"])[0]
        assert out.items == [f"event {i}" for i in range(10)]


def test_api_key_comes_from_env_and_is_never_logged_or_stored(tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("VCAP_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with ScriptedServer(lambda body: ("status", 500)) as server:
        j = judge(server.url, tmp_path, api_key_env="VCAP_TEST_KEY", max_retries=0)
        j.entail_many(REQ)
        assert server.headers[0]["authorization"] == f"Bearer {secret}"
    assert secret not in caplog.text and secret not in repr(j) and secret not in json.dumps(j.describe())
    assert secret not in json.dumps(vars(j), default=str)


@pytest.mark.parametrize("on_failure, excluded", [("zero", False), ("exclude", True)])
def test_caption_reward_records_judge_failures_without_crashing(tmp_path, on_failure, excluded):
    from vcap.rewards import build_reward, parse_completion

    sample = {"id": "s", "events": ["the red circle moves left"], "caption": "A red circle moves left."}
    good = parse_completion("<think>[]</think><answer>A red circle moves left.</answer>")
    bad = parse_completion("<think>[]</think><answer>Something else entirely.</answer>")

    def script(body):
        prompt = body["messages"][0]["content"]
        return ("reply", '{"verdicts": ["entailment"]}') if "A red circle" in prompt else ("status", 500)

    with ScriptedServer(script) as server:
        reward = build_reward("caption", mode="linear", on_failure=on_failure, judge="openai", judge_options=dict(
            model="m", base_url=server.url, cache=None, max_retries=0))
        out = reward([good, bad], [sample, sample])
    assert out.scores.tolist() == [1.0, 0.0]
    assert out.excluded.tolist() == [False, excluded]
    assert len(out.failures) == 1 and out.failures[0][0] == 1
    assert "judge failed" in out.failures[0][1] and "500" in out.failures[0][1]


def test_cnscore_rating_and_failures(tmp_path):
    from vcap.rewards import build_reward, parse_completion

    def script(body):
        prompt = body["messages"][0]["content"]
        return ("reply", '{"completeness": 8, "naturalness": 6}') if "Good caption" in prompt else ("reply", "{}")

    sample = {"id": "s", "caption": "A small red circle moves left."}
    texts = ["<think>[]</think><answer>Good caption.</answer>", "<think>[]</think><answer>Bad.</answer>", "junk"]
    with ScriptedServer(script) as server:
        reward = build_reward("cnscore", judge_options=dict(model="m", base_url=server.url, cache=None, parse_retries=0))
        out = reward([parse_completion(t) for t in texts], [sample] * 3)
    assert out.scores.tolist() == pytest.approx([0.7, 0.0, 0.0])
    assert out.components["completeness"].tolist() == pytest.approx([0.8, 0.0, 0.0])
    assert sorted(i for i, _ in out.failures) == [1, 2]
    with pytest.raises(NotImplementedError, match="cannot rate"):
        build_reward("cnscore", judge="lexical")([parse_completion(texts[0])], [sample])


def weak_model(body, counts):
    """A small model behind a server: without a schema every other statement list gets a reply with prose and a
    missing verdict on its first ask; with a schema (a constrained decoder) it always writes what the schema
    allows."""
    import re

    prompt = body["messages"][-1]["content"]
    n = int(re.search(r"exactly (\d+) verdicts", prompt).group(1))
    counts[prompt] = counts.get(prompt, 0) + 1
    if "response_format" not in body and counts[prompt] == 1 and len(prompt) % 2 == 0:
        return "Here are my verdicts: " + json.dumps({"verdicts": ["entailment"] * (n - 1)})
    return json.dumps({"verdicts": ["entailment"] * n})


def test_structured_output_under_robust_only_and_the_re_ask_rate(tmp_path):
    requests = [(f"A red circle moves left {i}.", ["the circle moves", "a dog barks" + "!" * i]) for i in range(20)]
    rates = {}
    for form in ("none", "auto"):
        counts = {}
        with ScriptedServer(lambda body: ("reply", weak_model(body, counts))) as server:
            j = judge(server.url, tmp_path, cache=None, response_format=form)
            out = j.entail_many(requests)
            assert all(r.verdicts == ["entailment", "entailment"] for r in out)
            rates[form] = (j.calls - len(requests)) / len(requests)
            if form == "auto":
                fmt = server.requests[0]["response_format"]
                assert fmt["type"] == "json_schema"
                verdicts = fmt["json_schema"]["schema"]["properties"]["verdicts"]
                assert verdicts["minItems"] == verdicts["maxItems"] == 2
                assert verdicts["items"]["enum"] == ["entailment", "neutral", "contradiction"]
            else:
                assert all("response_format" not in b for b in server.requests)
    print(f"re-ask rate on the scripted weak model: without response_format {rates['none']:.2f}, "
          f"with {rates['auto']:.2f}")
    assert rates["none"] == 0.5 and rates["auto"] == 0.0


def test_response_format_falls_back_to_the_form_the_server_takes(tmp_path):
    def script(body):  # like llama-cpp-python's server: json_object with a schema, nothing else
        fmt = body.get("response_format")
        if fmt is not None and fmt.get("type") != "json_object":
            return ("status", 422)
        return ("reply", '{"verdicts": ["entailment", "neutral"]}')

    with ScriptedServer(script) as server:
        j = judge(server.url, tmp_path, cache=None, max_retries=0)
        assert j.entail_many(REQ)[0].entailed == [True, False]
        assert [b.get("response_format", {}).get("type") for b in server.requests] == ["json_schema", "json_object"]
        assert "schema" in server.requests[1]["response_format"] and j.describe()["response_format"] == "json_object"
        j.entail_many([("Another premise.", ["x", "y"])])
        assert server.requests[-1]["response_format"]["type"] == "json_object"  # remembered
    with ScriptedServer(lambda body: ("status", 400) if "response_format" in body else
                        ("reply", '{"verdicts": ["entailment", "neutral"]}')) as server:
        j = judge(server.url, tmp_path, cache=None, max_retries=0)
        assert j.entail_many(REQ)[0].entailed == [True, False] and j.describe()["response_format"] == "none"
        assert len(server.requests) == 3
