"""Reward contract and registry.

A reward scores a batch of parsed completions against their samples and returns per-sample
scores plus named sub-scores (all logged). Register a new one with ``@register_reward("name")``
in its own file, then add ``name: weight`` under ``model.rewards`` in YAML. A name of the form
``package.module:ClassName`` also works for rewards living outside vcap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vcap.registry import Registry
from vcap.rewards.parsing import ParsedCompletion


@dataclass
class RewardOutput:
    scores: torch.Tensor  # (N,) float
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (sample index, reason)
    excluded: torch.Tensor | None = None  # (N,) bool: the score is undefined (e.g. judge failed), drop from its group
    # (N,) bool: the judgment failed, so the score is unknown: ``scores`` holds what the optimisation uses
    # (0 under on_failure: zero), while logged means and metrics leave these out (the components hold NaN)
    failed: torch.Tensor | None = None


class Reward:
    """Base class: subclasses implement ``score``. Sample dicts are manifest records."""

    name: str = "reward"

    def score(self, parsed: list[ParsedCompletion], samples: list[dict[str, Any]]) -> RewardOutput:
        raise NotImplementedError

    def __call__(self, parsed: list[ParsedCompletion], samples: list[dict[str, Any]]) -> RewardOutput:
        if len(parsed) != len(samples):
            raise ValueError(f"{self.name}: {len(parsed)} completions but {len(samples)} samples")
        return self.score(parsed, samples)


REWARDS = Registry("reward")
register_reward = REWARDS.register


def build_reward(name: str, **options: Any) -> Reward:
    return REWARDS.build(name, **options)


class RewardSet:
    """Weighted sum of named rewards; keeps every component for logging."""

    def __init__(self, weights: dict[str, float], options: dict[str, dict[str, Any]] | None = None):
        options = options or {}
        unknown = set(options) - set(weights)
        if unknown:
            raise ValueError(f"reward_options given for rewards not in rewards: {sorted(unknown)}")
        if not weights:
            raise ValueError("at least one reward is needed; valid: " + str(sorted(REWARDS)))
        self.weights = dict(weights)
        self.rewards = {name: build_reward(name, **options.get(name, {})) for name in weights}

    def __call__(self, parsed: list[ParsedCompletion], samples: list[dict]) -> RewardOutput:
        n = len(parsed)
        total = torch.zeros(n)
        excluded = torch.zeros(n, dtype=torch.bool)
        failed = torch.zeros(n, dtype=torch.bool)
        components: dict[str, torch.Tensor] = {}
        failures: list[tuple[int, str]] = []
        for name, reward in self.rewards.items():
            out = reward(parsed, samples)
            total += self.weights[name] * out.scores.float()
            unknown = out.failed if out.failed is not None else torch.zeros(n, dtype=torch.bool)
            components[name] = out.scores.float().masked_fill(unknown, float("nan"))
            for sub, values in out.components.items():
                components[f"{name}/{sub}"] = values.float().masked_fill(unknown, float("nan"))
            failures += [(i, f"{name}: {why}") for i, why in out.failures]
            if out.excluded is not None:
                excluded |= out.excluded
            failed |= unknown
        return RewardOutput(total, components, failures, excluded, failed)
