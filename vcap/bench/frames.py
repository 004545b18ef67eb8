"""CaReBench's frame sampling: the middle frame of each of N equal segments (``MCG-NJU/CaReBench:utils/video.py``,
``sample='middle'``), so vcap's 32 frames are the official script's 32 frames."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vcap.data.video import FrameSampling


def segment_middle_indices(num_frames: int, total_frames: int) -> list[int]:
    """Split [0, total) at ``linspace(0, total, n + 1)`` (truncated to int), take ``(start + end - 1) // 2`` of
    each segment; a clip shorter than ``num_frames`` repeats its last index to ``num_frames``."""
    n = min(num_frames, total_frames)
    edges = np.linspace(0, total_frames, n + 1).astype(int)
    indices = [int(start + end - 1) // 2 for start, end in zip(edges[:-1], edges[1:])]
    return indices + [indices[-1]] * (num_frames - len(indices))


@dataclass(frozen=True)
class SegmentMiddleSampling(FrameSampling):
    """``nframes`` frames at the middle of equal segments (fps is ignored)."""

    def count(self, total_frames: int, video_fps: float) -> int:
        return int(self.nframes)

    def indices(self, total_frames: int, video_fps: float) -> np.ndarray:
        return np.asarray(segment_middle_indices(int(self.nframes), total_frames), dtype=np.int64)
