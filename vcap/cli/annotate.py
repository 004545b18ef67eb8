"""``vcap annotate``: fill missing ``events`` / ``structure`` / ``qa`` of a manifest from its captions with a judge.

``qa`` (opt in: ``--fields '[events, structure, qa]'``) holds multiple-choice questions for the QA reward, written by
the judge from the caption and events and kept only when the caption answers them and a caption that says nothing
does not (``vcap.rewards.qa_questions``); the table counts those made, kept and dropped.

Resumable: every judge reply is cached on disk as it arrives, so a run killed or stopped with Ctrl-C and started
again re-pays nothing that was answered. Other fields and video paths are copied unchanged. The output is written
atomically at the end, with ``<output>.made_by.json`` naming the judge, the input (its SHA-256) and the fields; a
lock keeps two runs from writing one output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vcap.errors import ServiceError
from vcap.judges import build_judge
from vcap.errors import UsageError
from vcap.judges.base import Judge
from vcap.provenance import about_run, file_sha256, lock_output, write_made_by
from vcap.rewards.qa_questions import QuestionCounts, make_qa
from vcap.signals import Interrupted, raising_on_signals
from vcap.textfiles import read_utf8, write_text_atomic

FIELDS = ("events", "structure", "qa")  # filled in this order: questions are made from the caption and events
DEFAULT_FIELDS = ("events", "structure")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    records = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
    return records


def annotate(input: str, output: str, judge: str = "openai", judge_options: dict[str, Any] | None = None,
             fields: list[str] = list(DEFAULT_FIELDS), batch_size: int = 32, overwrite: bool = False,
             questions: int = 5) -> dict[str, int]:
    """Fill missing fields of each record from its ``caption``.

    Args:
        input: JSONL manifest (video + caption per line).
        output: where to write the annotated manifest (written atomically at the end).
        judge: judge backend ('openai' or 'hf'); judge_options: its options (model, base_url, cache, ...).
        fields: which of 'events', 'structure' and 'qa' to fill (qa: multiple-choice questions for the QA reward).
        batch_size: records per batch of judge calls (calls within a batch run concurrently).
        overwrite: re-annotate fields that are already present.
        questions: candidate questions the judge writes per record for 'qa' (those that pass the filter are kept).
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; valid: {list(FIELDS)}")
    if questions < 1:
        raise UsageError(f"--questions must be at least 1, got {questions}")
    fields = [f for f in FIELDS if f in fields]
    records = read_jsonl(Path(input))
    out = Path(output)
    lock = lock_output(out, "--output")  # held until the process ends: two runs never write one output
    backend = build_judge(judge, **(judge_options or {}))
    if "qa" in fields and type(backend).make_questions is Judge.make_questions:
        raise UsageError(f"--fields qa needs a judge that writes questions ('openai' or 'hf'), not {judge!r}")
    problem = backend.reachability_problem() if hasattr(backend, "reachability_problem") else None
    if problem:
        raise ServiceError(f"{problem}: start the server, or point --judge_options base_url at one that runs")
    counts = {"records": len(records), "no_caption": 0, **{f"{f}_present": 0 for f in fields},
              **{f"{f}_filled": 0 for f in fields}, **{f"{f}_failed": 0 for f in fields}}
    failed: list[str] = []
    todo = {f: [] for f in fields}
    for i, r in enumerate(records):
        if not isinstance(r.get("caption"), str) or not r["caption"].strip():
            counts["no_caption"] += 1
            continue
        for f in fields:
            if f in r and not overwrite:
                counts[f"{f}_present"] += 1
            else:
                todo[f].append(i)
    total = sum(len(v) for v in todo.values())
    try:
        with raising_on_signals():
            made = fill(records, todo, backend, batch_size, counts, failed, questions)
    except Interrupted as stop:
        done = sum(counts[f"{f}_{kind}"] for f in fields for kind in ("filled", "failed"))
        cache = getattr(getattr(backend, "cache", None), "path", None)
        kept = f"the answered calls are kept in {cache}: the same command continues from there" if cache else \
            "no reply cache was set, so a new run asks every call again"
        print(f"vcap annotate: {stop.args[0]}: stopped after {done} of {total} records' fields; nothing was written "
              f"to {out}; {kept}", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop.signum) from None
    if "qa" in fields:
        counts.update({f"qa_questions_{k}": getattr(made, k) for k in
                       ("made", "kept", "dropped_unanswered", "dropped_guessable", "dropped_failed")})
    counts["judge_calls"] = getattr(backend, "calls", 0)
    filled = sum(counts[f"{f}_filled"] for f in fields)
    if total and not filled:  # every call failed: nothing to write, and the exit status says so
        report(counts, failed, None)
        raise ServiceError(f"vcap annotate: no record could be annotated ({len(failed)} failed, e.g. "
                           f"{failed[0][:200]}); nothing was written to {out}. Check the judge "
                           f"({backend.describe().get('base_url', backend.name)}); failed calls are asked again "
                           "when you run it again")
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_made_by(out, {"judge": backend.describe(), "input": str(Path(input).resolve()),
                        "input_sha256": file_sha256(Path(input)), "fields": list(fields), "overwrite": overwrite,
                        **({"questions": questions} if "qa" in fields else {})},
                  about_run(counts=counts))
    report(counts, failed, out, dict(getattr(backend, "answered_by", {})))
    lock.release()
    return counts


def fill(records: list[dict], todo: dict[str, list[int]], backend, batch_size: int, counts: dict[str, int],
         failed: list[str], questions: int = 5) -> QuestionCounts:
    """Ask the judge for each field of each record in ``todo``, batch by batch, with a progress bar."""
    made = QuestionCounts()

    extract = {"events": lambda idx: backend.extract_events([records[i]["caption"] for i in idx]),
               "structure": lambda idx: backend.extract_structure([records[i]["caption"] for i in idx]),
               "qa": lambda idx: make_qa(backend, [records[i] for i in idx], questions, made)}
    with Progress(TextColumn("annotate {task.fields[field]}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as progress:
        task = progress.add_task("annotate", total=sum(len(v) for v in todo.values()), field="")
        for f, indices in todo.items():
            progress.update(task, field=f)
            for start in range(0, len(indices), batch_size):
                idx = indices[start:start + batch_size]
                for i, result in zip(idx, extract[f](idx)):
                    if result.items is None:
                        counts[f"{f}_failed"] += 1
                        failed.append(f"{records[i].get('id', records[i].get('video', i))}: {f}: {result.error}")
                    else:
                        records[i][f] = result.items
                        counts[f"{f}_filled"] += 1
                progress.advance(task, len(idx))
    return made


def report(counts: dict[str, int], failed: list[str], out: Path | None, answered_by: dict[str, int] | None = None
           ) -> None:
    console = Console(stderr=True)
    table = Table(title=f"vcap annotate -> {out or 'nothing written'}")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        table.add_row(key, str(value))
    for source, n in (answered_by or {}).items():  # provenance: this run's judge, or the cache and who filled it
        table.add_row(f"answered by {source}", str(n))
    console.print(table)
    for line in failed[:20]:
        console.print(f"[red]failed[/red] {line}")
    if len(failed) > 20:
        console.print(f"... and {len(failed) - 20} more failures; run again to retry them (answered calls are cached)")


def main(args: list[str]) -> None:
    from jsonargparse import CLI

    CLI(annotate, args=args, as_positional=False)
