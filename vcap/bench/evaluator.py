"""``BenchEvaluator``: caches generations as they are made, then runs the judge phase and writes results.

Layout of ``output_dir``: ``generations.jsonl`` (one line per generated caption, appended at once, so a killed
run resumes without regenerating), ``judge_cache.sqlite`` (every answered judge call), ``records.jsonl``
(captions, think blocks, extracted items and every verdict) and ``results.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vcap.bench.judging import judge_autodq, judge_vdc, scored_caption
from vcap.bench.scoring import autodq, vdcscore
from vcap.judges import build_judge

KINDS = {"dream1k": ("events",), "carebench": ("events", "objects"), "vdc": ()}


class BenchEvaluator:
    def __init__(self, bench: str, output_dir: str | Path, judge: str, judge_options: dict | None = None,
                 count_neutral: bool = False, official_drop_zero: bool = False, settings: dict | None = None,
                 judge_batch: int = 64):
        if bench not in KINDS:
            raise ValueError(f"unknown benchmark {bench!r}; valid: {sorted(KINDS)}")
        self.bench, self.out = bench, Path(output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        options = {"cache": str(self.out / "judge_cache.sqlite"), **(judge_options or {})}
        self.judge = build_judge(judge, **options)
        self.count_neutral, self.official_drop_zero = count_neutral, official_drop_zero
        self.settings = settings or {}
        self.judge_batch = judge_batch
        self.generations = self._load_generations()

    def _load_generations(self) -> dict[str, str]:
        path = self.out / "generations.jsonl"
        done = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: generated again
                done[row["id"]] = row["completion"]
        return done

    def missing(self, records: list[dict]) -> list[int]:
        return [i for i, r in enumerate(records) if r["id"] not in self.generations]

    def add(self, records: list[dict], completions: list[str]) -> None:
        with open(self.out / "generations.jsonl", "a") as f:
            for r, text in zip(records, completions):
                self.generations[r["id"]] = text
                f.write(json.dumps({"id": r["id"], "completion": text}, ensure_ascii=False) + "\n")

    def finish(self, records: list[dict], model: str) -> dict:
        """Judge every record's caption, aggregate, and write records.jsonl, results.json and the table."""
        records = [r for r in records if r["id"] in self.generations]
        parts = [scored_caption(self.generations[r["id"]]) for r in records]
        captions = [p[0] for p in parts]
        started = time.time()
        details = [{"id": r["id"], "completion": self.generations[r["id"]], "caption": c, "think": t}
                   for r, (c, t) in zip(records, parts)]
        results = {"benchmark": self.bench, "model": model, "samples": len(records), "judge": self.judge.describe(),
                   "settings": self.settings}
        phases = ["vdc"] if self.bench == "vdc" else list(KINDS[self.bench])
        collected: dict[str, list] = {phase: [] for phase in phases}
        with Progress(TextColumn("judging {task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task("judge", total=len(records) * len(phases), phase="")
            for phase in phases:  # chunks keep the bar moving; calls inside a chunk run concurrently
                progress.update(task, phase=phase)
                for start in range(0, len(records), self.judge_batch):
                    chunk = slice(start, start + self.judge_batch)
                    if phase == "vdc":
                        judged, items = judge_vdc(records[chunk], captions[chunk], self.judge)
                    else:
                        judged, items = judge_autodq(records[chunk], captions[chunk], self.judge, phase)
                    for d, j in zip(details[chunk], judged):
                        if phase == "vdc":
                            d.update(j)
                        else:
                            d[phase] = j
                    collected[phase] += items
                    progress.advance(task, len(judged))
        if self.bench == "vdc":
            results["vdcscore"] = vdcscore(collected["vdc"], self.official_drop_zero)
        else:
            for kind in phases:
                results[kind] = {**autodq(collected[kind], self.count_neutral), "count_neutral": self.count_neutral}
        results["judge_seconds"] = round(time.time() - started, 2)
        results["judge_calls"] = getattr(self.judge, "calls", None)
        (self.out / "records.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details))
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        self.print_table(results)
        return results

    def print_table(self, results: dict) -> None:
        judge = results["judge"]
        table = Table(title=f"{self.bench} — {results['model']} ({results['samples']} samples)",
                      caption=f"judge: {judge.get('backend')} {judge.get('model', '')} "
                              f"temperature={judge.get('temperature', '-')} -> {self.out / 'results.json'}")
        if self.bench == "vdc":
            scores = results["vdcscore"]
            for col in ("dimension", "acc", "score", "videos", "dropped", "parse failures"):
                table.add_column(col, justify="left" if col == "dimension" else "right")
            for dim, v in scores["dimensions"].items():
                table.add_row(dim, f"{v['acc']:.2f}", f"{v['score']:.2f}", str(v["videos"]), str(v["dropped"]),
                              str(v["parse_failures"]))
            table.add_row("Avg", f"{scores['avg']['acc']:.2f}", f"{scores['avg']['score']:.2f}", "", "", "")
        else:
            for col in ("kind", "source", "F1", "P", "R", "success", "failed"):
                table.add_column(col, justify="left" if col in ("kind", "source") else "right")
            for kind in KINDS[self.bench]:
                res = results[kind]
                for name, v in [*res["sources"].items(), ("overall", res["overall"])]:
                    table.add_row(kind, name, *(f"{100 * v[k]:.1f}" for k in ("f1", "precision", "recall")),
                                  str(v["success"]), str(res["failed"]) if name == "overall" else "")
        Console().print(table)

    def metrics(self, results: dict) -> dict[str, float]:
        """Flat numbers for the logger / validation report."""
        if self.bench == "vdc":
            flat = {"vdc/avg_acc": results["vdcscore"]["avg"]["acc"], "vdc/avg_score": results["vdcscore"]["avg"]["score"]}
            for dim, v in results["vdcscore"]["dimensions"].items():
                flat[f"vdc/{dim}_acc"] = v["acc"]
            return flat
        flat = {}
        for kind in KINDS[self.bench]:
            for key in ("f1", "precision", "recall"):
                flat[f"{self.bench}/{kind}_{key}"] = 100 * results[kind]["overall"][key]
            flat[f"{self.bench}/{kind}_failed"] = float(results[kind]["failed"])
        return flat
