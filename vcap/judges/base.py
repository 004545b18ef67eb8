"""Judge contract and registry. Backends answer whole batches so remote ones can run them concurrently."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

VERDICTS = ("entailment", "neutral", "contradiction")


@dataclass
class EntailmentResult:
    verdicts: list[str] | None  # one of VERDICTS per hypothesis; None when the judge failed
    error: str | None = None

    @property
    def entailed(self) -> list[bool] | None:
        return None if self.verdicts is None else [v == "entailment" for v in self.verdicts]


@dataclass
class ExtractionResult:
    items: list[str] | None
    error: str | None = None


class Judge:
    name = "judge"

    def describe(self) -> dict[str, Any]:
        """What produced a score: written next to every number."""
        return {"backend": self.name}

    def entail_many(self, requests: list[tuple[str, list[str]]]) -> list[EntailmentResult]:
        """For each (premise, hypotheses): does the premise entail each hypothesis?"""
        raise NotImplementedError

    def extract_events(self, texts: list[str]) -> list[ExtractionResult]:
        raise NotImplementedError


JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    def wrap(cls):
        cls.name = name
        JUDGES[name] = cls
        return cls
    return wrap


def build_judge(name: str, **options: Any) -> Judge:
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; valid: {sorted(JUDGES)}")
    try:
        return JUDGES[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for judge {name!r}: {err}") from err
