"""``LLMJudge``: prompts, de-duplication, the reply cache and parse re-asks for any chat-completion backend.

A backend implements ``complete(requests) -> list[str | Exception]`` for a whole batch of requests (each a list
of chat messages plus sampling settings), or ``stream(requests, on_reply)`` to hand over each reply the moment
it arrives. Every reply is written to the cache as it arrives, keyed by (model, messages, sampling, attempt),
so a run killed in the middle of a concurrent batch pays for none of its answered calls again, and a resumed
run replays exactly the replies (good or bad) the first run got.

Two protocols (see ``vcap.judges.prompts``): ``robust`` (tolerant parsing, ``1 + parse_retries`` tries, re-asks
at ``retry_temperature``, at most ``max_events`` extracted items) and ``official`` (the official scripts' parsers,
10 tries, no item cap, and the sampling settings the benchmark code passes).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from vcap.judges.base import EntailmentResult, ExtractionResult, Judge, JudgeUnavailableError, RatingResult
from vcap.judges.cache import ReplyCache, cache_key
from vcap.judges.llm_text import (ReplyCountError, ReplyError, official_grade, official_items, official_verdicts, parse_answer,
                                  parse_choice, parse_grade, parse_items, parse_questions, parse_json_object, parse_rating,
                                  parse_verdicts)
from vcap.judges.prompts import load_prompts
from vcap.judges.schemas import reply_schema
from vcap.rewards.parsing import subjects_from_json

log = logging.getLogger(__name__)
OFFICIAL_ATTEMPTS = 10  # the official DREAM/CaReBench loops: max_retry=10 per call


@dataclass
class Job:
    """One judge call: messages, the parser of its reply, sampling settings and how many tries it gets."""
    messages: list[dict]
    parse: Callable[[str], Any]
    sampling: dict = field(default_factory=dict)
    attempts: int = 1
    retry_sampling: dict | None = None  # sampling of re-asks (None: the same as the first ask)
    retry_errors: bool = False  # does a transport error (after the SDK's retries) cost a try or end the job
    fatal: tuple = ()  # ReplyError subclasses that end the job at once, without another try
    distinct: bool = False  # official: a repeated request is a call of its own (the official code asks it again)

    def key(self) -> str:
        return repr((self.messages, sorted(self.sampling.items())))


class LLMJudge(Judge):
    def __init__(self, model: str, temperature: float = 0.0, max_tokens: int = 512, parse_retries: int = 2,
                 cache: str | None = "judge_cache.sqlite", prompt_file: str | None = None, max_events: int = 10,
                 retry_temperature: float = 0.7, max_consecutive_failures: int = 5):
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0  # calls in a row without any reply (the circuit breaker's count)
        self.tripped: JudgeUnavailableError | None = None  # the breaker's error, once it has tripped
        self.answered_by: Counter[str] = Counter()  # parsed answers by who gave them (a judge, or the cache)
        self.parse_retries, self.max_events, self.retry_temperature = parse_retries, max_events, retry_temperature
        self.prompt_sets = load_prompts(prompt_file)
        self.cache = ReplyCache(cache) if cache else None
        self.calls = 0  # requests actually sent to the backend (cache misses and re-asks)
        self.failures = 0
        self.structured_output = False  # backends that can constrain replies to a JSON schema switch this on
        self._occurrences: dict[str, int] = {}  # how often each distinct request was asked in this run

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "temperature": self.temperature}

    # -- backend contract ------------------------------------------------------------------------------------
    def complete(self, requests: list[tuple[list[dict], dict]]) -> list[str | Exception]:
        """One reply (or the exception that replaced it) per (messages, sampling)."""
        raise NotImplementedError

    def stream(self, requests: list[tuple[list[dict], dict]], on_reply: Callable[[int, str | Exception], None]) -> None:
        """Calls ``on_reply(index, reply)`` as each reply arrives (default: after the whole batch)."""
        for i, reply in enumerate(self.complete(requests)):
            on_reply(i, reply)

    # -- asking ------------------------------------------------------------------------------------------------
    def robust_sampling(self) -> tuple[dict, dict]:
        first = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        return first, {**first, "temperature": max(self.temperature, self.retry_temperature)}

    def ask(self, jobs: list[Job]) -> list[tuple[Any, str | None]]:
        """(parsed value, None) or (None, error) per job. Identical jobs are asked once, except ``distinct`` ones:
        the n-th repeat of a request in this run is its own call, cached under its own key (a re-run replays the
        same numbering, so it still pays nothing twice). A reply is parsed the moment it arrives and cached only if
        it parsed: a failed judgment is asked again by the next run."""
        unique: dict[tuple[str, int], Job] = {}
        job_keys = []
        for job in jobs:
            key = (job.key(), 0)
            if job.distinct:
                key = (key[0], self._occurrences.get(key[0], 0))
                self._occurrences[key[0]] = key[1] + 1
            job_keys.append(key)
            unique.setdefault(key, job)
        answers: dict[tuple[str, int], tuple[Any, str | None]] = {}
        pending = list(unique)
        attempt = 0
        while pending:
            sampling = {k: (unique[k].sampling if attempt == 0 or unique[k].retry_sampling is None
                            else unique[k].retry_sampling) for k in pending}
            cache_keys = {k: cache_key(model=self.model, messages=unique[k].messages, sampling=sampling[k],
                                       attempt=attempt, **({"occurrence": k[1]} if k[1] else {})) for k in pending}
            outcome: dict[tuple[str, int], tuple[str, Any]] = {}  # ("ok", value) | ("transport" | "parse", error)
            to_send = []
            for k in pending:
                cached = self.cache.get(cache_keys[k]) if self.cache is not None else None
                value = self._parse(unique[k], cached[0]) if cached is not None else None
                if isinstance(value, ReplyError):  # written by an older vcap that cached failures: ask again
                    self.cache.delete(cache_keys[k])
                if cached is None or isinstance(value, ReplyError):
                    to_send.append(k)
                else:
                    outcome[k] = ("ok", value)
                    self.answered_by[f"cache ({cached[1] or 'judge not recorded'})"] += 1
            if to_send:
                self.calls += len(to_send)

                def on_reply(i: int, reply: str | Exception, to_send=to_send) -> None:
                    k = to_send[i]
                    if isinstance(reply, Exception):  # transport failure after the SDK's own retries
                        outcome[k] = ("transport", f"{type(reply).__name__}: {reply}")
                        self._count_transport_failure(reply)
                        return
                    self.consecutive_failures = 0
                    value = self._parse(unique[k], reply)
                    if isinstance(value, ReplyError):
                        outcome[k] = ("parse", value)
                        return
                    outcome[k] = ("ok", value)
                    self.answered_by[self.source()] += 1
                    if self.cache is not None:  # at once: a kill mid-batch loses no answer
                        self.cache.put(cache_keys[k], reply, self.source())

                self.stream([(unique[k].messages, sampling[k]) for k in to_send], on_reply)
            retry = []
            for k in pending:
                kind, value = outcome[k]
                job = unique[k]
                if kind == "ok":
                    answers[k] = (value, None)
                    continue
                if kind == "transport":
                    answers[k] = (None, value)
                    if not job.retry_errors:
                        continue
                else:
                    answers[k] = (None, f"unparseable reply after {attempt + 1} tries: {value}")
                    if isinstance(value, job.fatal):
                        continue
                if attempt + 1 < job.attempts:
                    retry.append(k)
            pending, attempt = retry, attempt + 1
        errors = [error for _, error in answers.values() if error]
        if errors:
            self.failures += len(errors)
            log.warning("judge %s: %d of %d calls failed, e.g. %s", self.where(), len(errors), len(answers),
                        errors[0][:300])
        return [answers[key] for key in job_keys]

    @staticmethod
    def _parse(job: Job, reply: str) -> Any:
        """The parsed reply, or the ReplyError that says why it does not parse."""
        try:
            return job.parse(reply)
        except ReplyError as err:
            return err

    def _count_transport_failure(self, error: Exception) -> None:
        """The circuit breaker: ``max_consecutive_failures`` calls in a row that got no reply at all (after the
        client's own retries) stop the run instead of scoring every completion as failed for hours."""
        if self.tripped is not None:  # concurrent calls failing after the trip report the same error
            raise self.tripped
        self.consecutive_failures += 1
        limit = self.max_consecutive_failures
        if limit and self.consecutive_failures >= limit:
            self.tripped = JudgeUnavailableError(
                f"judge {self.where()} failed {self.consecutive_failures} calls in a row (last: "
                f"{type(error).__name__}: {str(error)[:200]}); check that the server is up and answering, or raise "
                "judge_options.max_consecutive_failures (0: never stop)")
            raise self.tripped

    def source(self) -> str:
        """Which judge answers: kept with every cached reply and counted in ``answered_by``."""
        return f"{self.name} {self.model}"

    def where(self) -> str:
        """The judge as a log line names it."""
        return self.source()

    def _job(self, protocol: str, name: str, parse, sampling: dict | None = None, attempts: int = OFFICIAL_ATTEMPTS,
             **values) -> Job:
        template = self.prompt_sets[protocol][name]
        if protocol == "official":  # any failed try (transport or parse) is tried again, as the official loops do
            return Job(template.messages(**values), parse, dict(sampling or {}), attempts, retry_errors=True,
                       distinct=True)
        first, retry = self.robust_sampling()
        schema = reply_schema(name, values.get("count"), values.get("max_items")) if self.structured_output else None
        if schema is not None:  # the backend turns it into the server's response_format
            first, retry = {**first, "json_schema": schema}, {**retry, "json_schema": schema}
        return Job(template.messages(**values), parse, first, 1 + self.parse_retries, retry)

    def reply_key(self, protocol: str, name: str) -> str | None:
        return self.prompt_sets[protocol][name].reply_key

    # -- robust API (rewards, annotate, protocol: robust) --------------------------------------------------------
    def entail_many(self, requests):
        jobs = [self._job("robust", "entailment", lambda reply, n=len(h): parse_verdicts(reply, n),
                          premise=p, hypotheses=list(h), count=len(h)) for p, h in requests]
        return [EntailmentResult(v, e) for v, e in self.ask(jobs)]

    def extract_events(self, texts):
        return self.extract(texts, "events")

    def extract_objects(self, texts):
        return self.extract(texts, "objects")

    def extract(self, texts: list[str], kind: str, protocol: str = "robust", sampling: dict | None = None):
        """Items of ``kind`` ('events' or 'objects') described by each text."""
        name = f"extract_{kind}"
        if protocol == "official":
            key = self.reply_key(protocol, name)
            jobs = [self._job(protocol, name, lambda reply: official_items(reply, key), sampling, text=t,
                              max_items=10) for t in texts]
        else:
            jobs = [self._job(protocol, name, lambda reply: parse_items(reply, kind)[: self.max_events], text=t,
                              max_items=self.max_events) for t in texts]
        return [ExtractionResult(v, e) for v, e in self.ask(jobs)]

    def entail(self, requests: list[tuple[str, list[str], str]], kind: str, protocol: str = "robust",
               sampling: dict | None = None, one_shot_errors: bool = False) -> list[EntailmentResult]:
        """For each (premise, items, stand-in): the verdict of each item. Under ``official`` an empty item list
        is still asked, with ``stand-in`` (the text the items came from) as the single item, and scores 1.
        ``one_shot_errors``: a wrong entry count or a transport failure ends the call without another try, as
        in CaReBench's loop (its ``logger.error(..., flush=True)`` raises TypeError on those paths)."""
        if protocol != "official":
            return self.entail_many([(p, h) for p, h, _ in requests])
        name = f"entail_{kind}"
        key = self.reply_key(protocol, name)
        jobs = []
        for premise, items, stand_in in requests:
            sent = list(items) if items else [stand_in.lower().replace("\n", " ")]
            job = self._job(protocol, name, lambda reply, n=len(items): official_verdicts(reply, key, n),
                            sampling, premise=premise, hypotheses=sent, count=len(sent))
            if one_shot_errors:
                job.retry_errors, job.fatal = False, (ReplyCountError,)
            jobs.append(job)
        return [EntailmentResult(v, e) for v, e in self.ask(jobs)]

    def answer_questions(self, texts: list[str], questions: list[str], protocol: str = "robust",
                         sampling: dict | None = None) -> list[tuple[str | None, str | None]]:
        """(answer, error) for each question, answered from its text alone (VDC's first step). Officially the
        raw reply is the answer."""
        parse = (lambda reply: reply) if protocol == "official" else parse_answer
        # the official VDC script asks each step once: any failure skips the video
        return self.ask([self._job(protocol, "answer_question", parse, sampling, 1, text=t, question=q)
                         for t, q in zip(texts, questions)])

    def answer_choices(self, requests):
        """(option index, error) for each (text, question, options), answered from the text alone."""
        jobs = [self._job("robust", "answer_choice", lambda reply, n=len(o): parse_choice(reply, n), text=t,
                          question=q, options="\n".join(f"{chr(65 + k)}. {opt}" for k, opt in enumerate(o)),
                          count=len(o)) for t, q, o in requests]
        return self.ask(jobs)

    def make_questions(self, texts, count):
        jobs = [self._job("robust", "make_questions", lambda reply: parse_questions(reply, count), text=t, count=count)
                for t in texts]
        return [ExtractionResult(v, e) for v, e in self.ask(jobs)]

    def grade_answers(self, questions: list[str], answers: list[str], predictions: list[str],
                      protocol: str = "robust", sampling: dict | None = None):
        """((pred, 0-5), error) for each predicted answer against the correct one (VDC's second step)."""
        parse = official_grade if protocol == "official" else parse_grade
        return self.ask([self._job(protocol, "grade_answer", parse, sampling, 1, question=q, answer=a, prediction=p)
                         for q, a, p in zip(questions, answers, predictions)])

    def rate(self, texts, references):
        jobs = [self._job("robust", "rate", parse_rating, text=t, reference=r) for t, r in zip(texts, references)]
        return [RatingResult(*(v or (None, None)), error=e) for v, e in self.ask(jobs)]

    def extract_structure(self, texts):
        def parse(reply):
            try:
                return [s.to_json() for s in subjects_from_json(parse_json_object(reply))]
            except ValueError as err:
                raise ReplyError(str(err)) from err
        return [ExtractionResult(v, e) for v, e in self.ask([self._job("robust", "extract_structure", parse, text=t)
                                                              for t in texts])]
