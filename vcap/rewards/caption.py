"""Caption scorer (Escore): a judge checks each ground-truth event against the caption.

coverage c = entailed events / all events. ``mode='step'`` is the paper's mapping
(0 below ``low``, 0.5 below ``high``, else 1; bounds inclusive on the upper bin);
``mode='linear'`` returns c itself, a denser signal for small models.
"""
from __future__ import annotations

import torch

from vcap.judges import build_judge
from vcap.rewards.base import Reward, RewardOutput, register_reward


def escore(coverage: float, mode: str = "step", low: float = 0.28, high: float = 0.35) -> float:
    if mode == "linear":
        return coverage
    if mode != "step":
        raise ValueError(f"unknown caption score mode {mode!r}; valid: 'step', 'linear'")
    return 0.0 if coverage < low else 0.5 if coverage < high else 1.0


def sample_events(sample: dict) -> list[str]:
    events = sample.get("events")
    if events is None:
        raise KeyError(f"sample {sample.get('id', '?')} has no 'events'; add them to the manifest "
                       "(e.g. with a judge that extracts events from the caption)")
    return list(events)


@register_reward("caption")
class CaptionReward(Reward):
    """``on_failure``: 'zero' scores a failed judge call 0; 'exclude' drops it from its group."""

    def __init__(self, judge: str = "lexical", judge_options: dict | None = None, mode: str = "step",
                 low: float = 0.28, high: float = 0.35, on_failure: str = "zero"):
        if on_failure not in ("zero", "exclude"):
            raise ValueError(f"on_failure must be 'zero' or 'exclude', got {on_failure!r}")
        escore(0.0, mode, low, high)  # validate mode early
        self.judge = build_judge(judge, **(judge_options or {}))
        self.mode, self.low, self.high, self.on_failure = mode, low, high, on_failure

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, coverage = torch.zeros(n), torch.zeros(n)
        excluded = torch.zeros(n, dtype=torch.bool)
        failures = []
        requests, index = [], []
        for i, (p, sample) in enumerate(zip(parsed, samples)):
            events = sample_events(sample)
            if p.answer is None:
                failures.append((i, "no <answer> block"))
            elif not events:
                coverage[i] = 1.0  # nothing to cover
                scores[i] = escore(1.0, self.mode, self.low, self.high)
            else:
                requests.append((p.answer, events))
                index.append(i)
        for i, result in zip(index, self.judge.entail_many(requests)):
            if result.entailed is None:
                failures.append((i, f"judge failed: {result.error}"))
                excluded[i] = self.on_failure == "exclude"
                continue
            coverage[i] = sum(result.entailed) / len(result.entailed)
            scores[i] = escore(float(coverage[i]), self.mode, self.low, self.high)
        return RewardOutput(scores, {"coverage": coverage}, failures, excluded)
