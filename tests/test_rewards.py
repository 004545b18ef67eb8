"""Parsing of model outputs and the built-in rewards on hand-built cases."""
import pytest
import torch

from vcap.rewards import RewardSet, build_reward, parse_completion
from vcap.rewards.caption import escore
from vcap.rewards.parsing import Subject
from vcap.rewards.think import ThinkScorer

GOOD = ('<think>[{"subject": "circle", "attributes": ["red", "small"], "actions": ["moves left"]}]</think>'
        "<answer>A small red circle moves left.</answer>")
SAMPLE = {"id": "s1", "caption": "A small red circle moves left.", "events": ["the red circle moves left"],
          "structure": [{"subject": "circle", "attributes": ["red", "small"], "actions": ["moves left"]}]}


def test_parse_good_completion():
    p = parse_completion(GOOD)
    assert p.strict_format and p.reason is None
    assert p.subjects == [Subject("circle", ["red", "small"], ["moves left"])]
    assert p.answer == "A small red circle moves left."


@pytest.mark.parametrize("text, reason", [
    ("", "no <think>"),
    ("just a caption", "no <think>"),
    ("<think>not json</think><answer>x</answer>", "not structured JSON"),
    ('<think>[{"attributes": []}]</think><answer>x</answer>', "has no 'subject'"),
    ('<think>[{"subject": "a", "actions": [1]}]</think><answer>x</answer>', "list of strings"),
    ('<think>[]</think>', "no <answer>"),
    ('<think>[{"subject": "a"}]</think><answer>x</answer> trailing', "outside"),
    ("<think>[{\"subject\": \"a\"", "no <think>"),
])
def test_malformed_outputs_never_raise_and_give_a_reason(text, reason):
    p = parse_completion(text)
    assert p.reason is not None and reason in p.reason


def test_lenient_json_repairs():
    fenced = '<think>```json\n[{"subject": "circle", "attributes": ["red",], "actions": []},]\n```</think><answer>a</answer>'
    assert parse_completion(fenced).subjects == [Subject("circle", ["red"], [])]
    wrapped = '<think>Subjects: {"subjects": [{"subject": "dog"}]} done</think><answer>a</answer>'
    assert parse_completion(wrapped).subjects == [Subject("dog")]


def test_malformed_outputs_score_zero_with_logged_reason():
    rewards = RewardSet({"format": 1.0, "think": 1.0, "caption": 1.0})
    texts = [GOOD, "garbage", "<think>oops</think><answer>A small red circle moves left.</answer>"]
    out = rewards([parse_completion(t) for t in texts], [SAMPLE] * 3)
    assert out.scores.tolist() == pytest.approx([3.0, 0.0, 1.0])  # third: caption ok, no format/think
    assert out.components["format"].tolist() == [1.0, 0.0, 0.0]
    reasons = [why for i, why in out.failures if i == 1]
    assert any("no <think>" in r for r in reasons) and any(r.startswith("caption:") for r in reasons)


def think(pred, gt, **kw):
    scorer = ThinkScorer(**kw)
    counts = scorer.counts(pred, gt)
    return scorer.tscore(counts), counts


GT = [Subject("circle", ["red", "small"], ["moves left"]), Subject("square", ["blue", "large"], ["grows"])]


def test_think_perfect_match_is_one():
    assert think(GT, GT)[0] == 1.0


def test_think_missing_subject_lowers_recall_only():
    score, counts = think(GT[:1], GT)
    assert counts.attributes.tp == 2 and counts.attributes.n_pred == 2 and counts.attributes.n_gt == 4
    assert score == pytest.approx(0.5 * (2 * 2 / 6) + 0.5 * (2 * 1 / 3))  # attr F1 2/3, action F1 2/3


