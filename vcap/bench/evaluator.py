"""``BenchEvaluator``: caches generations as they are made, then runs the judge phase and writes results.

Layout of ``output_dir``: ``made_by.json`` (the model, its weights' fingerprint and every setting that shapes a
caption: outputs are reused only by a run with exactly these), ``generations.jsonl`` (one line per generated
caption, appended at once, so a killed run resumes without regenerating), ``judge_cache.sqlite`` (every answered
judge call, keyed by the request), ``records.jsonl`` (captions, think blocks, extracted items and every verdict)
and ``results.json``. Without an ``output_dir`` each model and settings get a folder of their own under
``runs/bench/<bench>/``; a run holds a lock on its folder while it writes there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vcap.bench.judging import OFFICIAL_SAMPLING, PROTOCOLS, judge_autodq, judge_vdc, scored_caption
from vcap.bench.scoring import AutoDQSample, VDCVideo, autodq, vdcscore
from vcap.errors import ServiceError
from vcap.judges import build_judge
from vcap.judges.llm import LLMJudge
from vcap.provenance import OutputFolder, digest, slug
from vcap.textfiles import json_safe, write_json, write_text_atomic

KINDS = {"dream1k": ("events",), "carebench": ("events", "objects"), "vdc": ()}
OUTPUTS = ("generations.jsonl", "records.jsonl", "results.json")  # made for one identity (made_by.json)


def input_digest(record: dict) -> str:
    """What a record's caption was made from besides the folder's identity: its video and its own prompt."""
    return digest({"video": str(record["video"]), "prompt": record.get("prompt")})[:16]


def check_protocol(bench: str, protocol: str, official_drop_zero: bool | None) -> bool:
    """The effective ``official_drop_zero``; clear errors for settings that mean nothing."""
    if bench not in KINDS:
        raise ValueError(f"unknown benchmark {bench!r}; valid: {sorted(KINDS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    if bench != "vdc":
        if official_drop_zero is not None:
            raise ValueError(f"official_drop_zero is a VDC setting (the VDC script drops zero-score videos); it "
                             f"means nothing for {bench}: remove it")
        return False
    return protocol == "official" if official_drop_zero is None else official_drop_zero


class BenchEvaluator:
    """``output_dir``: the folder of this run's outputs; with ``per_model`` it is a parent, and ``open`` picks
    ``<output_dir>/<model>-<identity hash>`` (the judge cache stays in the parent: its replies are keyed by the
    request). Generations are read only once ``open`` has checked who made them."""

    def __init__(self, bench: str, output_dir: str | Path, judge: str, judge_options: dict | None = None,
                 count_neutral: bool = False, official_drop_zero: bool | None = None, settings: dict | None = None,
                 judge_batch: int = 64, protocol: str = "official", notes: dict | None = None,
                 per_model: bool = False):
        self.official_drop_zero = check_protocol(bench, protocol, official_drop_zero)
        self.bench, self.out, self.protocol = bench, Path(output_dir), protocol
        self.per_model = per_model
        self.out.mkdir(parents=True, exist_ok=True)
        options = {"cache": str(self.out / "judge_cache.sqlite"), **(judge_options or {})}
        self.judge = build_judge(judge, **options)
        if protocol == "official" and not isinstance(self.judge, LLMJudge):
            raise ValueError(f"protocol 'official' needs an LLM judge ('openai' or 'hf'); judge {judge!r} has no "
                             "prompts. Use protocol: robust with it")
        self.count_neutral = count_neutral
        self.settings = settings or {}
        self.notes = notes if notes is not None else {}
        self.judge_batch = judge_batch
        self.made_by: dict | None = None
        self.folder: OutputFolder | None = None
        self.generations: dict[tuple[str, str], str] = {}  # (id, input digest) -> completion

    def open(self, key: dict, about: dict | None = None, writer: bool = True, on_mismatch: str = "stop") -> None:
        """Bind the outputs to the identity ``key`` (model, weights, settings). The writer (rank 0) locks the folder
        and checks ``made_by.json``: outputs of another identity stop the run with one line (``on_mismatch``
        'stop') or are made again ('replace'). Then the generations kept for this identity are read."""
        if self.per_model:
            self.out = self.out / f"{slug(key.get('model', 'model'))}-{digest(key)[:8]}"
        if writer:
            self.folder = OutputFolder(self.out)
            self.folder.open(key, about, on_mismatch, OUTPUTS)
        self.made_by = {"key": key, "about": about or {}}
        self.per_model = False  # a second open (the periodic benchmark) keeps the folder it got
        self.generations = self._load_generations()

    def close(self) -> None:
        if self.folder is not None:
            self.folder.release()

    def _load_generations(self) -> dict[tuple[str, str], str]:
        path = self.out / "generations.jsonl"
        done = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: generated again
                done[(row["id"], row.get("input", ""))] = row["completion"]
        return done

    def _opened(self) -> None:
        if self.made_by is None:
            raise RuntimeError("BenchEvaluator.open(identity) must come before its generations are used")

    def caption(self, record: dict) -> str | None:
        """The kept caption of ``record``, made from its current video and prompt, or None."""
        return self.generations.get((record["id"], input_digest(record)))

    def missing(self, records: list[dict]) -> list[int]:
        self._opened()
        return [i for i, r in enumerate(records) if self.caption(r) is None]

    def add(self, records: list[dict], completions: list[str]) -> None:
        self._opened()
        with open(self.out / "generations.jsonl", "a") as f:
            for r, text in zip(records, completions):
                self.generations[(r["id"], input_digest(r))] = text
                f.write(json.dumps({"id": r["id"], "input": input_digest(r), "completion": text},
                                   ensure_ascii=False) + "\n")

    def bad_videos(self, records: list[dict]) -> list[dict]:
        """Records that never got a caption: their video could not be decoded (the data loader skipped it)."""
        from vcap.data.video import BadVideoError, FrameSampling, decode_frames

        out = []
        for r in records:
            if self.caption(r) is not None:
                continue
            try:
                decode_frames(r["video"], FrameSampling(fps=None, nframes=2))
                error = "no caption was generated for it (see the log)"
            except BadVideoError as err:
                error = str(err)
            out.append({"id": r["id"], "video": r["video"], "source": r.get("source", r.get("dimension")),
                        "error": error})
        return out

    def finish(self, records: list[dict], model: str) -> dict:
        """Judge every record's caption, aggregate, and write records.jsonl, results.json and the table."""
        bad = self.bad_videos(records)
        bad_ids = {b["id"] for b in bad}
        bad_records = [r for r in records if r["id"] in bad_ids]
        self._opened()
        records = [r for r in records if self.caption(r) is not None]
        parts = [scored_caption(self.caption(r)) for r in records]
        captions = [p[0] for p in parts]
        started = time.time()
        details = [{"id": r["id"], "completion": self.caption(r), "caption": c, "think": t}
                   for r, (c, t) in zip(records, parts)]
        judge = self.judge.describe()
        if self.protocol == "official":  # official requests carry the benchmark's sampling, not the judge's own
            judge.pop("temperature", None)
        results = {"benchmark": self.bench, "protocol": self.protocol, "model": model, "samples": len(records),
                   "judge": judge, "settings": self.settings, "made_by": self.made_by, "bad_videos": bad,
                   **self.notes}
        if self.protocol == "official":
            results["judge_sampling"] = OFFICIAL_SAMPLING[self.bench]
        kinds = KINDS[self.bench]
        videos: list[VDCVideo] = []
        samples: dict[str, list[AutoDQSample]] = {kind: [] for kind in kinds}
        official = self.protocol == "official"
        with Progress(TextColumn("judging ({task.fields[protocol]})"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task("judge", total=len(records), protocol=self.protocol)
            for start in range(0, len(records), self.judge_batch):  # chunks keep the bar moving
                chunk = slice(start, start + self.judge_batch)
                if self.bench == "vdc":
                    judged, items = judge_vdc(records[chunk], captions[chunk], self.judge, self.protocol,
                                              OFFICIAL_SAMPLING["vdc"])
                    videos += items
                else:
                    judged, by_kind = judge_autodq(records[chunk], captions[chunk], self.judge, kinds, self.protocol,
                                                   OFFICIAL_SAMPLING[self.bench], carebench=self.bench == "carebench")
                    for kind in kinds:
                        samples[kind] += by_kind[kind]
                for d, j in zip(details[chunk], judged):
                    d.update({k: v for k, v in j.items() if k != "id"})
                progress.advance(task, len(judged))
        # a bad video is a failed sample of its source (VDC: a skipped video of its dimension), never silent
        if self.bench == "vdc":
            videos += [VDCVideo(r["dimension"], r["video_id"], error="bad video") for r in bad_records]
            results["vdcscore"] = vdcscore(videos, self.official_drop_zero, nan_empty=official)
        else:
            for kind in kinds:
                samples[kind] += [AutoDQSample(r.get("source", "overall"), None, None, failed=True)
                                  for r in bad_records]
                results[kind] = {**autodq(samples[kind], self.count_neutral, nan_f1=official),
                                 "failed_by_source": _failed_by_source(samples[kind]),
                                 "count_neutral": self.count_neutral}
        results["judge_seconds"] = round(time.time() - started, 2)
        results["judge_calls"] = getattr(self.judge, "calls", None)  # sent by this run (cache misses, re-asks)
        results["judge_answers"] = dict(getattr(self.judge, "answered_by", {}))  # who gave each answer used
        details += [{"id": b["id"], "bad_video": b["error"]} for b in bad]
        write_text_atomic(self.out / "records.jsonl",
                          "".join(json.dumps(json_safe(d), ensure_ascii=False) + "\n" for d in details))
        write_json(self.out / "results.json", results)
        self.print_table(results)
        return results

    def check_scored(self, results: dict) -> None:
        """Raise when not one sample could be scored (every judgment failed, or every video was bad): a table of
        failures must not pass for a result. results.json is already written; failed calls are asked again."""
        if self.bench == "vdc":
            scored = sum(d["videos"] for d in results["vdcscore"]["dimensions"].values())
        else:
            scored = sum(results[kind]["overall"]["success"] for kind in KINDS[self.bench])
        total = results["samples"] + len(results["bad_videos"])
        if scored or not total:
            return
        first = next(iter(_errors(self.out / "records.jsonl")), "see records.jsonl")
        raise NothingScoredError(f"{self.bench}: no sample could be scored ({total} failed, e.g. {first[:200]}); "
                                 f"failures are in {self.out / 'records.jsonl'}. Check the judge "
                                 f"({self.judge.describe().get('base_url', self.judge.name)}); a run started again "
                                 "asks every failed call again")

    def print_table(self, results: dict) -> None:
        judge = results["judge"]
        caption = (f"protocol: {results['protocol']} · judge: {judge.get('backend')} {judge.get('model', '')} "
                   f"· {len({b['video'] for b in results['bad_videos']})} bad video(s) · -> {self.out / 'results.json'}")
        table = Table(title=f"{self.bench} — {results['model']} ({results['samples']} samples)", caption=caption)
        if self.bench == "vdc":
            scores = results["vdcscore"]
            for col in ("dimension", "acc", "score", "videos", "dropped", "skipped", "parse failures"):
                table.add_column(col, justify="left" if col == "dimension" else "right")
            for dim, v in scores["dimensions"].items():
                table.add_row(dim, _number(v["acc"]), _number(v["score"]), str(v["videos"]), str(v["dropped"]),
                              str(v["skipped"]), str(v["parse_failures"]))
            table.add_row("Avg", _number(scores["avg"]["acc"]), _number(scores["avg"]["score"]), "", "", "", "")
        else:
            for col in ("kind", "source", "F1", "P", "R", "success", "failed"):
                table.add_column(col, justify="left" if col in ("kind", "source") else "right")
            for kind in KINDS[self.bench]:
                res = results[kind]
                names = sorted(set(res["sources"]) | set(res["failed_by_source"]))
                rows = [] if names == ["overall"] else [(n, res["sources"].get(n), res["failed_by_source"].get(n, 0))
                                                        for n in names]  # CaReBench: one group, one row
                for name, v, failed in [*rows, ("overall", res["overall"], res["failed"])]:
                    values = [_number(100 * v[k], 1) for k in ("f1", "precision", "recall")] if v else ["-"] * 3
                    table.add_row(kind, name, *values, str(v["success"] if v else 0), str(failed))
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


class NothingScoredError(ServiceError):
    """A benchmark run in which every sample failed."""


def _errors(records_path: Path):
    """The failure messages of records.jsonl, first to last."""
    for line in records_path.read_text().splitlines():
        row = json.loads(line)
        if row.get("bad_video"):
            yield f"bad video {row['id']}: {row['bad_video']}"
        if row.get("error"):
            yield str(row["error"])
        for value in row.values():
            if isinstance(value, dict):
                yield from map(str, value.get("errors") or [])


def _number(value: float, digits: int = 2) -> str:
    """A table cell: 'n/a' where nothing could be scored (NaN), never a 0 that nothing backs."""
    return "n/a" if value != value else f"{value:.{digits}f}"


def _failed_by_source(samples: list[AutoDQSample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        if s.failed:
            out[s.source] = out.get(s.source, 0) + 1
    return out
