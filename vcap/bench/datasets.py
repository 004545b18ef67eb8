"""Loaders for the official release formats of DREAM-1K, VDC and CaReBench.

Each returns records {id, video, prompt, reference, ...} ready for caption generation and scoring. A
missing or partial copy fails with what was expected where and where the official release lives.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

DETAIL_PROMPT = "Describe the video in detail."
WHERE = {
    "dream1k": "https://huggingface.co/datasets/omni-research/DREAM-1K (json/metadata.json + video/video.zip), or "
               "data/annotations/DREAM-1k.jsonl in github.com/bytedance/tarsier",
    "vdc": "https://huggingface.co/datasets/wchai/Video-Detailed-Caption (VDCScore_qa/<dimension>.jsonl + videos)",
    "carebench": "https://huggingface.co/datasets/MCG-NJU/CaReBench (json/metadata.json + videos/videos.zip)",
}
VDC_DIMENSIONS = ("camera", "short", "background", "main_object", "detailed")
# Our own wording of the five VDC caption requests; pass prompt lists of your own (e.g. the official ones).
VDC_PROMPTS = {
    "camera": ["Describe the camera work in this video: shot types, camera movement and changes of angle.",
               "How is this video filmed? Summarise the framing, the camera motion and any cuts."],
    "short": ["Summarise the video in one sentence.", "Give a one-sentence summary of what happens in the video."],
    "background": ["Describe the background of the video: the setting, objects, place, weather and time of day.",
                   "What does the scene around the main subjects look like? Describe the environment in detail."],
    "main_object": ["Describe the main subject of the video: its appearance, its actions and how it moves.",
                    "Focus on the most important subject: what does it look like and what does it do over time?"],
    "detailed": ["Describe the video in detail, in more than three sentences, covering subjects, actions, "
                 "setting and camera.", "Write a faithful, detailed description of everything in this video."],
}


class BenchDataError(FileNotFoundError):
    pass


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


def _events(value) -> list[str]:
    """Event lists arrive as lists or as JSON/Python-literal strings (the HF card types every field as str)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            import ast
            value = ast.literal_eval(text)
    return [str(v) for v in value]


def _read_json_or_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []


def load_dream1k(annotations: str | Path, video_dir: str | Path, limit: int | None = None) -> list[dict]:
    """Tarsier's jsonl (messages or the older flat format) or the HF ``metadata.json``."""
    annotations, video_dir = Path(annotations), Path(video_dir)
    _need(annotations, "the annotation file (DREAM-1k.jsonl or metadata.json)", "dream1k")
    _need(video_dir, "the video folder", "dream1k")
    records = []
    for i, row in enumerate(_read_json_or_jsonl(annotations)):
        try:
            if "messages" in row:  # Tarsier2 messages format
                reference = row["messages"][1]["content"][0]["reference"]
                video = video_dir / f"{row['vid']}.mp4"
                source, extra = row["dataset"], row.get("extra_info", {})
            elif "text" in row:  # older flat format
                reference, source, extra = row["text"]["response"], row["dataset"], row.get("extra_info", {})
                video = video_dir / f"{row['vid']}.mp4"
            else:  # HF metadata.json
                reference, source, extra = row["description"], row["source"], row
                video = video_dir / row["video_file"]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{annotations}: record {i} is not in a DREAM-1K format (missing {err})") from err
        records.append({"id": str(row.get("idx", row.get("vid", i))), "video": str(video), "source": source,
                        "reference": reference, "events": _events(extra.get("events")), "prompt": DETAIL_PROMPT})
    records = records[:limit] if limit else records
    return _check_videos(records, "dream1k", video_dir)


def load_vdc(qa_dir: str | Path, video_dir: str | Path, dimensions: list[str] | tuple = VDC_DIMENSIONS,
             limit: int | None = None, seed: int = 0, prompts: dict[str, list[str]] | None = None) -> list[dict]:
    """One record per (video, dimension) from ``<qa_dir>/<dimension>.jsonl`` ({video_id: [qa, ...]} per line).

    Each record's prompt is drawn from the dimension's list with a fixed seed (reproducible). ``limit``
    keeps the first N videos (in sorted id order) across all dimensions.
    """
    qa_dir, video_dir = Path(qa_dir), Path(video_dir)
    prompts = prompts or VDC_PROMPTS
    rng = random.Random(seed)
    per_dim: dict[str, dict[str, list]] = {}
    for dim in dimensions:
        path = _need(qa_dir / f"{dim}.jsonl", f"the {dim} QA file", "vdc")
        qas: dict[str, list] = {}
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected an object {{video_id: [qa, ...]}}")
                for vid, items in row.items():
                    qas.setdefault(vid, items)  # the official files repeat a few ids; the first copy wins
        per_dim[dim] = qas
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


def load_carebench(metadata: str | Path, video_dir: str | Path, limit: int | None = None) -> list[dict]:
    """The HF ``metadata.json`` array: video, caption (+ spatial/temporal captions, events/objects when present)."""
    metadata, video_dir = Path(metadata), Path(video_dir)
    _need(metadata, "metadata.json", "carebench")
    _need(video_dir, "the video folder", "carebench")
    records = []
    for i, row in enumerate(_read_json_or_jsonl(metadata)):
        if "video" not in row or "caption" not in row:
            raise ValueError(f"{metadata}: record {i} lacks 'video' or 'caption'")
        records.append({"id": Path(row["video"]).stem, "video": str(video_dir / row["video"]), "source": "overall",
                        "reference": row["caption"], "events": _events(row["events"]) if "events" in row else None,
                        "objects": _events(row["objects"]) if "objects" in row else None,
                        "category": row.get("category"), "prompt": DETAIL_PROMPT})
    records = records[:limit] if limit else records
    return _check_videos(records, "carebench", video_dir)
