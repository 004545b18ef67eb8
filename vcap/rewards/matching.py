"""String similarity and one-to-one (Hungarian) matching for the think scorer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from vcap.rewards.parsing import normalize


class ExactMatcher:
    """Similarity 1 for equal normalised strings, else 0."""

    name = "exact"

    def similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        a = [normalize(s) for s in left]
        b = [normalize(s) for s in right]
        return np.array([[float(x == y and x != "") for y in b] for x in a], dtype=np.float64).reshape(len(a), len(b))


MATCHERS = {"exact": ExactMatcher}


def build_matcher(name: str, **kwargs):
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; valid: {sorted(MATCHERS)}")
    return MATCHERS[name](**kwargs)


@dataclass
class MatchCounts:
    """Soft true positives and the sizes of both sides, summable across samples (micro P/R/F1)."""

    tp: float = 0.0
    n_pred: int = 0
    n_gt: int = 0

    def __iadd__(self, other: "MatchCounts") -> "MatchCounts":
        self.tp += other.tp
        self.n_pred += other.n_pred
        self.n_gt += other.n_gt
        return self

    def f1(self) -> float:
        return f1_from_counts(self.tp, self.n_pred, self.n_gt)


def f1_from_counts(tp: float, n_pred: float, n_gt: float) -> float:
    """F1 = 2TP / (|pred| + |gt|); two empty sides agree perfectly (1.0)."""
    if n_pred + n_gt == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_gt)


def hungarian(sim: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Maximum-similarity one-to-one pairs, keeping those with similarity >= threshold."""
    if sim.size == 0:
        return []
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return [(int(r), int(c), float(sim[r, c])) for r, c in zip(rows, cols) if sim[r, c] >= threshold]


def soft_match(pred: list[str], gt: list[str], matcher, threshold: float) -> MatchCounts:
    """Items matched one-to-one; each match contributes its similarity (1 for exact) as a soft TP."""
    pairs = hungarian(matcher.similarity(pred, gt), threshold) if pred and gt else []
    return MatchCounts(sum(s for _, _, s in pairs), len(pred), len(gt))
