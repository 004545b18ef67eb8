"""AutoDQ and VDCscore aggregation against values computed by hand, official edge cases included."""
import pytest

from vcap.bench.scoring import AutoDQSample, VDCVideo, autodq, hit_rate, vdcscore

E, N, C = "entailment", "neutral", "contradiction"


def test_only_entailment_counts_and_empty_lists_score_one():
    assert hit_rate([E, N, C, E]) == 0.5
    assert hit_rate([E, N, C, E], count_neutral=True) == 0.75
    assert hit_rate([]) == 1.0


def test_autodq_macro_over_uneven_sources_with_a_failure():
    samples = [
        # source a: two samples. R = (1/2 + 1) / 2 = 0.75 (second has no GT events); P = (1 + 0) / 2 = 0.5
        AutoDQSample("a", [E, N], [E]),
        AutoDQSample("a", [], [C]),
        # source b: one sample. R = 0 (neutral does not count), P = 1 (no predicted events: empty prediction)
        AutoDQSample("b", [N, N, N], []),
        # a failed sample: excluded, counted
        AutoDQSample("b", None, None, failed=True),
    ]
    out = autodq(samples)
    a, b = out["sources"]["a"], out["sources"]["b"]
    assert (a["recall"], a["precision"], a["success"]) == (0.75, 0.5, 2)
    assert a["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)  # 0.6: F1 of the means
    assert (b["recall"], b["precision"], b["f1"]) == (0.0, 1.0, 0.0)
    # overall = mean of source means: R = 0.375, P = 0.75 (micro would give R = 0.5, P = 2/3)
    assert out["overall"]["recall"] == pytest.approx(0.375)
    assert out["overall"]["precision"] == pytest.approx(0.75)
    assert out["overall"]["f1"] == pytest.approx(2 * 0.375 * 0.75 / 1.125)
    assert out["failed"] == 1 and out["overall"]["success"] == 3


def test_vdcscore_per_video_then_dimension_then_average():
    videos = [
        VDCVideo("camera", "v1", [("yes", 4.0), ("no", 1.0)]),        # acc 0.5, score 2.5
        VDCVideo("camera", "v2", [("yes", 5.0), ("yes", 3.0), ("no", 1.0), ("no", 0.0)]),  # acc 0.5, score 2.25
        VDCVideo("short", "v1", [("no", 0.0)]),                       # acc 0, score 0
        VDCVideo("short", "v2", [("yes", 3.0), None]),                # parse failure -> "no"/0: acc 0.5, score 1.5
    ]
    out = vdcscore(videos)
    cam, short = out["dimensions"]["camera"], out["dimensions"]["short"]
    assert cam["acc"] == pytest.approx(50.0) and cam["score"] == pytest.approx(2.375)
    assert short["acc"] == pytest.approx(25.0) and short["score"] == pytest.approx(0.75)
    assert short["parse_failures"] == 1 and short["dropped"] == 0
    assert out["avg"]["acc"] == pytest.approx(37.5) and out["avg"]["score"] == pytest.approx(1.5625)


def test_vdcscore_official_drop_zero_is_opt_in():
    videos = [VDCVideo("short", "v1", [("no", 0.0)]), VDCVideo("short", "v2", [("yes", 3.0), None]),
              VDCVideo("short", "v3", [("yes", 4.0)])]
    official = vdcscore(videos, official_drop_zero=True)["dimensions"]["short"]
    assert (official["videos"], official["dropped"]) == (1, 2)  # zero video and the one with an exception
    assert official["acc"] == 100.0 and official["score"] == 4.0
    kept = vdcscore(videos)["dimensions"]["short"]
    assert kept["videos"] == 3 and kept["acc"] == pytest.approx(100 * 1.5 / 3)
