"""Logged numbers over every rank's samples, and validation that scores each sample once.

Why not Lightning's ``sync_dist``: it reduces per-rank values, so a mean over ranks weights a rank with 3 samples
like one with 30, and a rank that logs nothing (its whole batch was bad videos, or every validation sample it holds
is the sampler's padding) never joins the all-reduce and the others wait forever. Here each rank contributes sums
and counts (:class:`Tally`), every rank joins one exchange per step whether it has data or not, and the merged
numbers equal one process's on the joined batch.

:class:`FirstOccurrence` drops the distributed sampler's padding: to give every rank the same number of samples it
repeats the first ones, and a repeated sample would be judged and counted twice.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
import torch.distributed as dist

from vcap.training.distributed import is_distributed

REDUCTIONS = ("mean", "sum", "max")


class Tally(NamedTuple):
    """One rank's share of a logged number: ``total`` over ``count`` items, merged over ranks by ``reduce``.

    mean: sum(total) / sum(count) (a mean over all ranks' items); sum: sum(total) (e.g. failure counts);
    max: max(total) over ranks that have one (e.g. the seconds the slowest rank took).
    """

    total: float
    count: float = 1.0
    reduce: str = "mean"


def mean_of(values: torch.Tensor | Iterable[float], weights: torch.Tensor | None = None) -> Tally:
    """A mean over items (``weights``: per-item counts, e.g. tokens), as a tally."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if weights is None:
        return Tally(float(values.sum()), float(values.numel()))
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    return Tally(float((values * weights).sum()), float(weights.sum()))


def add_tallies(a: Tally | None, b: Tally) -> Tally:
    """Two shares of the same number on one rank (e.g. two validation batches)."""
    if a is None:
        return b
    if a.reduce != b.reduce:
        raise ValueError(f"cannot add a {a.reduce} tally to a {b.reduce} tally")
    if a.reduce == "max":
        return Tally(max(a.total, b.total), 1.0, "max")
    return Tally(a.total + b.total, a.count + b.count, a.reduce)


def merge(tallies_per_rank: list[dict[str, Tally]]) -> dict[str, float]:
    """Each key's number over every rank that reported it; a mean with no items anywhere is NaN."""
    out: dict[str, float] = {}
    keys = sorted({k for tallies in tallies_per_rank for k in tallies})
    for key in keys:
        parts = [t[key] for t in tallies_per_rank if key in t]
        how = parts[0].reduce
        if any(p.reduce != how for p in parts) or how not in REDUCTIONS:
            raise ValueError(f"metric {key!r}: ranks reduce it differently ({sorted({p.reduce for p in parts})})")
        if how == "sum":
            out[key] = sum(p.total for p in parts)
        elif how == "max":
            out[key] = max(p.total for p in parts)
        else:  # a mean of no items (e.g. every judgment failed) is unknown: NaN, never 0
            count = sum(p.count for p in parts)
            out[key] = sum(p.total for p in parts) / count if count > 0 else float("nan")
    return out


def all_ranks(local: dict[str, Tally]) -> dict[str, float]:
    """The merged numbers of every rank's tallies. A collective: every rank must call it, with data or without
    (an empty dict), the same number of times."""
    if not is_distributed():
        return merge([local])
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: tuple(v) for k, v in local.items()})
    return merge([{k: Tally(*v) for k, v in part.items()} for part in gathered])


class FirstOccurrence:
    """Keeps each sample key the first time any rank sees it in this pass (earlier steps first, then lower ranks,
    then batch order); later copies are the sampler's padding. ``keep`` is a collective, once per step on
    every rank."""

    def __init__(self):
        self.seen: set = set()

    def reset(self) -> None:
        self.seen.clear()

    def keep(self, keys: list) -> list[bool]:
        if is_distributed():
            per_rank: list = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, list(keys))
        else:
            per_rank = [list(keys)]
        mine = dist.get_rank() if is_distributed() else 0
        result: list[bool] = []
        for rank, rank_keys in enumerate(per_rank):
            for key in rank_keys:
                first = key not in self.seen
                self.seen.add(key)
                if rank == mine:
                    result.append(first)
        return result
