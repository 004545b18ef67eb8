"""The think scorer at settings the other reward tests leave alone: weights that do not sum to 1, one weight 0,
matcher options passed through, a failed sample in the middle of a batch, and the errors' wording. Every expected
number is worked out in the comments.
"""
import numpy as np
import pytest

from vcap.rewards import build_reward, parse_completion
from vcap.rewards.parsing import ParsedCompletion, Subject
from vcap.rewards.think import ThinkScorer

# attributes: 1 of [red, large] vs [red]: F1 = 2 * 1 / (2 + 1) = 2/3; actions: 0 of [grows] vs [moves left]: F1 = 0
PRED = [Subject("circle", ["red", "large"], ["grows"])]
GT = [Subject("circle", ["red"], ["moves left"])]
STRUCTURE = [{"subject": "circle", "attributes": ["red"], "actions": ["moves left"]}]


class ScaledMatcher:
    """Exact matching times ``scale``: a matcher whose similarity shows whether its options arrived."""

    def __init__(self, scale: float):
        self.scale = scale

    def similarity(self, left, right):
        return np.array([[self.scale * float(x == y) for y in right] for x in left]).reshape(len(left), len(right))


def test_weights_are_normalised_by_their_sum():
    scorer = ThinkScorer(attribute_weight=1.0, action_weight=3.0)
    # (1 * 2/3 + 3 * 0) / (1 + 3) = 1/6; a product with the sum instead of a quotient would give 8/3
    assert scorer.tscore(scorer.counts(PRED, GT)) == pytest.approx(1 / 6)
    scorer = ThinkScorer(attribute_weight=2.0, action_weight=2.0)
    assert scorer.tscore(scorer.counts(PRED, GT)) == pytest.approx(1 / 3)  # the plain mean of 2/3 and 0


def test_one_weight_may_be_zero_but_not_negative():
    only_attributes = ThinkScorer(attribute_weight=2.0, action_weight=0.0)
    assert only_attributes.tscore(only_attributes.counts(PRED, GT)) == pytest.approx(2 / 3)
    only_actions = ThinkScorer(attribute_weight=0.0, action_weight=0.5)
    assert only_actions.tscore(only_actions.counts(PRED, GT)) == 0.0
    message = r"^attribute_weight and action_weight must be >= 0 and not both 0$"
    for weights in [(-1.0, 2.0), (2.0, -1.0), (0.0, 0.0)]:
        with pytest.raises(ValueError, match=message):
            ThinkScorer(attribute_weight=weights[0], action_weight=weights[1])


def test_matcher_options_reach_the_matcher():
    # scale 0.6: the subjects match (0.6 >= 0.5; a pair counts 1), items count 0.6 each: attributes 2 * 0.6 / 3 = 0.4
    scorer = ThinkScorer(matcher="tests.test_think_scorer:ScaledMatcher", scale=0.6)
    assert scorer.matcher.scale == 0.6
    counts = scorer.counts(PRED, GT)
    assert (counts.subjects.tp, counts.attributes.tp) == (1.0, pytest.approx(0.6))
    assert counts.attributes.f1() == pytest.approx(0.4)
    # scale 0.4: below the subject threshold, nothing is matched: every item is a false positive or negative
    counts = ThinkScorer(matcher="tests.test_think_scorer:ScaledMatcher", scale=0.4).counts(PRED, GT)
    assert (counts.subjects.tp, counts.attributes.tp, counts.attributes.n_pred, counts.attributes.n_gt) == (0, 0, 2, 1)
    with pytest.raises(ValueError, match="bad options for matcher 'exact'"):
        ThinkScorer(matcher="exact", scale=0.6)


def test_a_failed_sample_does_not_stop_the_ones_after_it():
    reward = build_reward("think", attribute_weight=1.0, action_weight=3.0)
    good = parse_completion('<think>[{"subject": "circle", "attributes": ["red", "large"], "actions": ["grows"]}]'
                            '</think><answer>a red circle</answer>')
    unlabelled = ParsedCompletion("x", False, None, None, None, None)  # a parser that gave no reason
    out = reward([parse_completion("no think"), unlabelled, good], [{"structure": STRUCTURE}] * 3)
    assert out.scores.tolist() == pytest.approx([0.0, 0.0, 1 / 6])
    assert out.components["attribute_f1"].tolist() == pytest.approx([0.0, 0.0, 2 / 3])
    assert out.failures == [(0, "no <think>…</think> block"), (1, "no structured think block")]


def test_a_sample_without_structure_is_named():
    reward = build_reward("think")
    good = parse_completion('<think>[{"subject": "circle"}]</think><answer>a circle</answer>')
    with pytest.raises(KeyError, match=r"sample clip-7 has no 'structure' \(needed by the think reward\)"):
        reward([good], [{"id": "clip-7"}])
    with pytest.raises(KeyError, match=r"sample \? has no 'structure'"):
        reward([good], [{}])
