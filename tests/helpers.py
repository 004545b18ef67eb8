"""Test-only helpers."""
import torch

from vcap.rewards import Reward, RewardOutput


class LengthReward(Reward):
    """Longer completions score higher: gives random tiny models reward variance, hence gradients."""

    def score(self, parsed, samples):
        return RewardOutput(torch.tensor([len(p.text) / 100.0 for p in parsed]))


class RecordReward(Reward):
    """A score per record (the digits of its id / 100): rewards that differ from sample to sample, hence rank to
    rank, whatever the completions."""

    def score(self, parsed, samples):
        return RewardOutput(torch.tensor([int("".join(c for c in s["id"] if c.isdigit()) or 0) / 100.0
                                          for s in samples]))