def test_think_extra_subjects_lower_precision():
    padded = GT + [Subject("triangle", ["green", "small"], ["moves up"]), Subject("star", ["red"], ["spins"])]
    score, counts = think(padded, GT)
    assert counts.attributes.n_pred == 7 and counts.attributes.tp == 4
    assert score < 1.0 and score == pytest.approx(0.5 * (8 / 11) + 0.5 * (4 / 6))


def test_think_subjects_matched_one_to_one_regardless_of_order():
    assert think(list(reversed(GT)), GT)[0] == 1.0


def test_think_exact_matcher_is_case_and_punctuation_insensitive_but_not_synonyms():
    pred = [Subject("Circle!", ["RED", "small"], ["moves left."])]
    assert think(pred, GT[:1])[0] == 1.0
    assert think([Subject("ball", ["crimson", "small"], ["goes left"])], GT[:1])[0] == 0.0


def test_think_reward_on_garbage_is_zero_with_reason():
    out = build_reward("think")([parse_completion("<think>{]</think>")], [SAMPLE])
    assert out.scores.tolist() == [0.0] and "JSON" in out.failures[0][1]


@pytest.mark.parametrize("coverage, expected", [(0.0, 0.0), (0.2799, 0.0), (0.28, 0.5), (0.3499, 0.5), (0.35, 1.0),
                                                (1.0, 1.0)])
def test_escore_step_thresholds_are_inclusive_at_the_bin_start(coverage, expected):
    assert escore(coverage, "step") == expected


def test_escore_linear_and_bad_mode():
    assert escore(0.3, "linear") == 0.3
    with pytest.raises(ValueError, match="step"):
        escore(0.3, "cubic")


def test_caption_reward_coverage_with_lexical_judge():
    sample = dict(SAMPLE, events=["the red circle moves left", "the blue square grows", "a dog barks"])
    reward = build_reward("caption", mode="linear")
    out = reward([parse_completion("<think>[]</think><answer>A red circle moves left. The blue square grows.</answer>")],
                 [sample])
    assert out.components["coverage"].tolist() == pytest.approx([2 / 3])
    assert build_reward("caption", mode="step")([parse_completion(GOOD)], [sample]).scores.tolist() == [0.5]


def test_missing_events_is_n_a_not_an_error_and_not_one():
    out = build_reward("caption")([parse_completion(GOOD)], [{"id": "x"}])
    assert out.no_reference.tolist() == [True] and out.scores.tolist() == [0.0]


def test_registry_errors_list_valid_names():
    with pytest.raises(ValueError, match=r"valid: \['caption', 'cnscore', 'format', 'length', 'qa', 'think'\]"):
        RewardSet({"fluency": 1.0})
    with pytest.raises(ValueError, match="not in rewards"):
        RewardSet({"format": 1.0}, {"think": {}})


def test_external_reward_by_import_path():
    reward = build_reward("tests.test_rewards:LengthReward")
    assert reward([parse_completion(GOOD)], [SAMPLE]).scores.tolist() == [len(GOOD)]


class LengthReward:
    """A user reward living outside vcap (only needs __call__ returning a RewardOutput)."""

    def __call__(self, parsed, samples):
        from vcap.rewards import RewardOutput
        return RewardOutput(torch.tensor([float(len(p.text)) for p in parsed]))


def test_caption_f1_metric_stops_paying_for_padding():
    padded = "<think>[]</think><answer>A red circle moves left. A blue square grows. A green triangle shrinks.</answer>"
    exact = "<think>[]</think><answer>A red circle moves left.</answer>"
    recall = build_reward("caption", mode="linear")
    f1 = build_reward("caption", mode="linear", metric="f1")
    samples = [SAMPLE, SAMPLE]
    assert recall([parse_completion(padded), parse_completion(exact)], samples).scores.tolist() == [1.0, 1.0]
    out = f1([parse_completion(padded), parse_completion(exact)], samples)
    assert out.components["precision"].tolist() == pytest.approx([1 / 3, 1.0])
    assert out.scores.tolist() == pytest.approx([0.5, 1.0])  # F1(1, 1/3) = 0.5
