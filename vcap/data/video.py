"""Frame decoding with decord and qwen-vl-utils-style frame sampling."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcap.errors import UsageError

FRAME_FACTOR = 2  # Qwen2-VL packs 2 frames per temporal patch


class BadVideoError(UsageError, RuntimeError):
    """A video that is missing, unreadable or empty; the message names the file (a RuntimeError too, as before)."""


@dataclass(frozen=True)
class FrameSampling:
    fps: float | None = 2.0
    nframes: int | None = None
    min_frames: int = 4
    max_frames: int = 32

    def __post_init__(self):
        if self.fps is None and self.nframes is None:
            raise ValueError("set either fps or nframes for frame sampling")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames={self.min_frames} > max_frames={self.max_frames}")

    def count(self, total_frames: int, video_fps: float) -> int:
        if self.nframes is not None:
            wanted = self.nframes
        else:
            duration = total_frames / max(video_fps, 1e-6)
            wanted = min(max(duration * self.fps, self.min_frames), self.max_frames)
        wanted = max(FRAME_FACTOR, int(round(wanted / FRAME_FACTOR)) * FRAME_FACTOR)
        return wanted

    def indices(self, total_frames: int, video_fps: float) -> np.ndarray:
        """Uniform indices over the clip, first and last frame included; repeats frames of short clips."""
        n = self.count(total_frames, video_fps)
        return np.linspace(0, total_frames - 1, n).round().astype(np.int64)


def video_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a video, from the file system alone (no decoding): None when it may be one."""
    path = Path(path)
    if path.is_dir():
        return f"video is a folder, not a file: {path}"
    if not path.exists():
        return f"video not found: {path}"
    if not path.is_file():
        return f"video is not a regular file: {path}"
    if path.stat().st_size == 0:
        return f"video is empty (0 bytes): {path}"
    return None


def decode_frames(path: str | Path, sampling: FrameSampling) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 frames and the source fps; BadVideoError naming the file on any failure."""
    frames, metadata = decode_clip(path, sampling)
    return frames, metadata["fps"]


def decode_clip(path: str | Path, sampling: FrameSampling) -> tuple[np.ndarray, dict]:
    """``decode_frames`` plus the metadata processors use for timing (Qwen2.5-VL's second_per_grid_ts,
    Qwen3-VL's frame timestamps): source ``fps``, ``total_num_frames`` and the sampled ``frames_indices``."""
    import decord

    from vcap.quiet import c_output_silenced

    path = Path(path)
    problem = video_problem(path)
    if problem:
        raise BadVideoError(problem)
    try:
        with c_output_silenced():
            reader = decord.VideoReader(str(path), num_threads=1)
            total = len(reader)
            if total == 0:
                raise BadVideoError(f"video has no frames: {path}")
            video_fps = float(reader.get_avg_fps() or 0.0) or 1.0
            indices = sampling.indices(total, video_fps).tolist()
            frames = reader.get_batch(indices).asnumpy()
    except BadVideoError:
        raise
    except Exception as err:  # decord raises its own DECORDError and RuntimeErrors
        reason = (str(err).strip().splitlines() or ["no reason given"])[0][:200]
        raise BadVideoError(f"cannot decode video {path}: {type(err).__name__}: {reason}") from err
    if frames.ndim != 4 or frames.shape[0] == 0 or math.prod(frames.shape) == 0:
        raise BadVideoError(f"video decoded to an empty array: {path}")
    return frames, {"fps": video_fps, "total_num_frames": total, "frames_indices": indices}
