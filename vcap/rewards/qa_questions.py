"""Questions for the QA reward, made by a judge from a record's reference (``vcap annotate --fields '[qa]'``).

The judge writes ``count`` candidate multiple-choice questions per record from its caption and events. A candidate
is kept only if the judge, answering from the text alone with shuffled options and "does not say" offered, gets it
right from the reference caption on at least ``KEEP_FROM_REFERENCE`` of ``ASKS`` asks, and from a caption that says
nothing about the video (``BLANK``) on at most ``KEEP_FROM_BLANK`` of ``ASKS``: the text-only form of CapRL's filter
(accuracy with the visual > 0.75, without it < 0.25). A question the reference does not answer would punish a right
caption; one a blank caption answers would pay a guess.
"""
from __future__ import annotations

from dataclasses import dataclass

from vcap.judges.base import ExtractionResult
from vcap.rewards.qa import plan_asks

ASKS = 4
KEEP_FROM_REFERENCE = 3
KEEP_FROM_BLANK = 1
BLANK = "A video."


def reference_text(record: dict) -> str:
    """What the questions are made from: the caption, and the events when the record has them."""
    events = record.get("events") or []
    return record["caption"].strip() + ("\nEvents: " + "; ".join(events) if events else "")


@dataclass
class QuestionCounts:
    made: int = 0
    kept: int = 0
    dropped_unanswered: int = 0  # the reference caption did not answer it on enough asks
    dropped_guessable: int = 0  # a caption that says nothing answered it too often
    dropped_failed: int = 0  # the judge failed on one of its asks


def make_qa(judge, records: list[dict], count: int, counts: QuestionCounts) -> list[ExtractionResult]:
    """For each record, its kept questions (possibly none) as ``items``, or the judge's error when it could not
    write any."""
    made = judge.make_questions([reference_text(r) for r in records], count)
    requests, owners = [], []
    for k, (record, result) in enumerate(zip(records, made)):
        if result.items is None:
            continue
        counts.made += len(result.items)
        for j, item in enumerate(result.items):
            for text, which in ((record["caption"], "reference"), (BLANK, "blank")):
                for ask in plan_asks([item], ASKS, 0, f"{record.get('id', k)}/{j}/{which}", text):
                    requests.append((text, item["question"], list(ask.options)))
                    owners.append((k, j, which, ask.answer))
    answers = judge.answer_choices(requests) if requests else []
    right: dict[tuple[int, int], dict[str, int]] = {}
    failed: set[tuple[int, int]] = set()
    for (k, j, which, answer), (choice, _error) in zip(owners, answers):
        tally = right.setdefault((k, j), {"reference": 0, "blank": 0})
        if choice is None:
            failed.add((k, j))
        tally[which] += choice == answer
    out: list[ExtractionResult] = []
    for k, result in enumerate(made):
        if result.items is None:
            out.append(result)
            continue
        kept = []
        for j, item in enumerate(result.items):
            tally = right.get((k, j), {"reference": 0, "blank": 0})
            if (k, j) in failed:
                counts.dropped_failed += 1
            elif tally["reference"] < KEEP_FROM_REFERENCE:
                counts.dropped_unanswered += 1
            elif tally["blank"] > KEEP_FROM_BLANK:
                counts.dropped_guessable += 1
            else:
                kept.append(item)
        counts.kept += len(kept)
        out.append(ExtractionResult(kept, None))
    return out
