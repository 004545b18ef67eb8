"""ThinkF1 and CaptionScore: values by hand, AutoDQ edge cases, and sum states that merge like DDP."""
import pytest

from vcap.methods.metrics import CaptionScore, ThinkF1
from vcap.rewards.parsing import Subject

GT = [Subject("circle", ["red", "small"], ["moves left"])]
GT2 = [Subject("square", ["blue", "large"], ["grows"]), Subject("circle", ["green", "small"], ["moves up"])]


def test_think_f1_micro_by_hand():
    m = ThinkF1()
    m.update([GT, [Subject("square", ["blue", "small"], ["grows"])], None], [GT, GT2, GT])
    out = m.compute()
    # attributes: tp 2 + 1 + 0 = 3, predicted 2 + 2 + 0 = 4, gt 2 + 4 + 2 = 8
    assert out["attribute_precision"].item() == pytest.approx(3 / 4)
    assert out["attribute_recall"].item() == pytest.approx(3 / 8)
    assert out["attribute_f1"].item() == pytest.approx(2 * 3 / 12)
    # actions: tp 1 + 1 + 0 = 2, predicted 1 + 1 = 2, gt 1 + 2 + 1 = 4
    assert out["action_f1"].item() == pytest.approx(2 * 2 / 6)
    assert out["f1"].item() == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["parse_rate"].item() == pytest.approx(2 / 3)


def test_think_f1_states_merge_like_ddp():
    preds, gts = [GT, None, GT2[:1]], [GT, GT2, GT2]
    whole, a, b = ThinkF1(), ThinkF1(), ThinkF1()
    whole.update(preds, gts)
    a.update(preds[:1], gts[:1])
    b.update(preds[1:], gts[1:])
    a.merge_state(b)
    assert {k: v.item() for k, v in a.compute().items()} == pytest.approx({k: v.item() for k, v in whole.compute().items()})


def test_caption_score_autodq_edge_cases():
    m = CaptionScore(mode="step")
    ref = "A small red circle moves left. A large blue square grows."
    m.update(
        ["A red circle moves left.", "", "A red circle moves left.", "A green triangle spins."],
        [["the red circle moves left", "the blue square grows"], ["the red circle moves left"], [], ["the red circle moves left"]],
        [ref, ref, ref, ref])
    out = m.compute()
    # recall: 1/2, 0 (empty caption), not scored (no GT events: no recall, not 1), 0 -> mean 1/6
    assert out["event_recall"].item() == pytest.approx(1 / 6)
    # precision: 1 (sentence in ref), 1 (no predicted events), 0 (unsupported sentence) -> 2/3
    assert out["event_precision"].item() == pytest.approx(2 / 3)
    assert out["event_f1"].item() == pytest.approx(2 * (1 / 6) * (2 / 3) / (5 / 6))  # F1 of the means, not mean of F1s
    assert out["escore"].item() == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # step: 0.5 coverage -> 1
    assert out["failed"].item() == 0 and out["no_events"].item() == 1


def test_caption_score_counts_judge_failures(monkeypatch):
    from vcap.judges import EntailmentResult

    m = CaptionScore()
    monkeypatch.setattr(m.judge, "entail_many", lambda reqs: [EntailmentResult(None, "timeout") for _ in reqs])
    m.update(["A red circle."], [["the red circle moves left"]], ["A red circle moves left."])
    out = m.compute()
    assert out["failed"].item() == 1  # and nothing was scored: unknown, not 0
    assert all(out[k].isnan() for k in ("event_recall", "event_precision", "event_f1", "escore"))
