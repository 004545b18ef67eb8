"""``protocol: official`` reproduces the official scoring code (Tarsier evaluate_dream_gpt.py + evaluate.py,
CaReBench utils/dream_gpt.py + tasks/captioning.py, AuroraCap post_eval/process_vdc_result.py), call for call;
``protocol: robust`` keeps the tolerant behaviour. One test per point of issue 7, each with a scripted judge on
loopback whose replies make the point matter, and the numbers the official code gives computed by hand."""
import json
import math
from collections import Counter

import pytest

from tests.judge_server import ScriptedServer, items_reply, judge_at, parse_request, verdict_reply
from tests.test_bench_protocol_vdc import run_vdc, vdc_records
from vcap.bench.judging import OFFICIAL_SAMPLING, judge_autodq, judge_vdc
from vcap.bench.scoring import autodq
from vcap.judges import build_judge

DREAM = OFFICIAL_SAMPLING["dream1k"]


def record(i, reference, events, source="DREAM/a", **extra):
    return {"id": str(i), "source": source, "reference": reference, "events": events, **extra}


def run_autodq(script, records, captions, protocol, kinds=("events",)):
    with ScriptedServer(lambda body: ("reply", script(parse_request(body), body))) as server:
        details, samples = judge_autodq(records, captions, judge_at(server), kinds, protocol, DREAM)
        requests = [parse_request(b) | {"body": b} for b in server.requests]
    return details, samples, requests


def test_point1_reply_with_prose_around_the_dict_is_a_failed_try_officially():
    records = [record(0, "A cat naps.", ["A cat naps."]), record(1, "A dog runs.", ["A dog runs."])]
    captions = ["A cat naps.", "A dog runs."]

    def script(req, body):
        if req["task"] == "extract_events":
            items = [req["text"]]
            reply = items_reply(req, items)
            return f"Sure! Here it is: {reply} Hope this helps." if "dog" in req["text"] else reply
        return verdict_reply(req, set(req["items"]) | {"a cat naps.", "a dog runs."})

    _, official, requests = run_autodq(script, records, captions, "official")
    out = autodq(official["events"], nan_f1=True)
    assert (out["failed"], out["overall"]["success"]) == (1, 1)  # literal_eval of the whole reply fails 10 times
    assert out["overall"]["recall"] == 1.0 and out["overall"]["precision"] == 1.0
    dog = [r for r in requests if "dog" in r.get("text", r.get("premise", ""))]
    assert [r["task"] for r in dog] == ["extract_events"] * 10  # no entailment call for a failed sample
    _, robust, _ = run_autodq(script, records, captions, "robust")
    assert autodq(robust["events"])["failed"] == 0  # the tolerant parser digs the dict out


def test_point2_ten_tries_at_the_provider_default_temperature():
    asked = Counter()

    def script(req, body):
        if req["task"] == "extract_events":
            asked[req["protocol"]] += 1
            return "not yet" if asked[req["protocol"]] < 10 else items_reply(req, ["a cat naps."])
        return verdict_reply(req, {"a cat naps.", "A cat naps."})

    records, captions = [record(0, "A cat naps.", ["A cat naps."])], ["A cat naps."]
    _, official, requests = run_autodq(script, records, captions, "official")
    assert asked["official"] == 10 and autodq(official["events"])["failed"] == 0  # 9 failures, then an answer
    assert all("temperature" not in r["body"] for r in requests)
    _, robust, requests = run_autodq(script, records, captions, "robust")
    assert asked["robust"] == 3 and autodq(robust["events"])["failed"] == 1  # 1 + parse_retries (2)
    temps = [r["body"]["temperature"] for r in requests if r["task"] == "extract_events"]
    assert temps == [0.0, 0.7, 0.7]  # a greedy re-ask would repeat the bad reply


