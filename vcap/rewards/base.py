"""Reward contract and registry.

A reward scores a batch of parsed completions against their samples and returns per-sample
scores plus named sub-scores (all logged). Register a new one with ``@register_reward("name")``
in its own file, then add ``name: weight`` under ``model.rewards`` in YAML. A name of the form
``package.module:ClassName`` also works for rewards living outside vcap.
"""
from __future__ import annotations

import asyncio
import inspect
import time
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
    # (N,) bool: the sample's record has no reference for this reward (``events: []`` for the caption reward,
    # ``structure: []`` for the think reward), so its score is n/a, never "everything covered": ``scores`` holds 0,
    # the same for every completion of a GRPO group (they share the record), so this reward moves no advantage in
    # that group while the others still train; logged means leave it out (the components hold NaN) and it is counted
    no_reference: torch.Tensor | None = None
    # RewardSet only: reward name -> its ``no_reference`` mask (logged as ``<split>/<name>_no_reference``)
    no_reference_by: dict[str, torch.Tensor] = field(default_factory=dict)
    # RewardSet only: (N,) bool, some reward's score is n/a (failed or no reference): the total is left out of
    # logged means of the total reward (validation), like a failed judgment
    unscored: torch.Tensor | None = None
    # RewardSet only: reward name -> its (N,) float ``scores`` before weighting, exactly what the weighted sum
    # ``scores`` adds (0 where failed under on_failure: zero or no reference; never the components' NaN), for
    # aggregations other than the plain sum (GRPOModule's reward_aggregation: normalize_then_sum)
    scores_by: dict[str, torch.Tensor] = field(default_factory=dict)


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
        """Every reward, one after another (the slow twin of ``submit``)."""
        return self.combine({name: _run(reward, parsed, samples) for name, reward in self.rewards.items()},
                            len(parsed))

    def submit(self, parsed: list[ParsedCompletion], samples: list[dict]) -> "PendingRewards":
        """Every reward's work sent at once, each in a thread of its own (a judge's requests then wait on the
        network while the caller computes): ``.result()`` joins them and combines exactly as ``__call__``."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=len(self.rewards), thread_name_prefix="vcap-reward")
        futures = {name: pool.submit(_run, reward, parsed, samples) for name, reward in self.rewards.items()}
        pool.shutdown(wait=False)
        return PendingRewards(self, futures, len(parsed))

    def combine(self, outputs: dict[str, RewardOutput], n: int) -> RewardOutput:
        """The weighted sum and every component, in the order of ``weights`` whatever order the rewards ended in."""
        total = torch.zeros(n)
        excluded = torch.zeros(n, dtype=torch.bool)
        failed = torch.zeros(n, dtype=torch.bool)
        unscored = torch.zeros(n, dtype=torch.bool)
        components: dict[str, torch.Tensor] = {}
        failures: list[tuple[int, str]] = []
        no_reference: dict[str, torch.Tensor] = {}
        scores_by: dict[str, torch.Tensor] = {}
        for name in self.rewards:
            out = outputs[name]
            scores_by[name] = out.scores.float()
            total += self.weights[name] * scores_by[name]
            judged = out.failed if out.failed is not None else torch.zeros(n, dtype=torch.bool)
            unknown = judged.clone()
            if out.no_reference is not None:
                no_reference[name] = out.no_reference
                unknown |= out.no_reference
            components[name] = out.scores.float().masked_fill(unknown, float("nan"))
            for sub, values in out.components.items():
                components[f"{name}/{sub}"] = values.float().masked_fill(unknown, float("nan"))
            failures += [(i, f"{name}: {why}") for i, why in out.failures]
            if out.excluded is not None:
                excluded |= out.excluded
            failed |= judged
            unscored |= unknown
        return RewardOutput(total, components, failures, excluded, failed, no_reference_by=no_reference,
                            unscored=unscored, scores_by=scores_by)


def _run(reward: Reward, parsed: list[ParsedCompletion], samples: list[dict]) -> RewardOutput:
    """A reward's output; an ``async def score`` runs to its end on an event loop of its own."""
    out = reward(parsed, samples)
    if inspect.iscoroutine(out):
        out = asyncio.run(out)
    return out


class PendingRewards:
    """Rewards being scored (``RewardSet.submit``); ``result()`` waits for all of them. An error or an interrupt
    raised while scoring is raised here, in the caller's thread."""

    def __init__(self, reward_set: RewardSet, futures: dict, n: int):
        self.reward_set, self.futures, self.n = reward_set, futures, n
        self.wait_seconds = 0.0  # how long ``result()`` waited: the judge time the overlap did not hide

    def result(self) -> RewardOutput:
        start = time.perf_counter()
        outputs = {name: future.result() for name, future in self.futures.items()}
        self.wait_seconds = time.perf_counter() - start
        return self.reward_set.combine(outputs, self.n)


class ScoredRewards:
    """Rewards scored at once, one after another (``RewardSet.__call__``), behind ``PendingRewards``' interface:
    the sequential twin of ``submit``. ``wait_seconds`` is the whole scoring time, all of it on the step's path."""

    def __init__(self, reward_set: RewardSet, parsed: list[ParsedCompletion], samples: list[dict]):
        start = time.perf_counter()
        self.output = reward_set(parsed, samples)
        self.wait_seconds = time.perf_counter() - start

    def result(self) -> RewardOutput:
        return self.output
