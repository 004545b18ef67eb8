"""The helper that keeps equality checks honest fails on results that carry no information."""
import pytest

from tests.informative import assert_informative, numeric_leaves


def test_numeric_leaves_walks_nested_results():
    assert numeric_leaves({"events": {"overall": {"f1": 0.5, "success": 3, "ok": True}}, "x": [1, "a"]}) == {
        ".events.overall.f1": 0.5, ".events.overall.success": 3.0, ".x[0]": 1.0}


@pytest.mark.parametrize("results", [
    {"events": {"f1": 0.0, "precision": 0.0, "recall": 0.0}},  # a judge that entails nothing
    {"events": {"f1": 0.4, "precision": 0.4}},  # a single repeated value
    {"score": float("nan"), "f1": 0.3, "p": 0.2},
    {"name": "no numbers"},
])
def test_uninformative_results_fail(results):
    with pytest.raises(AssertionError):
        assert_informative(results)


def test_informative_results_pass():
    assert len(assert_informative({"events": {"f1": 0.4, "precision": 0.5, "recall": 0.0}, "samples": 3})) == 4
