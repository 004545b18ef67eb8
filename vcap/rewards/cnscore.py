"""CNscore: an LLM judge rates the caption's completeness and naturalness against the reference caption.

The paper's ablation alternative to Escore. score = (w_c * completeness + w_n * naturalness) / (10 * (w_c + w_n)),
in [0, 1]. Needs an LLM judge ('openai' or 'hf').
"""
from __future__ import annotations

import torch

from vcap.judges import build_judge
from vcap.rewards.base import Reward, RewardOutput, register_reward


@register_reward("cnscore")
class CNScoreReward(Reward):
    def __init__(self, judge: str = "openai", judge_options: dict | None = None, completeness_weight: float = 1.0,
                 naturalness_weight: float = 1.0, on_failure: str = "zero"):
        if on_failure not in ("zero", "exclude"):
            raise ValueError(f"on_failure must be 'zero' or 'exclude', got {on_failure!r}")
        self.judge = build_judge(judge, **(judge_options or {}))
        self.weights = (completeness_weight, naturalness_weight)
        self.on_failure = on_failure

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, comp, nat = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        excluded = torch.zeros(n, dtype=torch.bool)
        failed = torch.zeros(n, dtype=torch.bool)
        failures = [(i, "no <answer> block") for i, p in enumerate(parsed) if p.answer is None]
        index = [i for i, p in enumerate(parsed) if p.answer is not None]
        for i in index:
            if not samples[i].get("caption"):
                raise KeyError(f"sample {samples[i].get('id', '?')} has no 'caption' (the cnscore reference)")
        ratings = self.judge.rate([parsed[i].answer for i in index], [samples[i]["caption"] for i in index])
        wc, wn = self.weights
        for i, r in zip(index, ratings):
            if r.error is not None:
                failures.append((i, f"judge failed: {r.error}"))
                excluded[i] = self.on_failure == "exclude"
                failed[i] = True
                continue
            comp[i], nat[i] = r.completeness / 10, r.naturalness / 10
            scores[i] = (wc * comp[i] + wn * nat[i]) / (wc + wn)
        return RewardOutput(scores, {"completeness": comp, "naturalness": nat}, failures, excluded, failed)
