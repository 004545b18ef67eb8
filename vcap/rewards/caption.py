"""Caption scorer (Escore): a judge checks each ground-truth event against the caption.

coverage c = entailed events / all events. A record without events (``events: []`` or none) has no coverage: its
score is n/a (``RewardOutput.no_reference``), never 1, and no judge is asked. ``mode='step'`` is the paper's mapping
(0 below ``low``, 0.5 below ``high``, else 1; bounds inclusive on the upper bin);
``mode='linear'`` returns c itself, a denser signal for small models.

``metric='f1'`` replaces c by the AutoDQ-style event F1: precision is the share of events extracted
from the caption that the reference caption entails. Recall alone pays for ever longer captions.
``metric='cser'`` is OwlCap's unit precision + recall (0-2, with ``mode='linear'``): the same two shares, added.
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
                 low: float = 0.28, high: float = 0.35, on_failure: str = "zero", metric: str = "recall"):
        if on_failure not in ("zero", "exclude"):
            raise ValueError(f"on_failure must be 'zero' or 'exclude', got {on_failure!r}")
        if metric not in ("recall", "f1", "cser"):
            raise ValueError(f"caption metric must be 'recall' (the paper's Escore), 'f1' or 'cser' (precision + "
                             f"recall), got {metric!r}")
        if metric == "cser" and mode != "linear":
            raise ValueError("caption metric 'cser' (precision + recall, 0-2) needs mode: linear")
        self.metric = metric
        escore(0.0, mode, low, high)  # validate mode early
        self.judge = build_judge(judge, **(judge_options or {}))
        self.mode, self.low, self.high, self.on_failure = mode, low, high, on_failure

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, coverage, precision = torch.zeros(n), torch.zeros(n), torch.ones(n)
        excluded = torch.zeros(n, dtype=torch.bool)
        failed = torch.zeros(n, dtype=torch.bool)
        failures = []
        events = [list(s.get("events") or []) for s in samples]
        no_reference = torch.tensor([not e for e in events], dtype=torch.bool)
        index = [i for i, p in enumerate(parsed) if p.answer is not None and events[i]]
        failures += [(i, "no <answer> block") for i, p in enumerate(parsed) if p.answer is None and events[i]]
        recall_hits = self.judge.entail_nonempty([(parsed[i].answer, events[i]) for i in index])
        precision_hits = [None] * len(index)
        if self.metric in ("f1", "cser"):
            extracted = self.judge.extract_events([parsed[i].answer for i in index])
            refs = [samples[i].get("caption") or " ".join(events[i]) for i in index]
            precision_hits = self.judge.entail_nonempty([(ref, ex.items or []) for ref, ex in zip(refs, extracted)])
            precision_hits = [(None, ex.error) if ex.items is None else hits for ex, hits in zip(extracted, precision_hits)]
        for k, i in enumerate(index):
            (rec, rec_err), (prec, prec_err) = recall_hits[k], precision_hits[k] if self.metric != "recall" else ([], None)
            if rec is None or prec is None:
                failures.append((i, f"judge failed: {rec_err or prec_err}"))
                excluded[i] = self.on_failure == "exclude"
                failed[i] = True
                continue
            coverage[i] = sum(rec) / len(rec)
            value = float(coverage[i])
            if self.metric != "recall":
                precision[i] = sum(prec) / len(prec) if prec else 1.0
                p = float(precision[i])
                value = value + p if self.metric == "cser" else (2 * value * p / (value + p) if value + p > 0 else 0.0)
            scores[i] = escore(value, self.mode, self.low, self.high)
        components = {"coverage": coverage.masked_fill(no_reference, float("nan"))}
        if self.metric != "recall":
            components["precision"] = precision.masked_fill(no_reference, float("nan"))
        return RewardOutput(scores, components, failures, excluded, failed, no_reference)
