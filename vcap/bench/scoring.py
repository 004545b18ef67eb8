"""Benchmark aggregation, exactly as the official scripts do it (pure functions over judged samples).

AutoDQ (DREAM-1K; CaReBench actions and objects): per sample, recall = GT items the judge marks
"entailment" by the prediction, precision = predicted items entailed by the reference. No GT items gives
recall 1, no predicted items precision 1. Per source, F1 is the harmonic mean of the *mean* recall and
*mean* precision; overall R and P are the means over sources (a macro average). Failed samples are
excluded and counted.

VDCscore (VDC): per QA a yes/no and a 0-5 score; per video the accuracy and mean score; per dimension the
mean over videos; Avg is the mean over dimensions. Parse failures count as "no"/0 and are reported, unless
``official_drop_zero`` reproduces the post-processing script that drops every video with accuracy or score 0.
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


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def autodq(samples: list[AutoDQSample], count_neutral: bool = False) -> dict:
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
        sources[name] = {"f1": _f1(p, r), "precision": p, "recall": r, "success": len(values)}
    if sources:
        r = sum(v["recall"] for v in sources.values()) / len(sources)
        p = sum(v["precision"] for v in sources.values()) / len(sources)
        overall = {"f1": _f1(p, r), "precision": p, "recall": r, "success": sum(v["success"] for v in sources.values())}
    else:
        overall = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "success": 0}
    return {"sources": sources, "overall": overall, "failed": failed}


@dataclass
class VDCVideo:
    dimension: str
    video_id: str
    judgements: list[tuple[str, float] | None] = field(default_factory=list)  # (yes/no, 0-5) or None: parse failure


def vdcscore(videos: list[VDCVideo], official_drop_zero: bool = False) -> dict:
    """{'dimensions': {dim: {acc, score, videos, dropped, parse_failures}}, 'avg': {acc, score}}."""
    per_dim: dict[str, list[tuple[float, float]]] = defaultdict(list)
    dropped: dict[str, int] = defaultdict(int)
    parse_failures: dict[str, int] = defaultdict(int)
    for v in videos:
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
    for dim in sorted(set(per_dim) | set(dropped)):
        values = per_dim.get(dim, [])
        dims[dim] = {"acc": 100 * sum(a for a, _ in values) / len(values) if values else 0.0,
                     "score": sum(s for _, s in values) / len(values) if values else 0.0,
                     "videos": len(values), "dropped": dropped.get(dim, 0), "parse_failures": parse_failures.get(dim, 0)}
    avg = {"acc": sum(d["acc"] for d in dims.values()) / len(dims) if dims else 0.0,
           "score": sum(d["score"] for d in dims.values()) / len(dims) if dims else 0.0}
    return {"dimensions": dims, "avg": avg, "official_drop_zero": official_drop_zero}
