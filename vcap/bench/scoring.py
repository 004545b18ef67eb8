"""Benchmark aggregation, exactly as the official scripts do it (pure functions over judged samples).

AutoDQ (DREAM-1K; CaReBench actions and objects): per sample, recall = GT items the judge marks
"entailment" by the prediction, precision = predicted items entailed by the reference. No GT items gives
recall 1, no predicted items precision 1. Per source, F1 is the harmonic mean of the *mean* recall and
*mean* precision; overall R and P are the means over sources (a macro average). Failed samples are
excluded and counted. With ``nan_f1`` (the official protocol) F1 of P = R = 0 is nan as the official
``count_f1`` gives; otherwise 0. With no sample scored at all the means are nan under either protocol (as the
official ``np.average`` of nothing): a number that nothing backs is never shown as 0.

VDCscore (VDC): per QA a yes/no and a 0-5 score; per video the accuracy and mean score; per dimension the
mean over videos; Avg is the mean over dimensions. Under the robust protocol parse failures count as "no"/0
and are reported; under the official one (``VDCVideo.error`` set) the video is skipped, as the official script's
``except`` does. ``official_drop_zero`` reproduces the script's ``if tp_score and tp_acc`` (videos with accuracy
or score 0 are dropped). Only an exact ``"yes"`` is a hit (the robust parser lower-cases before).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

HIT = "entailment"


def hit_rate(verdicts: list[str], count_neutral: bool = False) -> float:
    """Share of items judged entailed; an empty list scores 1.0 (the official edge case)."""
    if not verdicts:
        return 1.0
    hits = {HIT, "neutral"} if count_neutral else {HIT}
    return sum(v in hits for v in verdicts) / len(verdicts)


@dataclass
class AutoDQSample:
    source: str
    recall_verdicts: list[str] | None  # judge verdicts for the GT items against the prediction
    precision_verdicts: list[str] | None  # judge verdicts for the predicted items against the reference
    failed: bool = False

    def scores(self, count_neutral: bool = False) -> tuple[float, float]:
        return (hit_rate(self.recall_verdicts or [], count_neutral),
                hit_rate(self.precision_verdicts or [], count_neutral))


NAN = float("nan")


def _f1(p: float, r: float, nan_f1: bool = False) -> float:
    if p + r > 0:
        return 2 * p * r / (p + r)
    return NAN if nan_f1 or p != p or r != r else 0.0


def autodq(samples: list[AutoDQSample], count_neutral: bool = False, nan_f1: bool = False) -> dict:
    """{'sources': {name: {f1, precision, recall, success}}, 'overall': {...}, 'failed': n}."""
    per_source: dict[str, list[tuple[float, float]]] = defaultdict(list)
    failed = 0
    for s in samples:
        if s.failed:
            failed += 1
            continue
        per_source[s.source].append(s.scores(count_neutral))
    sources = {}
    for name, values in sorted(per_source.items()):
        r = sum(v[0] for v in values) / len(values)
        p = sum(v[1] for v in values) / len(values)
        sources[name] = {"f1": _f1(p, r, nan_f1), "precision": p, "recall": r, "success": len(values)}
    if sources:
        r = sum(v["recall"] for v in sources.values()) / len(sources)
        p = sum(v["precision"] for v in sources.values()) / len(sources)
        overall = {"f1": _f1(p, r, nan_f1), "precision": p, "recall": r,
                   "success": sum(v["success"] for v in sources.values())}
    else:  # nothing scored: unknown, under either protocol
        overall = {"f1": NAN, "precision": NAN, "recall": NAN, "success": 0}
    return {"sources": sources, "overall": overall, "failed": failed}


@dataclass
class VDCVideo:
    dimension: str
    video_id: str
    judgements: list[tuple[str, float] | None] = field(default_factory=list)  # (pred, score) or None: parse failure
    error: str | None = None  # official protocol: the exception that made the script skip this video


def vdcscore(videos: list[VDCVideo], official_drop_zero: bool = False, nan_empty: bool = False) -> dict:
    """{'dimensions': {dim: {acc, score, videos, dropped, skipped, parse_failures}}, 'avg': {acc, score}}."""
    per_dim: dict[str, list[tuple[float, float]]] = defaultdict(list)
    dropped: dict[str, int] = defaultdict(int)
    skipped: dict[str, list[str]] = defaultdict(list)
    parse_failures: dict[str, int] = defaultdict(int)
    for v in videos:
        if v.error is not None:
            skipped[v.dimension].append(v.video_id)
            continue
        if not v.judgements:
            dropped[v.dimension] += 1
            continue
        failures = sum(j is None for j in v.judgements)
        parse_failures[v.dimension] += failures
        if official_drop_zero and failures:
            dropped[v.dimension] += 1  # the official script skips any video with an exception
            continue
        pred = [(j[0] == "yes", j[1]) if j is not None else (False, 0.0) for j in v.judgements]
        acc = sum(p for p, _ in pred) / len(pred)
        score = sum(s for _, s in pred) / len(pred)
        if official_drop_zero and (acc == 0 or score == 0):
            dropped[v.dimension] += 1
            continue
        per_dim[v.dimension].append((acc, score))
    dims = {}
    # a dimension with no video scored is unknown, not 0 (``nan_empty`` is kept for callers; it no longer changes
    # anything: the robust protocol shows nan there too, as the official one does)
    empty = NAN
    for dim in sorted(set(per_dim) | set(dropped) | set(skipped)):
        values = per_dim.get(dim, [])
        dims[dim] = {"acc": 100 * sum(a for a, _ in values) / len(values) if values else empty,
                     "score": sum(s for _, s in values) / len(values) if values else empty,
                     "videos": len(values), "dropped": dropped.get(dim, 0), "skipped": len(skipped.get(dim, [])),
                     "skipped_ids": skipped.get(dim, []), "parse_failures": parse_failures.get(dim, 0)}
    avg = {"acc": sum(d["acc"] for d in dims.values()) / len(dims) if dims else NAN,
           "score": sum(d["score"] for d in dims.values()) / len(dims) if dims else NAN}
    return {"dimensions": dims, "avg": avg, "official_drop_zero": official_drop_zero}
