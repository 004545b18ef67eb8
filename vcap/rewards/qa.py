"""Caption-to-QA reward (after CapRL): a text-only judge answers multiple-choice questions about the video from the
caption alone; the reward is the share answered right.

A record carries ``qa: [{question, options, answer}]`` (``answer`` is one of ``options``). Each completion gets
``asks`` questions drawn with replacement from its record's list; on each ask the options are shuffled and a fixed
last option, ``UNANSWERABLE``, is offered, so a caption that does not say cannot score by luck as easily as with the
options alone. What is asked is a pure function of (``seed``, record id, caption text): a resumed run, whose
completions are the same, asks exactly the same questions in the same order, and the same caption of the same record
always gets the same score. An answer the judge gives that names no option is a judge failure (n/a, never wrong); a
record without questions scores n/a (``no_reference``), never 1.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from vcap.errors import UsageError
from vcap.judges import build_judge
from vcap.rewards.base import Reward, RewardOutput, register_reward

UNANSWERABLE = "The caption does not say."


@dataclass(frozen=True)
class Ask:
    question: int  # index into the record's qa list
    options: tuple[str, ...]  # shuffled options, UNANSWERABLE last
    answer: int  # index of the right option in ``options``


def check_qa(record: dict) -> list[dict]:
    """The record's ``qa`` list, checked: one line naming the record and the entry on a malformed one."""
    qa = record.get("qa") or []
    where = f"record {record.get('id', record.get('video', '?'))}"
    if not isinstance(qa, list):
        raise UsageError(f"{where}: 'qa' must be a list of {{question, options, answer}}, got {type(qa).__name__}")
    for k, item in enumerate(qa):
        ok = isinstance(item, dict) and isinstance(item.get("question"), str) and item["question"].strip()
        options = item.get("options") if isinstance(item, dict) else None
        if not ok or not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise UsageError(f"{where}: qa[{k}] needs a question and at least 2 string options")
        if len(set(options)) != len(options) or UNANSWERABLE in options:
            raise UsageError(f"{where}: qa[{k}] options must differ from each other and from {UNANSWERABLE!r}")
        if item.get("answer") not in options:
            raise UsageError(f"{where}: qa[{k}] answer {item.get('answer')!r} is not one of its options")
    return qa


def plan_asks(qa: list[dict], asks: int, seed: int, record_id: str, caption: str) -> list[Ask]:
    """``asks`` questions drawn with replacement, each with its options shuffled and UNANSWERABLE appended."""
    key = hashlib.blake2b(f"{seed}\x00{record_id}\x00{caption}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(key, "big"))
    out = []
    for _ in range(asks):
        q = rng.randrange(len(qa))
        options, answer = shuffled_choices(qa[q], rng)
        out.append(Ask(q, tuple(options), answer))
    return out


def shuffled_choices(item: dict, rng: random.Random) -> tuple[list[str], int]:
    """A question's options shuffled by ``rng`` with ``UNANSWERABLE`` appended, and the right option's index."""
    options = list(item["options"])
    rng.shuffle(options)
    return [*options, UNANSWERABLE], options.index(item["answer"])


@register_reward("qa")
class QAReward(Reward):
    """Args:
        judge / judge_options: the judge that answers from the caption ('lexical' offline, 'openai', 'hf').
        asks: questions asked per completion (with replacement).
        on_failure: 'zero' scores a completion with a failed answer 0; 'exclude' drops it from its group.
        seed: mixed into what is asked (with the record id and the caption).
    """

    def __init__(self, judge: str = "lexical", judge_options: dict | None = None, asks: int = 8,
                 on_failure: str = "zero", seed: int = 0):
        if asks < 1:
            raise ValueError(f"reward_options.qa.asks must be at least 1, got {asks}")
        if on_failure not in ("zero", "exclude"):
            raise ValueError(f"reward_options.qa.on_failure must be 'zero' or 'exclude', got {on_failure!r}")
        self.judge = build_judge(judge, **(judge_options or {}))
        self.asks, self.on_failure, self.seed = asks, on_failure, seed

    def score(self, parsed, samples) -> RewardOutput:
        n = len(parsed)
        scores, unanswerable = torch.zeros(n), torch.zeros(n)
        failed = torch.zeros(n, dtype=torch.bool)
        qas = [check_qa(s) for s in samples]
        no_reference = torch.tensor([not qa for qa in qas], dtype=torch.bool)
        failures = [(i, "no <answer> block") for i, p in enumerate(parsed) if p.answer is None and qas[i]]
        todo = [i for i, p in enumerate(parsed) if p.answer is not None and qas[i]]
        plans = {i: plan_asks(qas[i], self.asks, self.seed, str(samples[i].get("id", i)), parsed[i].answer)
                 for i in todo}
        requests = [(parsed[i].answer, qas[i][a.question]["question"], list(a.options)) for i in todo for a in plans[i]]
        replies = iter(self.judge.answer_choices(requests) if requests else [])
        for i in todo:
            picked = [next(replies) for _ in plans[i]]
            errors = [e for choice, e in picked if choice is None]
            if errors:
                failures.append((i, f"judge failed: {errors[0]}"))
                failed[i] = True
                continue
            scores[i] = sum(c == a.answer for (c, _), a in zip(picked, plans[i])) / len(plans[i])
            unanswerable[i] = sum(c == len(a.options) - 1 for (c, _), a in zip(picked, plans[i])) / len(plans[i])
        unknown = no_reference | failed
        components = {"accuracy": scores.masked_fill(unknown, float("nan")),
                      "unanswerable": unanswerable.masked_fill(unknown, float("nan"))}
        excluded = failed if self.on_failure == "exclude" else torch.zeros(n, dtype=torch.bool)
        return RewardOutput(scores, components, failures, excluded, failed, no_reference)
