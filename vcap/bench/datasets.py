"""Loaders for the official release formats of DREAM-1K, VDC and CaReBench.

Each returns records {id, video, prompt, reference, ...} ready for caption generation and scoring. Records are
validated as they are read (``vcap.bench.schema``): a bad one fails naming file:line and field. A missing or
partial copy fails with what was expected where and where the official release lives. The readers follow the
official ones: DREAM-1K keeps the first record per (dataset, idx) (Tarsier ``evaluation/evaluate.py``), VDC
the last QA list per repeated video id (AuroraCap ``post_eval/process_vdc_result.py``: ``dict.update``), and a
``null`` or absent event/object list means "extract it from the reference". ``notes`` (a dict, optional)
receives what was dropped or replaced, so results can say so.
"""
from __future__ import annotations

import ast
import json
import logging
import random
from pathlib import Path

from vcap.bench import schema
from vcap.errors import UsageError
from vcap.bench.vdc_prompts import VDC_PROMPTS
from vcap.quiet import warn_once

log = logging.getLogger(__name__)
DETAIL_PROMPT = "Describe the video in detail."
WHERE = {
    "dream1k": "https://huggingface.co/datasets/omni-research/DREAM-1K (json/metadata.json + video/video.zip), or "
               "data/annotations/DREAM-1k.jsonl in github.com/bytedance/tarsier",
    "vdc": "https://huggingface.co/datasets/wchai/Video-Detailed-Caption (VDCScore_qa/<dimension>.jsonl + videos)",
    "carebench": "https://huggingface.co/datasets/MCG-NJU/CaReBench (json/metadata.json + videos/videos.zip)",
}
VDC_DIMENSIONS = ("camera", "short", "background", "main_object", "detailed")


class BenchDataError(UsageError, FileNotFoundError):
    """A benchmark annotation file or video folder that is not where the options say."""


def _need(path: Path, what: str, bench: str) -> Path:
    if not path.exists():
        raise BenchDataError(f"{bench}: expected {what} at {path}, but it does not exist. "
                             f"The official release: {WHERE[bench]}")
    return path


def _check_videos(records: list[dict], bench: str, video_dir: Path) -> list[dict]:
    missing = [r["video"] for r in records if not Path(r["video"]).is_file()]
    if missing:
        raise BenchDataError(f"{bench}: {len(missing)} of {len(records)} videos are missing under {video_dir}, e.g. "
                             f"{', '.join(missing[:3])}. Unpack the videos from {WHERE[bench]} (or pass --limit "
                             "to evaluate a subset you have)")
    return records


def _hf_events(value, where: str) -> list[str] | None:
    """The HF card stores event lists as strings ("['a', 'b']"); None stays None (extract)."""
    if value is None or isinstance(value, list):
        return value
    try:
        parsed = json.loads(value) if value.strip().startswith('["') else ast.literal_eval(value.strip() or "[]")
    except (ValueError, SyntaxError) as err:
        raise schema.RecordError(f"{where}: events: not a list literal: {value[:80]!r}") from err
    if not isinstance(parsed, list):
        raise schema.RecordError(f"{where}: events: not a list: {value[:80]!r}")
    return [str(v) for v in parsed]


def load_dream1k(annotations: str | Path, video_dir: str | Path, limit: int | None = None,
                 notes: dict | None = None) -> list[dict]:
    """Tarsier's jsonl (messages or the older flat format) or the HF ``metadata.json``."""
    annotations, video_dir = Path(annotations), Path(video_dir)
    _need(annotations, "the annotation file (DREAM-1k.jsonl or metadata.json)", "dream1k")
    _need(video_dir, "the video folder", "dream1k")
    records, seen, duplicates = [], set(), []
    for where, row in schema.rows(annotations):
        if not isinstance(row, dict):
            raise schema.RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "messages" in row:  # Tarsier2 messages format: the reference is the assistant turn's 'reference' text
            rec = schema.validate(schema.DreamMessagesRecord, row, where)
            reference = "".join(c.reference for m in rec.messages if m.role == "assistant" for c in m.content
                                if c.type == "text" and c.reference)
            source, events, video = rec.dataset, rec.extra_info.events if rec.extra_info else None, f"{rec.vid}.mp4"
        elif "text" in row:  # older flat format
            rec = schema.validate(schema.DreamFlatRecord, row, where)
            reference, source, video = rec.text.response, rec.dataset, f"{rec.vid}.mp4"
            events = rec.extra_info.events if rec.extra_info else None
        else:  # HF metadata.json
            rec = schema.validate(schema.DreamHFRecord, row, where)
            reference, source, video = rec.description, rec.source, rec.video_file
            events = _hf_events(rec.events, where)
        key = f"{source}_{rec.idx}"  # the official reader's key: the first record per (dataset, idx) is kept
        if key in seen:
            duplicates.append(f"{where} ({key})")
            continue
        seen.add(key)
        records.append({"id": key, "video": str(video_dir / video), "source": source, "reference": reference,
                        "events": events, "prompt": DETAIL_PROMPT})
    if duplicates:
        warn_once(log, "dream1k: %d duplicate (dataset, idx) records skipped, as the official reader does: %s",
                  len(duplicates), ", ".join(duplicates[:5]))
    if notes is not None:
        notes["duplicate_records_skipped"] = duplicates
    records = records[:limit] if limit else records
    return _check_videos(records, "dream1k", video_dir)


