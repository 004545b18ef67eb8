"""Assertions that make a comparison test able to fail: numbers compared for equality must carry information."""
from __future__ import annotations

import math


def numeric_leaves(value, prefix: str = "") -> dict[str, float]:
    """Every number inside nested dicts/lists, keyed by its path (bools are not numbers here)."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numeric_leaves(item, f"{prefix}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numeric_leaves(item, f"{prefix}[{i}]").items()}
    return {}


def assert_informative(value, min_distinct: int = 2) -> dict[str, float]:
    """All numbers finite, some non-zero, and at least ``min_distinct`` distinct non-zero values.

    Two runs whose results are all 0 (e.g. a scripted judge that entails nothing) compare equal whatever the code
    does; call this on the first result before asserting the second equals it.
    """
    numbers = numeric_leaves(value)
    assert numbers, "no numbers to compare"
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, f"non-finite numbers: {bad}"
    nonzero = {round(v, 12) for v in numbers.values() if v != 0}
    assert len(nonzero) >= min_distinct, (
        f"only {len(nonzero)} distinct non-zero number(s) in {numbers}: an equality check on these cannot fail")
    return numbers