def test_point3_predicted_events_are_not_truncated():
    twelve = [f"event {i}." for i in range(12)]

    def script(req, body):
        if req["task"] == "extract_events":
            return items_reply(req, twelve)
        return verdict_reply(req, set(twelve[:10]) | {"A cat naps."})  # the last two are not entailed

    records, captions = [record(0, "A cat naps.", ["A cat naps."])], ["a long caption"]
    details, official, _ = run_autodq(script, records, captions, "official")
    assert len(details[0]["events"]["pred"]) == 12
    out = autodq(official["events"])["overall"]
    assert out["precision"] == pytest.approx(10 / 12) and out["recall"] == 1.0
    assert out["f1"] == pytest.approx(20 / 22)  # 2 * 1 * (10/12) / (1 + 10/12)
    _, robust, _ = run_autodq(script, records, captions, "robust")
    assert autodq(robust["events"])["overall"]["precision"] == 1.0  # robust keeps the first 10


def test_point4_duplicate_dream_records_keep_the_first(tmp_path, shapes_manifest):
    import shutil

    from vcap.bench.datasets import load_dream1k

    vdir = tmp_path / "v"
    vdir.mkdir()
    shutil.copy(next((shapes_manifest.parent / "videos").glob("*.mp4")), vdir / "7.mp4")

    def row(ref):
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "", "reference": ref}]}],
                "dataset": "DREAM/a", "idx": 3, "vid": 7, "extra_info": {"events": [ref], "n_events": 1}}
    (tmp_path / "d.jsonl").write_text(json.dumps(row("First.")) + "\n" + json.dumps(row("Second.")) + "\n")
    notes = {}
    rows = load_dream1k(tmp_path / "d.jsonl", vdir, notes=notes)
    assert [(r["id"], r["reference"]) for r in rows] == [("DREAM/a_3", "First.")]
    assert notes["duplicate_records_skipped"] == [f"{tmp_path / 'd.jsonl'}:2 (DREAM/a_3)"]


def test_point5_carebench_any_failed_call_fails_the_whole_sample():
    def script(req, body):
        if req["task"].startswith("extract"):
            return items_reply(req, ["a ball rolls."] if req["task"] == "extract_events" else [req["text"]])
        if any(item.lower().startswith("there is") for item in req["items"]):
            return "garbage"  # the objects calls never parse
        return verdict_reply(req, set(req["items"]))

    records = [record(0, "There is a red ball.", ["a ball rolls."], "overall", objects=["There is a red ball."])]
    captions = ["There is a red ball."]
    _, official, requests = run_autodq(script, records, captions, "official", kinds=("events", "objects"))
    assert autodq(official["events"])["failed"] == 1 and autodq(official["objects"])["failed"] == 1
    tasks = Counter(r["task"] for r in requests)
    # events R + P, objects R 10 times; the objects precision call is never made (the sample already failed)
    assert tasks == {"extract_events": 1, "extract_objects": 1, "entail_events": 2, "entail_objects": 10}
    _, robust, _ = run_autodq(script, records, captions, "robust", kinds=("events", "objects"))
    assert autodq(robust["events"])["failed"] == 0 and autodq(robust["events"])["overall"]["f1"] == 1.0
    assert autodq(robust["objects"])["failed"] == 1  # robust fails only the kind whose call failed


def test_point6_carebench_null_lists_are_extracted_from_the_reference(tmp_path, shapes_manifest):
    import shutil

    from vcap.bench.datasets import load_carebench

    vdir = tmp_path / "v"
    vdir.mkdir()
    shutil.copy(next((shapes_manifest.parent / "videos").glob("*.mp4")), vdir / "v_1.mp4")
    reference = "A man opens a door. A dog barks."
    (tmp_path / "m.json").write_text(json.dumps([{"video": "v_1.mp4", "caption": reference, "events": None,
                                                  "objects": None, "category": "Household"}]))
    records = load_carebench(tmp_path / "m.json", vdir)
    assert records[0]["events"] is None

    def script(req, body):
        if req["task"] == "extract_events":  # the reference gives 2 events, the caption 1
            return items_reply(req, ["a man opens a door.", "a dog barks."] if "dog" in req["text"]
                               else ["a man opens a door."])
        return verdict_reply(req, {"a man opens a door."})

    _, official, requests = run_autodq(script, records, ["A man opens a door."], "official")
    assert sum(r["task"] == "extract_events" for r in requests) == 2  # reference and caption
    out = autodq(official["events"])["overall"]
    assert (out["recall"], out["precision"]) == (0.5, 1.0)  # not recall 1 from an empty list


