"""JSONL manifests: one record per video (see README, "Manifest format")."""
from __future__ import annotations

import json
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


class ManifestError(ValueError):
    pass


def read_manifest(path: str | Path, split: str | None = None) -> list[dict]:
    """Records of ``split`` (records without a ``split`` field count as 'train'), with absolute video paths."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (a JSONL file with one record per video; see README)")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{lineno}: a record must be a JSON object")
        video = record.get("video")
        if not isinstance(video, str) or not video:
            raise ManifestError(f"{path}:{lineno}: field 'video' (path to the video file) is missing or empty")
        for key, kind in (("caption", str), ("events", list), ("structure", list)):
            if key in record and not isinstance(record[key], kind):
                raise ManifestError(f"{path}:{lineno}: field '{key}' must be a {kind.__name__}")
        if split is not None and record.get("split", "train") != split:
            continue
        record = dict(record)
        record["video"] = str((path.parent / video).resolve()) if not Path(video).is_absolute() else video
        record.setdefault("id", Path(video).stem)
        records.append(record)
    return records


def records_from_videos(videos: list[str]) -> list[dict]:
    """Prediction inputs given as video files or folders of videos."""
    records = []
    for item in videos:
        p = Path(item)
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise ManifestError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under {p}")
        records += [{"id": f.stem, "video": str(f.resolve())} for f in files]
    return records
