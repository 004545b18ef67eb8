"""Format reward: 1 when the completion is exactly <think>…</think><answer>…</answer>."""
from __future__ import annotations

import torch

from vcap.rewards.base import Reward, RewardOutput, register_reward


@register_reward("format")
class FormatReward(Reward):
    """``require_json``: the think block must also parse as the structured subject list."""

    def __init__(self, require_json: bool = True):
        self.require_json = require_json

    def score(self, parsed, samples) -> RewardOutput:
        tags = torch.tensor([float(p.strict_format) for p in parsed])
        json_ok = torch.tensor([float(p.subjects is not None) for p in parsed])
        scores = tags * json_ok if self.require_json else tags
        failures = [(i, p.reason) for i, p in enumerate(parsed) if scores[i] == 0 and p.reason]
        return RewardOutput(scores, {"tags": tags, "json": json_ok}, failures)
