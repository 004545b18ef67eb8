"""``protocol: official`` for VDC as AuroraCap's post_eval/process_vdc_result.py scores it (issue 7 points 7, 8, 9;
the VDC halves of points 11 and 12 are in test_bench_protocol.py): scripted judge on loopback, numbers by hand."""
import json
import math

from tests.judge_server import ScriptedServer, judge_at, parse_request
from vcap.bench.judging import OFFICIAL_SAMPLING, judge_vdc
from vcap.bench.scoring import vdcscore
from vcap.judges import build_judge


def vdc_records(qas):
    return [{"id": "v1/short", "video_id": "v1", "dimension": "short", "qa": qas}]


def run_vdc(script, records, captions, protocol):
    with ScriptedServer(lambda body: ("reply", script(parse_request(body), body))) as server:
        details, videos = judge_vdc(records, captions, judge_at(server), protocol, OFFICIAL_SAMPLING["vdc"])
        requests = [parse_request(b) | {"body": b} for b in server.requests]
    return details, videos, requests


def test_point7_vdc_only_exact_yes_counts():
    qas = [{"question": "Q1?", "answer": "a"}, {"question": "Q2?", "answer": "b"}]

    def script(req, body):
        if req["task"] == "answer":
            return "x" if req["protocol"] == "official" else json.dumps({"answer": "x"})
        reply = {"pred": "yes", "score": 5} if req["question"] == "Q1?" else {"pred": "Yes", "score": 3}
        return repr(reply) if req["protocol"] == "official" else json.dumps(reply)

    _, videos, _ = run_vdc(script, vdc_records(qas), ["cap"], "official")
    short = vdcscore(videos, official_drop_zero=True)["dimensions"]["short"]
    assert (short["acc"], short["score"]) == (50.0, 4.0)  # 'Yes' is not 'yes'
    _, videos, _ = run_vdc(script, vdc_records(qas), ["cap"], "robust")
    assert vdcscore(videos)["dimensions"]["short"]["acc"] == 100.0


def test_point8_repeated_vdc_ids_keep_the_last_list(tmp_path, shapes_manifest):
    import shutil

    from vcap.bench.datasets import load_vdc

    vdir = tmp_path / "v"
    vdir.mkdir()
    shutil.copy(next((shapes_manifest.parent / "videos").glob("*.mp4")), vdir / "abc.mp4")
    rows = [{"abc": [{"question": "first?", "answer": "a"}]}, {"abc": [{"question": "last?", "answer": "b"},
                                                                      {"question": "two?", "answer": "c"}]}]
    (tmp_path / "main_object.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = {}
    records = load_vdc(tmp_path, vdir, dimensions=("main_object",), notes=notes)
    assert [q["question"] for q in records[0]["qa"]] == ["last?", "two?"]
    assert len(notes["repeated_ids_replaced"]) == 1


def test_point9_vdc_plain_text_answer_is_graded_and_first_bad_grade_skips_the_video():
    qas = [{"question": "What colour?", "answer": "red"}, {"question": "Where?", "answer": "road"}]

    def script(req, body):
        if req["task"] == "answer":
            return "red" if "colour" in req["question"] else "on a road"  # plain text, no JSON
        return repr({"pred": "yes", "score": 5}) if req["prediction"] in ("red", "on a road") else "??"

    details, videos, requests = run_vdc(script, vdc_records(qas), ["A red car on a road."], "official")
    assert vdcscore(videos, True)["dimensions"]["short"]["acc"] == 100.0
    assert vdcscore(videos, True)["dimensions"]["short"]["score"] == 5.0
    _, videos, _ = run_vdc(script, vdc_records(qas), ["A red car on a road."], "robust")
    robust = vdcscore(videos)["dimensions"]["short"]
    assert (robust["acc"], robust["parse_failures"]) == (0.0, 2)  # robust demands {"answer": ...}

    def bad_first(req, body):
        if req["task"] == "answer":
            return "red"
        return "not a dict"
    details, videos, requests = run_vdc(bad_first, vdc_records(qas), ["cap"], "official")
    assert sum(r["task"] == "grade" for r in requests) == 1  # the loop stops at the first exception
    out = vdcscore(videos, True, nan_empty=True)["dimensions"]["short"]
    assert out["skipped"] == 1 and out["skipped_ids"] == ["v1"] and math.isnan(out["acc"])


def test_official_repeated_requests_are_separate_calls_and_replay_from_the_cache(tmp_path):
    """Two videos with the same question, answer and predicted answer: AuroraCap's script grades both (at
    temperature 1 they may differ); robust asks once. A second official run replays both from the cache."""
    records = [{"id": f"v{i}/short", "video_id": f"v{i}", "dimension": "short",
                "qa": [{"question": "What colour?", "answer": "red"}]} for i in range(2)]

    def script(body):
        req = parse_request(body)
        if req["task"] == "answer":
            return ("reply", "red" if req["protocol"] == "official" else '{"answer": "red"}')
        return ("reply", repr({"pred": "yes", "score": 5}) if req["protocol"] == "official" else
                '{"pred": "yes", "score": 5}')

    with ScriptedServer(script) as server:
        for protocol, grades in (("official", 2), ("robust", 1)):
            before = len(server.requests)
            judge_vdc(records, ["A red car.", "A red car."], judge_at(server), protocol, OFFICIAL_SAMPLING["vdc"])
            asked = [parse_request(b)["task"] for b in server.requests[before:]]
            assert asked.count("grade") == grades and asked.count("answer") == grades
        cached = dict(model="judge", base_url=server.url, cache=str(tmp_path / "c.sqlite"), max_retries=0)
        judge_vdc(records, ["A red car.", "A red car."], build_judge("openai", **cached), "official",
                  OFFICIAL_SAMPLING["vdc"])
        before = len(server.requests)
        again = build_judge("openai", **cached)
        judge_vdc(records, ["A red car.", "A red car."], again, "official", OFFICIAL_SAMPLING["vdc"])
        assert len(server.requests) == before and again.calls == 0
