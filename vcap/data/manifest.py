"""JSONL manifests: one record per video (see README, "Manifest format"), validated when loaded.

Every record is checked against ``ManifestRecord`` (unknown fields are errors, with a did-you-mean), so a typo
fails at startup naming ``file:line: field``, not halfway through training.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vcap.errors import UsageError
from vcap.textfiles import read_utf8

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
SPLITS = ("train", "val")
ANNOTATED_FIELDS = ("events", "structure")  # what `vcap annotate` can fill from a caption
REFERENCE_FIELDS = {"events": "caption", "structure": "think"}  # reference lists -> the reward they are checked by
EMPTY_MEANS = {"events": "the caption reward would find every event covered and score any caption 1",
               "structure": "the think reward would have nothing to recall (an empty think block scores 1)"}
ALLOW_EMPTY_FLAG = "--data.init_args.allow_empty_references true"


class ManifestError(UsageError):
    pass


class SubjectRecord(BaseModel):
    """One entry of ``structure``: a subject with its attributes and actions."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1)
    attributes: list[str] = []
    actions: list[str] = []


class QARecord(BaseModel):
    """One entry of ``qa``: a multiple-choice question about the video, for the QA reward."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    answer: str

    @model_validator(mode="after")
    def _answer_is_an_option(self):
        if len(set(self.options)) != len(self.options):
            raise ValueError("options must differ from each other")
        if self.answer not in self.options:
            raise ValueError(f"answer {self.answer!r} is not one of the options")
        return self


class ManifestRecord(BaseModel):
    """One manifest line. Only ``video`` is required; which other fields a run needs depends on its recipe."""

    model_config = ConfigDict(extra="forbid")
    video: str = Field(min_length=1)  # relative to the manifest's folder, or absolute
    id: str | None = None  # default: the video's file name without suffix
    split: Literal["train", "val"] = "train"
    caption: str | None = None  # reference caption (SFT target, precision side of the caption metric)
    structure: list[SubjectRecord] | None = None  # ground-truth subjects (think reward, SFT target)
    events: list[str] | None = None  # ground-truth event sentences (caption reward)
    sft_caption: str | None = None  # SFT target caption when it differs from the ground truth (e.g. it omits things)
    sft_structure: list[SubjectRecord] | None = None  # SFT think target when it differs from ``structure``
    qa: list[QARecord] | None = None  # multiple-choice questions about the video (QA reward; vcap annotate --fields qa)
    prompt: str | None = None  # overrides the data module's prompt for this video
    seed: int | None = None  # generator seed of a synthetic clip (provenance only)
    meta: dict[str, Any] | None = None  # anything of your own; vcap ignores it


PLAIN_TYPES = {"list_type": "must be a list", "string_type": "must be a string", "dict_type": "must be an object",
               "int_type": "must be an integer", "int_parsing": "must be an integer",
               "string_too_short": "must not be empty"}


def _field_name(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def describe_problem(error: dict) -> str:
    """One pydantic error as ``field 'x': what is wrong``, with a did-you-mean for unknown fields and splits."""
    loc = tuple(error["loc"])
    name = _field_name(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = SubjectRecord if loc[0] in ("structure", "sft_structure") else ManifestRecord
        valid = list(model.model_fields)
        return f"unknown field '{name}'{_did_you_mean(loc[-1], valid)} (valid: {', '.join(valid)})"
    if kind == "missing":
        what = " (path to the video file)" if loc == ("video",) else ""
        return f"field '{name}'{what} is missing"
    if kind == "literal_error" and loc == ("split",):
        return (f"field 'split': {error['input']!r} is not one of {', '.join(map(repr, SPLITS))}"
                f"{_did_you_mean(error['input'], list(SPLITS))}")
    if loc[:1] == ("structure",) and len(loc) <= 2 and kind in ("list_type", "dict_type", "model_type"):
        return (f"field '{name}' must be {'a subject' if len(loc) == 2 else 'a list of subjects'}: "
                '{"subject": ..., "attributes": [...], "actions": [...]}')
    what = PLAIN_TYPES.get(kind, error["msg"][:1].lower() + error["msg"][1:])
    return f"field '{name}' {what} (got {error['input']!r:.60})"


def _needs_message(path: Path, lines: list[int], field: str, needed_by: str, total: int) -> str:
    count = f" (and in {len(lines) - 1} more of the {total} records)" if len(lines) > 1 else ""
    text = f"{path}:{lines[0]}: field '{field}' is missing{count}; {needed_by} needs it"
    if field in ANNOTATED_FIELDS:
        out = path.with_name(path.stem + ".annotated.jsonl")
        text += (f". Fill events/structure from the captions with `vcap annotate --input {path} --output {out}`"
                 " (a judge extracts them), then train on the annotated manifest")
    return text


def _empty_message(path: Path, empty: list[tuple[int, str]]) -> str:
    (lineno, field), more = empty[0], len(empty) - 1
    reward = REFERENCE_FIELDS[field]
    return (f"{path}:{lineno}: field '{field}' is empty" + (f" (and {more} more in this file)" if more else "")
            + f"; {EMPTY_MEANS[field]}. Give the "
            f"record its {field} (`vcap annotate --overwrite true` fills them from the caption), or pass {ALLOW_EMPTY_FLAG} "
            f"to keep such records: their {reward} reward is then n/a, counted in train/{reward}_no_reference")


def read_manifest(path: str | Path, split: str | None = None, require: dict[str, str] | None = None,
                  flag: str = "--data.init_args.manifest", allow_empty_references: bool = False) -> list[dict]:
    """Records of ``split`` (records without ``split`` are 'train'), with absolute video paths.

    Every line is validated, whatever its split. ``require`` maps fields the run needs to who needs them
    (checked on the records returned). ``flag`` names the option that gave ``path``, for the not-found error.
    ``events: []`` or ``structure: []`` is an error unless ``allow_empty_references``: an empty reference list
    would satisfy its reward whatever the completion says.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (set {flag} to a JSONL file with one record per video; "
                            "see README, 'Manifest format')")
    entries, problems, missing, lines, empty = [], [], {}, 0, []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        lines += 1
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{path}:{lineno}: a record must be a JSON object, got {type(raw).__name__}")
            continue
        try:
            record = ManifestRecord.model_validate(raw)
        except ValidationError as err:
            errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains a gap
            problems += [f"{path}:{lineno}: {describe_problem(e)}" for e in errors]
            continue
        empty += [(lineno, f) for f in REFERENCE_FIELDS if getattr(record, f) == [] and not allow_empty_references]
        out = dict(raw)
        video = record.video
        out["video"] = video if Path(video).is_absolute() else str((path.parent / video).resolve())
        entries.append((lineno, record, out))
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) in this file)" if len(problems) > 1 else ""
        raise ManifestError(problems[0] + more)
    if not lines:
        raise ManifestError(f"manifest {path} is empty: write one JSON object per line, one per video "
                            "(see README, 'Manifest format')")
    if empty:
        raise ManifestError(_empty_message(path, empty))
    assign_ids(path, entries)
    records = []
    for lineno, record, out in entries:
        if split is not None and record.split != split:
            continue
        for field in require or {}:
            if getattr(record, field) is None:
                missing.setdefault(field, []).append(lineno)
        records.append(out)
    if missing:
        field, lines_missing = next(iter(missing.items()))
        raise ManifestError(_needs_message(path, lines_missing, field, require[field], len(records)))
    return records


