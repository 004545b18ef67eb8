"""Judge phases of the benchmarks with a scripted judge whose verdicts are known; metrics checked by hand."""
import pytest

from vcap.bench.judging import judge_autodq, judge_vdc, scored_caption
from vcap.bench.scoring import autodq, vdcscore
from tests.judge_server import scripted_reply
from vcap.judges.llm import LLMJudge


class ScriptedJudge(LLMJudge):
    """Replies are a pure function of the prompt (see ``tests.judge_server.scripted_reply``)."""

    name = "scripted"

    def __init__(self, entailed: dict[str, set[str]], fail_on: str | None = None):
        super().__init__("scripted", cache=None, parse_retries=0)
        self.entailed, self.fail_on = entailed, fail_on

    def complete(self, requests):
        return [scripted_reply(messages[-1]["content"], self.entailed, self.fail_on) for messages, _ in requests]


def test_answer_part_is_scored_and_think_kept():
    assert scored_caption('<think>[]</think><answer>A cat naps.</answer>') == ("A cat naps.", "[]")
    assert scored_caption("  A plain caption. ") == ("A plain caption.", None)


def test_autodq_end_to_end_with_known_verdicts():
    records = [
        {"id": "1", "source": "a", "reference": "A cat yawns. A cat naps.", "events": ["A cat yawns.", "A cat naps."]},
        {"id": "2", "source": "a", "reference": "A static room.", "events": []},
        {"id": "3", "source": "b", "reference": "A dog runs.", "events": ["A dog runs."]},
        {"id": "4", "source": "b", "reference": "A bird sings.", "events": ["A bird sings."]},
    ]
    captions = ["A cat naps. A cat flies.", "A room.", "", "A bird sings."]
    judge = ScriptedJudge({
        "A cat naps. A cat flies.": {"A cat naps."},          # recall 1/2
        "A cat yawns. A cat naps.": {"A cat naps."},          # precision 1/2 ("A cat flies." is neutral)
        "A static room.": set(),                              # precision 0/1, recall 1 (no GT events)
        "A bird sings.": {"A bird sings."},
    }, fail_on="Description:\nA bird sings.\n\nStatements")   # sample 4's recall call fails: excluded, counted
    details, by_kind = judge_autodq(records, captions, judge, ("events",), "robust")
    samples = by_kind["events"]
    details = [d["events"] for d in details]
    assert details[0]["pred"] == ["A cat naps.", "A cat flies."]
    assert details[0]["recall_verdicts"] == ["neutral", "entailment"]  # GT "A cat yawns." is not in the caption
    assert details[2]["pred"] == [] and details[2]["precision_verdicts"] == []  # empty caption: precision 1
    assert samples[3].failed and "recall" in details[3]["errors"][0]
    out = autodq(samples)
    # a: R = (0.5 + 1) / 2 = 0.75, P = (0.5 + 0) / 2 = 0.25; b: R = 0 (sample 3), P = 1
    assert out["sources"]["a"]["recall"] == 0.75 and out["sources"]["a"]["precision"] == 0.25
    assert (out["sources"]["b"]["recall"], out["sources"]["b"]["precision"]) == (0.0, 1.0)
    assert out["overall"]["recall"] == pytest.approx(0.375) and out["overall"]["precision"] == pytest.approx(0.625)
    assert out["failed"] == 1


def test_carebench_objects_extracted_from_reference_when_absent():
    records = [{"id": "v", "reference": "There is a red ball. There is a box.", "objects": None}]
    judge = ScriptedJudge({"There is a red ball.": {"There is a red ball."},
                           "There is a red ball. There is a box.": {"There is a red ball."}})
    details, samples = judge_autodq(records, ["There is a red ball."], judge, ("objects",), "robust")
    assert details[0]["objects"]["gt"] == ["There is a red ball.", "There is a box."]
    assert samples["objects"][0].scores() == (0.5, 1.0)


def test_vdc_two_step_judging_and_parse_failures_are_recorded():
    records = [{"id": "v1/camera", "video_id": "v1", "dimension": "camera",
                "qa": [{"question": "What colour is the car?", "answer": "red"},
                       {"question": "Where is it?", "answer": "a road"}]},
               {"id": "v2/camera", "video_id": "v2", "dimension": "camera",
                "qa": [{"question": "What colour is the sky?", "answer": "blue"}]}]
    judge = ScriptedJudge({}, fail_on="Question: What colour is the sky?")  # v2's answer step fails
    details, videos = judge_vdc(records, ["A red car on a road.", "Sky."], judge, "robust")
    assert [q["grade"] for q in details[0]["qa"]] == [["yes", 4.0], ["no", 1.0]]
    assert details[1]["qa"][0]["grade"] is None and "unparseable" in details[1]["qa"][0]["error"]
    out = vdcscore(videos)["dimensions"]["camera"]
    # v1: acc 0.5, score 2.5; v2: parse failure counts as no/0 -> acc 0, score 0
    assert out["acc"] == pytest.approx(25.0) and out["score"] == pytest.approx(1.25) and out["parse_failures"] == 1