def test_point10_empty_lists_are_still_asked_officially():
    def script(req, body):
        if req["task"] == "extract_events":
            return items_reply(req, [])
        if "static" in req["premise"]:
            return "never parses"  # sample 1's precision call (the reference against its empty prediction list)
        return verdict_reply(req, set())

    records = [record(0, "A static\nroom.", []), record(1, "An empty street.", [])]
    captions = ["Nothing happens.", "Nothing moves."]
    _, official, requests = run_autodq(script, records, captions, "official")
    entail = [r for r in requests if r["task"] == "entail_events"]
    # sample 0 recall: the caption against ['a static room.'] (the lower-cased one-line reference stands in)
    assert {"premise": "nothing happens.", "items": ["a static room."]} in [
        {"premise": r["premise"], "items": r["items"]} for r in entail]
    out = autodq(official["events"])
    assert out["failed"] == 1 and out["overall"]["recall"] == 1.0 and out["overall"]["precision"] == 1.0
    assert len(entail) == 3 + 10  # sample 1: R and P once; sample 0: R once, then P ten times
    _, robust, requests = run_autodq(script, records, captions, "robust")
    assert not [r for r in requests if r["task"] == "entail_events"] and autodq(robust["events"])["failed"] == 0


def test_point11_sampling_parameters_per_benchmark():
    def script(req, body):
        if req["task"] == "extract_events":
            return items_reply(req, ["a cat naps."])
        if req["task"] == "answer":
            return "red" if req["protocol"] == "official" else json.dumps({"answer": "red"})
        if req["task"] == "grade":
            return repr({"pred": "yes", "score": 4}) if req["protocol"] == "official" else '{"pred": "yes", "score": 4}'
        return verdict_reply(req, set(req["items"]))

    _, _, requests = run_autodq(script, [record(0, "A cat naps.", ["A cat naps."])], ["A cat naps."], "official")
    assert {tuple(sorted(r["body"])) for r in requests} == {("messages", "model")}  # no temperature, no max_tokens
    _, _, requests = run_vdc(script, vdc_records([{"question": "Q?", "answer": "red"}]), ["c"], "official")
    assert {(r["body"]["max_tokens"], r["body"]["temperature"], r["body"]["top_p"]) for r in requests} == {(256, 1.0, 1.0)}
    _, _, requests = run_autodq(script, [record(0, "A cat naps.", ["A cat naps."])], ["A cat naps."], "robust")
    assert {(r["body"]["temperature"], r["body"]["max_tokens"]) for r in requests} == {(0.0, 512)}


def test_point12_message_shapes_and_list_formatting():
    def script(req, body):
        if req["task"] == "extract_events":
            return items_reply(req, ['she says "hi".'])
        if req["task"] == "answer":
            return "red"
        if req["task"] == "grade":
            return repr({"pred": "yes", "score": 4})
        return verdict_reply(req, set())

    records = [record(0, 'Tom says "Hello".', ["Tom waves.", "It's Tom's hat."])]
    _, _, requests = run_autodq(script, records, ['Tom Says "Hi".'], "official")
    extract = next(r for r in requests if r["task"] == "extract_events")
    assert extract["text"] == "tom says 'hi'."  # lower-cased, " -> '
    recall = next(r for r in requests if r["task"] == "entail_events" and r["premise"] == 'tom says "hi".')
    # the description is lower-cased (quotes kept); the events are a Python list as str(list) prints it
    assert "Events: ['Tom waves.', \"It's Tom's hat.\"]\n" in recall["body"]["messages"][0]["content"]
    assert [m["role"] for m in recall["body"]["messages"]] == ["user"]
    _, _, requests = run_vdc(script, vdc_records([{"question": "Q?", "answer": "red"}]), ["c"], "official")
    assert {tuple(m["role"] for m in r["body"]["messages"]) for r in requests} == {("system", "user")}


