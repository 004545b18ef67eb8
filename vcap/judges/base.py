"""Judge contract and registry. Backends answer whole batches so remote ones can run them concurrently."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcap.errors import ServiceError
from vcap.registry import Registry

VERDICTS = ("entailment", "neutral", "contradiction")


class JudgeUnavailableError(ServiceError):
    """Too many judge calls in a row got no reply: the message names the judge's URL."""


@dataclass
class EntailmentResult:
    verdicts: list[str] | None  # one of VERDICTS per hypothesis; None when the judge failed
    error: str | None = None

    @property
    def entailed(self) -> list[bool] | None:
        return None if self.verdicts is None else [v == "entailment" for v in self.verdicts]


@dataclass
class ExtractionResult:
    items: list | None
    error: str | None = None


@dataclass
class RatingResult:
    completeness: float | None  # 0-10
    naturalness: float | None  # 0-10
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

    def entail_nonempty(self, requests: list[tuple[str, list[str]]]) -> list[tuple[list[bool] | None, str | None]]:
        """(hits, error) per request; an empty hypothesis list needs no call and gives ([], None)."""
        todo = [k for k, (_, hyps) in enumerate(requests) if hyps]
        out: list[tuple[list[bool] | None, str | None]] = [([], None) for _ in requests]
        for k, result in zip(todo, self.entail_many([requests[k] for k in todo])):
            out[k] = (result.entailed, result.error)
        return out

    def answer_choices(self, requests: list[tuple[str, str, list[str]]]) -> list[tuple[int | None, str | None]]:
        """For each (text, question, options): (index of the option the text supports, None), or (None, error).
        The last option says the text does not tell (``vcap.rewards.qa.UNANSWERABLE``)."""
        raise NotImplementedError(f"judge '{self.name}' cannot answer multiple-choice questions; use 'lexical' "
                                  "(offline, templated captions) or an LLM judge ('openai' or 'hf')")

    def make_questions(self, texts: list[str], count: int) -> list[ExtractionResult]:
        """Up to ``count`` multiple-choice questions ({question, options, answer}) that each text answers."""
        raise NotImplementedError(f"judge '{self.name}' cannot write questions; use an LLM judge ('openai' or 'hf')")

    def rate(self, texts: list[str], references: list[str]) -> list[RatingResult]:
        """Completeness and naturalness of each text against its reference, 0-10 each."""
        raise NotImplementedError(f"judge '{self.name}' cannot rate captions; use an LLM judge ('openai' or 'hf')")

    def extract_structure(self, texts: list[str]) -> list[ExtractionResult]:
        """Subjects with attributes and actions (as JSON-able dicts) described by each text."""
        raise NotImplementedError(f"judge '{self.name}' cannot extract structure; use an LLM judge ('openai' or 'hf')")


JUDGES = Registry("judge")
register_judge = JUDGES.register


def build_judge(name: str, **options: Any) -> Judge:
    return JUDGES.build(name, **options)
