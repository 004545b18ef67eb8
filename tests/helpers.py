"""Test-only helpers."""
import torch

from vcap.rewards import Reward, RewardOutput


class LengthReward(Reward):
    """Longer completions score higher: gives random tiny models reward variance, hence gradients."""

    def score(self, parsed, samples):
        return RewardOutput(torch.tensor([len(p.text) / 100.0 for p in parsed]))