def unique_ids(videos: list[Path], root: Path | None = None) -> list[str]:
    """The file name without suffix, or, where two different files share it (``a/clip.mp4``, ``b/clip.mp4``),
    their path (relative to ``root`` when inside it) without suffix, so ids never collide."""
    stems: dict[str, set[Path]] = {}
    for video in videos:
        stems.setdefault(video.stem, set()).add(video)
    ids = []
    for video in videos:
        if len(stems[video.stem]) == 1:
            ids.append(video.stem)
            continue
        name = video.with_suffix("")
        if root is not None and name.is_relative_to(root):
            name = name.relative_to(root)
        ids.append(name.as_posix())
    return ids


def assign_ids(path: Path, entries: list[tuple[int, ManifestRecord, dict]]) -> None:
    """Default ids (``unique_ids``) for records without one; an id given twice for different videos is an error."""
    defaults = iter(unique_ids([Path(out["video"]) for _, record, out in entries if record.id is None],
                               path.parent.resolve()))
    seen: dict[str, tuple[int, str]] = {}
    for lineno, record, out in entries:
        if record.id is None:
            out["id"] = next(defaults)
        first = seen.setdefault(out["id"], (lineno, out["video"]))
        if first[1] != out["video"]:
            raise ManifestError(f"{path}:{lineno}: id {out['id']!r} is already the id of line {first[0]} (another "
                                "video); give each video its own id")


def records_from_videos(videos: list[str]) -> list[dict]:
    """Prediction inputs given as video files or folders of videos."""
    records = []
    for item in videos:
        p = Path(item)
        if not p.exists():
            raise ManifestError(f"--data.init_args.predict_videos: {p} does not exist (give video files, folders of "
                                "videos, or one .jsonl manifest)")
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise ManifestError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under {p}")
        records += [{"video": str(f.resolve())} for f in files]
    videos = [Path(r["video"]) for r in records]
    root = Path(os.path.commonpath(videos)) if videos else None
    return [{"id": id_, **r} for id_, r in zip(unique_ids(videos, root), records)]