def test_point15_f1_of_zero_precision_and_recall_is_nan_officially():
    from vcap.bench.scoring import AutoDQSample

    samples = [AutoDQSample("a", ["neutral"], ["contradiction"])]  # P = R = 0: the official count_f1 gives nan
    assert math.isnan(autodq(samples, nan_f1=True)["overall"]["f1"])
    assert math.isnan(autodq(samples, nan_f1=True)["sources"]["a"]["f1"])
    assert autodq(samples)["overall"]["f1"] == 0.0  # robust reports 0
    assert math.isnan(autodq([AutoDQSample("a", None, None, failed=True)], nan_f1=True)["overall"]["recall"])


def test_prompt_file_reproduces_official_style_requests_byte_for_byte(tmp_path):
    """A prompt file written like the official f-strings gives the requests the official code builds (our own
    stand-in text here; the official strings go the same way, see README)."""
    prompts = {"official": {
        "extract_events": "Read this.\nVideo Description: {text:lower,squote}\n\nGive {{\"events\": [...]}}",
        "entail_events": "Judge.\nVideo Description:\n{premise:lower}\n\nEvents: {hypotheses:pylist}\n"
                         "Output {{\n  \"events\": [...]\n}}\nOutput:",
        "answer_question": {"system": "You answer.", "user": "Answer:\n\ndetailed description: {text}, "
                                                              "question: {question}Short answer only."},
        "grade_answer": {"system": "You grade.", "user": "Grade:\n\nQuestion: {question}\nCorrect Answer: {answer}"
                                                         "\nPredicted Answer: {prediction}\n\nDict only."},
    }}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    reference, caption = 'A man says "Hi".\nHe leaves.', "The Man WAVES."
    gt = ["A man says hi.", "It's late."]

    # what the official code sends (its f-strings over its lower-cased / quote-replaced inputs)
    def official_extract(text):
        text = text.lower().replace("\"", "'")
        return "Read this.\n" f"Video Description: {text}\n\n" "Give {\"events\": [...]}"

    def official_entail(events, reference_text, prediction):
        if len(events) == 0:
            events = [reference_text.replace('\n', ' ')]
        return ("Judge.\n" f"Video Description:\n{prediction}\n\n" f"Events: {events}\n"
                "Output {\n  \"events\": [...]\n}\nOutput:")
    want = [[{"role": "user", "content": official_extract(caption)}],
            [{"role": "user", "content": official_entail(gt, reference.lower(), caption.lower())}],
            [{"role": "user", "content": official_entail([], caption.lower(), reference.lower())}]]

    def script(body):
        content = body["messages"][0]["content"]
        if content.startswith("Read this."):
            return ("reply", "{'events': []}")
        n = content.count("', ") + 1 if "Events: ['a man" in content or "Events: ['A man" in content else 1
        return ("reply", json.dumps({"events": [{"event": "e", "relationship": "neutral"}] * n}))

    with ScriptedServer(script) as server:
        judge = build_judge("openai", model="judge", base_url=server.url, cache=None, max_retries=0,
                            prompt_file=str(tmp_path / "p.json"))
        details, _ = judge_autodq([record(0, reference, gt)], [caption], judge, ("events",), "official", DREAM)
        assert [b["messages"] for b in server.requests] == want
        assert all(set(b) == {"model", "messages"} for b in server.requests)

    q, a, pred_cap = "What colour?", "red", "A red car."
    want_answer = [{"role": "system", "content": "You answer."},
                   {"role": "user", "content": "Answer:\n\n" f"detailed description: {pred_cap}, question: {q}"
                                               "Short answer only."}]
    want_grade = [{"role": "system", "content": "You grade."},
                  {"role": "user", "content": "Grade:\n\n" f"Question: {q}\n" f"Correct Answer: {a}\n"
                                              f"Predicted Answer:  red\n\n" "Dict only."}]
    with ScriptedServer(lambda body: ("reply", " red" if body["messages"][0]["content"] == "You answer."
                                      else "{'pred': 'yes', 'score': 5}")) as server:
        judge = build_judge("openai", model="judge", base_url=server.url, cache=None, max_retries=0,
                            prompt_file=str(tmp_path / "p.json"))
        judge_vdc(vdc_records([{"question": q, "answer": a}]), [pred_cap], judge, "official", OFFICIAL_SAMPLING["vdc"])
        assert [b["messages"] for b in server.requests] == [want_answer, want_grade]  # the raw answer is graded


