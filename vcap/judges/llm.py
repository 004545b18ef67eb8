"""``LLMJudge``: prompts, de-duplication, the reply cache and parse re-asks for any text-completion backend.

A backend implements ``complete(prompts) -> list[str | Exception]`` for a whole batch at once (concurrent
HTTP calls, or one batched ``generate``). Everything else — and so the judging behaviour — is shared.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from vcap.judges.base import EntailmentResult, ExtractionResult, Judge, RatingResult
from vcap.judges.cache import ReplyCache, cache_key
from vcap.judges.llm_text import (ReplyError, load_prompts, parse_answer, parse_grade, parse_items, parse_json_object,
                                  parse_rating, parse_verdicts)
from vcap.rewards.parsing import subjects_from_json

log = logging.getLogger(__name__)


class LLMJudge(Judge):
    def __init__(self, model: str, temperature: float = 0.0, max_tokens: int = 512, parse_retries: int = 2,
                 cache: str | None = "judge_cache.sqlite", prompt_file: str | None = None, max_events: int = 10):
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.parse_retries, self.max_events = parse_retries, max_events
        self.prompts = load_prompts(prompt_file)
        self.cache = ReplyCache(cache) if cache else None
        self.calls = 0  # prompts actually sent to the backend (cache misses and re-asks)
        self.failures = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "temperature": self.temperature}

    def complete(self, prompts: list[str]) -> list[str | Exception]:
        raise NotImplementedError

    def ask(self, jobs: list[tuple[str, Callable[[str], Any]]]) -> list[tuple[Any, str | None]]:
        """(parsed value, None) or (None, error) per (prompt, parser); identical prompts are asked once."""
        unique: dict[str, Callable[[str], Any]] = {}
        for prompt, parse in jobs:
            unique.setdefault(prompt, parse)
        params = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}
        keys = {p: cache_key(prompt=p, **params) for p in unique}
        answers: dict[str, tuple[Any, str | None]] = {}
        pending = []
        for prompt, parse in unique.items():
            cached = self.cache.get(keys[prompt]) if self.cache is not None else None
            try:
                if cached is not None:
                    answers[prompt] = (parse(cached), None)
                    continue
            except ReplyError:
                pass  # written by an older parser: ask again
            pending.append(prompt)
        for attempt in range(1 + self.parse_retries):
            if not pending:
                break
            self.calls += len(pending)
            retry = []
            for prompt, reply in zip(pending, self.complete(pending)):
                if isinstance(reply, Exception):  # transport failure: the backend already retried
                    answers[prompt] = (None, f"{type(reply).__name__}: {reply}")
                    continue
                try:
                    answers[prompt] = (unique[prompt](reply), None)
                except ReplyError as err:
                    answers[prompt] = (None, f"unparseable reply after {attempt + 1} tries: {err}")
                    retry.append(prompt)
                    continue
                if self.cache is not None:
                    self.cache.put(keys[prompt], reply)
            pending = retry
        for prompt, (_, error) in answers.items():
            if error:
                self.failures += 1
                log.warning("judge %s failed: %s", self.model, error)
        return [answers[p] for p, _ in jobs]

    def entail_many(self, requests):
        jobs = []
        for premise, hypotheses in requests:
            prompt = self.prompts["entailment"].format(premise=premise, count=len(hypotheses),
                                                       hypotheses=json.dumps(hypotheses, ensure_ascii=False))
            jobs.append((prompt, lambda reply, n=len(hypotheses): parse_verdicts(reply, n)))
        return [EntailmentResult(v, e) for v, e in self.ask(jobs)]

    def extract_events(self, texts):
        return self._extract(texts, "events")

    def extract_objects(self, texts):
        return self._extract(texts, "objects")

    def _extract(self, texts, kind: str):
        jobs = [(self.prompts[f"extract_{kind}"].format(text=t, max_items=self.max_events),
                 lambda reply: parse_items(reply, kind)[: self.max_events]) for t in texts]
        return [ExtractionResult(v, e) for v, e in self.ask(jobs)]

    def answer_questions(self, texts: list[str], questions: list[str]) -> list[tuple[str | None, str | None]]:
        """(answer, error) for each question, answered from its text alone (VDC's first step)."""
        return self.ask([(self.prompts["answer_question"].format(text=t, question=q), parse_answer)
                         for t, q in zip(texts, questions)])

    def grade_answers(self, questions: list[str], answers: list[str], predictions: list[str]):
        """((yes/no, 0-5), error) for each predicted answer against the correct one (VDC's second step)."""
        return self.ask([(self.prompts["grade_answer"].format(question=q, answer=a, prediction=p), parse_grade)
                         for q, a, p in zip(questions, answers, predictions)])

    def rate(self, texts, references):
        jobs = [(self.prompts["rate"].format(text=t, reference=r), parse_rating) for t, r in zip(texts, references)]
        return [RatingResult(*(v or (None, None)), error=e) for v, e in self.ask(jobs)]

    def extract_structure(self, texts):
        def parse(reply):
            try:
                return [s.to_json() for s in subjects_from_json(parse_json_object(reply))]
            except ValueError as err:
                raise ReplyError(str(err)) from err
        jobs = [(self.prompts["extract_structure"].format(text=t), parse) for t in texts]
        return [ExtractionResult(v, e) for v, e in self.ask(jobs)]