def load_vdc(qa_dir: str | Path, video_dir: str | Path, dimensions: list[str] | tuple = VDC_DIMENSIONS,
             limit: int | None = None, seed: int = 0, prompts: dict[str, list[str]] | None = None,
             notes: dict | None = None) -> list[dict]:
    """One record per (video, dimension) from ``<qa_dir>/<dimension>.jsonl`` ({video_id: [qa, ...]} per line).

    Each record's prompt is drawn from the dimension's list with a fixed seed (reproducible). ``limit``
    keeps the first N videos (in sorted id order) across all dimensions.
    """
    qa_dir, video_dir = Path(qa_dir), Path(video_dir)
    prompts = prompts or VDC_PROMPTS
    missing_lists = [d for d in dimensions if not prompts.get(d)]
    if missing_lists:
        raise ValueError(f"vdc_prompts has no prompts for {missing_lists}; give a list for each of {list(dimensions)}")
    rng = random.Random(seed)
    per_dim: dict[str, dict[str, list]] = {}
    replaced: list[str] = []
    for dim in dimensions:
        path = _need(qa_dir / f"{dim}.jsonl", f"the {dim} QA file", "vdc")
        qas: dict[str, list] = {}
        for where, row in schema.rows(path):
            if not isinstance(row, dict):
                raise schema.RecordError(f"{where}: expected an object {{video_id: [qa, ...]}}")
            for vid, items in row.items():
                if not isinstance(items, list):
                    raise schema.RecordError(f"{where}: {vid}: expected a list of QA objects")
                for n, qa in enumerate(items):
                    schema.validate(schema.VDCQuestion, qa, f"{where}: {vid}[{n}]")
                if vid in qas:
                    replaced.append(f"{where} ({dim}/{vid})")
                qas[vid] = items  # the official script's dict.update: the last list of a repeated id wins
        per_dim[dim] = qas
    if notes is not None:
        notes["repeated_ids_replaced"] = replaced
    video_ids = sorted(set().union(*(set(q) for q in per_dim.values())))[: limit or None]
    records = []
    for vid in video_ids:
        video = next((video_dir / f"{vid}{ext}" for ext in (".mp4", ".MP4", ".mkv")
                      if (video_dir / f"{vid}{ext}").is_file()), video_dir / f"{vid}.mp4")
        for dim in dimensions:
            if vid in per_dim[dim]:
                records.append({"id": f"{vid}/{dim}", "video_id": vid, "video": str(video), "dimension": dim,
                                "prompt": rng.choice(prompts[dim]), "qa": per_dim[dim][vid]})
    return _check_videos(records, "vdc", video_dir)


def load_carebench(metadata: str | Path, video_dir: str | Path, limit: int | None = None,
                   notes: dict | None = None) -> list[dict]:
    """The HF ``metadata.json`` array: video, caption (+ spatial/temporal captions, events/objects when present)."""
    metadata, video_dir = Path(metadata), Path(video_dir)
    _need(metadata, "metadata.json", "carebench")
    _need(video_dir, "the video folder", "carebench")
    records = []
    for where, row in schema.rows(metadata):
        rec = schema.validate(schema.CareBenchRecord, row, where)
        # null or absent lists are extracted from the caption by the judge (the official isinstance(list) test)
        records.append({"id": Path(rec.video).stem, "video": str(video_dir / rec.video), "source": "overall",
                        "reference": rec.caption, "events": rec.events, "objects": rec.objects,
                        "category": rec.category, "prompt": DETAIL_PROMPT})
    records = records[:limit] if limit else records
    return _check_videos(records, "carebench", video_dir)
