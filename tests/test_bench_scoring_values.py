"""AutoDQ and VDCscore at their non-default options and edge cases, by hand: neutral verdicts counted, nan F1,
empty and failed inputs, skipped / dropped videos and the official drop-zero rule (each number worked out inline)."""
import math

import pytest

from vcap.bench.scoring import AutoDQSample, VDCVideo, _f1, autodq, vdcscore

E, N, C = "entailment", "neutral", "contradiction"


def test_autodq_counts_neutral_when_asked():
    samples = [AutoDQSample("a", [E, N, C], [N, E])]
    strict, lenient = autodq(samples)["sources"]["a"], autodq(samples, count_neutral=True)["sources"]["a"]
    assert (strict["recall"], strict["precision"]) == pytest.approx((1 / 3, 1 / 2))
    assert (lenient["recall"], lenient["precision"]) == pytest.approx((2 / 3, 1.0))
    assert lenient["f1"] == pytest.approx(2 * (2 / 3) / (5 / 3))
    assert autodq(samples, count_neutral=True)["overall"]["recall"] == pytest.approx(2 / 3)


def test_autodq_f1_below_one_zero_and_nan():
    # R = 0.25, P = 0.5: F1 = 2 * 0.125 / 0.75 = 1/3 (P + R below 1 is still an F1)
    low = autodq([AutoDQSample("a", [E, N, N, N], [E, N])])
    assert low["sources"]["a"]["f1"] == pytest.approx(1 / 3) and low["overall"]["f1"] == pytest.approx(1 / 3)
    zero = [AutoDQSample("a", [N], [N])]
    assert autodq(zero)["sources"]["a"]["f1"] == 0.0 and autodq(zero)["overall"]["f1"] == 0.0
    official = autodq(zero, nan_f1=True)
    assert math.isnan(official["sources"]["a"]["f1"]) and math.isnan(official["overall"]["f1"])
    assert math.isnan(_f1(float("nan"), 0.0)) and math.isnan(_f1(0.0, float("nan")))  # a nan mean stays nan


def test_autodq_failures_are_counted_wherever_they_are():
    samples = [AutoDQSample("a", None, None, failed=True), AutoDQSample("a", [E], [E]),
               AutoDQSample("b", None, None, failed=True), AutoDQSample("b", [N], [E])]
    out = autodq(samples)
    assert out["failed"] == 2 and out["overall"]["success"] == 2
    assert out["sources"]["b"]["recall"] == 0.0 and out["sources"]["a"]["recall"] == 1.0


@pytest.mark.parametrize("nan_f1", [False, True])
def test_autodq_with_nothing_scored(nan_f1):
    out = autodq([AutoDQSample("a", None, None, failed=True)], nan_f1=nan_f1)
    assert out["sources"] == {} and out["failed"] == 1
    assert set(out["overall"]) == {"f1", "precision", "recall", "success"} and out["overall"]["success"] == 0
    for key in ("f1", "precision", "recall"):  # nothing scored is unknown under either protocol, never 0
        assert math.isnan(out["overall"][key])


def test_vdcscore_skips_drops_and_counts_per_dimension():
    videos = [
        VDCVideo("camera", "v0", [("yes", 5.0)], error="TypeError"),   # skipped (official protocol), listed first
        VDCVideo("camera", "v1", [("yes", 4.0), None]),                 # acc 0.5, score 2.0, 1 parse failure
        VDCVideo("camera", "v2", [None, ("no", 2.0)]),                  # acc 0, score 1.0, 1 parse failure
        VDCVideo("camera", "v3", []),                                   # no judgements: dropped
        VDCVideo("camera", "v4", []),                                   # dropped too
        VDCVideo("short", "v5", []),                                    # a dimension with nothing scored
        VDCVideo("detailed", "v6", [("yes", 1.0)], error="KeyError"),   # another, only skipped
    ]
    out = vdcscore(videos)
    cam, short, detailed = (out["dimensions"][d] for d in ("camera", "short", "detailed"))
    assert cam["acc"] == pytest.approx(25.0) and cam["score"] == pytest.approx(1.5) and cam["videos"] == 2
    assert (cam["dropped"], cam["skipped"], cam["skipped_ids"], cam["parse_failures"]) == (2, 1, ["v0"], 2)
    assert math.isnan(short["acc"]) and math.isnan(short["score"])  # nothing scored: unknown, not 0
    assert (short["videos"], short["dropped"]) == (0, 1)
    assert (short["skipped"], short["skipped_ids"], short["parse_failures"]) == (0, [], 0)
    assert (detailed["skipped_ids"], detailed["dropped"], detailed["parse_failures"]) == (["v6"], 0, 0)
    assert math.isnan(out["avg"]["acc"]) and math.isnan(out["avg"]["score"])  # one dimension unknown: Avg too
    scored = vdcscore(videos[:3])
    assert scored["avg"] == pytest.approx({"acc": 25.0, "score": 1.5})
    assert out["official_drop_zero"] is False
    nan = vdcscore(videos, nan_empty=True)["dimensions"]["short"]
    assert math.isnan(nan["acc"]) and math.isnan(nan["score"])


def test_vdcscore_official_drop_zero_drops_a_zero_accuracy_or_a_zero_score():
    videos = [VDCVideo("d", "acc0", [("no", 3.0)]),             # accuracy 0, score 3: dropped
              VDCVideo("d", "score0", [("yes", 0.0)]),          # accuracy 1, score 0: dropped
              VDCVideo("d", "score1", [("yes", 1.0)]),          # kept: a score of 1 is not 0
              VDCVideo("d", "failed", [("yes", 4.0), None])]    # a parse failure: dropped officially
    official = vdcscore(videos, official_drop_zero=True)
    d = official["dimensions"]["d"]
    assert (d["videos"], d["dropped"], d["acc"], d["score"], d["parse_failures"]) == (1, 3, 100.0, 1.0, 1)
    assert official["official_drop_zero"] is True


def test_vdcscore_of_nothing():
    out = vdcscore([])  # nothing scored: Avg is unknown, not 0
    assert out["dimensions"] == {} and out["official_drop_zero"] is False
    assert math.isnan(out["avg"]["acc"]) and math.isnan(out["avg"]["score"])


def test_defaults_count_only_entailment_and_give_f1_zero():
    assert AutoDQSample("a", [E, N], [N]).scores() == (0.5, 0.0)
    assert _f1(0.0, 0.0) == 0.0