def test_prompt_file_errors_name_the_prompt_and_field(tmp_path):
    from vcap.judges.prompts import load_prompts

    (tmp_path / "p.json").write_text(json.dumps({"official": {"entail_events": "Events: {events}"}}))
    with pytest.raises(ValueError, match=r"prompt 'entail_events' uses \{events\}; its fields are"):
        load_prompts(str(tmp_path / "p.json"))
    (tmp_path / "p.json").write_text(json.dumps({"official": {"extract_events": "{text:upper}"}}))
    with pytest.raises(ValueError, match=r"unknown transform\(s\) \['upper'\]"):
        load_prompts(str(tmp_path / "p.json"))
    (tmp_path / "p.json").write_text(json.dumps({"official": {"extract_events": "Give {\"events\": []} {text}"}}))
    with pytest.raises(ValueError, match="literal braces"):
        load_prompts(str(tmp_path / "p.json"))
    (tmp_path / "p.json").write_text(json.dumps({"official": {"entail_objects": {"user": "{premise}", "reply_key": "items"}}}))
    assert load_prompts(str(tmp_path / "p.json"))["official"]["entail_objects"].reply_key == "items"


def test_point15_official_drop_zero_is_rejected_where_it_means_nothing():
    from vcap.bench.datamodule import BenchDataModule

    for bench in ("dream1k", "carebench"):
        with pytest.raises(ValueError, match=f"official_drop_zero is a VDC setting.*{bench}"):
            BenchDataModule(bench, "a", "b", official_drop_zero=True)
    with pytest.raises(ValueError, match=r"unknown protocol 'exact'; valid: \['official', 'robust'\]"):
        BenchDataModule("vdc", "a", "b", protocol="exact")
    assert BenchDataModule("vdc", "a", "b").protocol == "official"


def test_carebench_wrong_entry_count_fails_at_once_where_dream_tries_again():
    """CaReBench's loop logs with logger.error(..., flush=True), which raises TypeError on the count-mismatch and
    transport paths: the sample fails on the first such reply. Tarsier's print(..., flush=True) does not."""
    asked = Counter()

    def script(req, body):
        if req["task"].startswith("extract"):
            return items_reply(req, ["a cat naps."])
        asked[req["premise"]] += 1
        if asked[req["premise"]] == 1:  # first entailment reply of each call has one entry too many
            return verdict_reply({**req, "items": req["items"] + ["extra"]}, set())
        return verdict_reply(req, set(req["items"]))

    records, captions = [record(0, "A cat naps.", ["A cat naps."], "overall")], ["A cat naps."]
    with ScriptedServer(lambda body: ("reply", script(parse_request(body), body))) as server:
        _, care = judge_autodq(records, captions, judge_at(server), ("events",), "official", {}, carebench=True)
        assert autodq(care["events"])["failed"] == 1
        assert sum(parse_request(b)["task"] == "entail_events" for b in server.requests) == 1
    asked.clear()
    _, dream, _ = run_autodq(script, records, captions, "official")
    assert autodq(dream["events"])["failed"] == 0 and autodq(dream["events"])["overall"]["f1"] == 1.0
