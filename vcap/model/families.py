"""What differs between the supported video model families, chosen by the model's config class.

Behaviour is never guessed from the model id: a fine-tune called "my-model" is still a Qwen2.5-VL
because its config.json says ``Qwen2_5_VLConfig``.

- Qwen2-VL: video rope from grid positions only; the processor's pixel budget is per frame.
- Qwen2.5-VL: the temporal rope index advances by seconds, so the processor needs the clip's timing
  (it emits ``second_per_grid_ts``, which must travel with each video through the rollout).
- Qwen3-VL: the prompt carries "<t seconds>" before each temporal patch, computed from the clip's
  timing; its video processor budgets pixels per whole video, so vcap multiplies the per-frame budget
  by the frame count to keep ``min_pixels``/``max_pixels`` meaning "per frame" in every family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config_class: str
    needs_video_timing: bool  # the processor needs fps/frame indices (video_metadata)
    budget_per_video: bool  # the video processor's size is a whole-video pixel budget
    per_video_keys: tuple[str, ...] = ()  # processor outputs with one row per video besides video_grid_thw

    def video_kwargs(self, min_pixels: int, max_pixels: int, frame_counts: list[int],
                     metadata: list[dict | None] | None = None) -> dict[str, Any]:
        """``videos_kwargs`` for the processor: frames are already sampled; budgets are per frame."""
        scale = min(frame_counts) if self.budget_per_video and frame_counts else 1
        kwargs: dict[str, Any] = {"do_sample_frames": False,
                                  "size": {"shortest_edge": min_pixels * scale, "longest_edge": max_pixels * scale}}
        if self.budget_per_video:
            kwargs["cap_pixels_per_frame"] = False  # the budget above already is the per-frame cap
        if self.needs_video_timing:
            if metadata is None or any(m is None for m in metadata):
                raise ValueError(f"{self.name} needs each video's fps and frame indices (video metadata)")
            kwargs["video_metadata"] = metadata
        return kwargs


QWEN2_VL = ModelFamily("Qwen2-VL", "Qwen2VLConfig", needs_video_timing=False, budget_per_video=False)
QWEN2_5_VL = ModelFamily("Qwen2.5-VL", "Qwen2_5_VLConfig", needs_video_timing=True, budget_per_video=False,
                         per_video_keys=("second_per_grid_ts",))
QWEN3_VL = ModelFamily("Qwen3-VL", "Qwen3VLConfig", needs_video_timing=True, budget_per_video=True)
FAMILIES = {f.config_class: f for f in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)}


def family_of(config) -> ModelFamily:
    """The family of a transformers config object (by its class), with an error naming the supported ones."""
    name = type(config).__name__
    if name not in FAMILIES:
        supported = ", ".join(f"{f.name} ({f.config_class})" for f in FAMILIES.values())
        raise ValueError(f"unsupported model config {name}: vcap supports {supported}")
    return FAMILIES[name]


def family_for(name_or_path: str) -> ModelFamily:
    """The family of a model name or directory (reads only its config)."""
    from transformers import AutoConfig

    from vcap.model.loading import _not_found, resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError) as err:
        raise _not_found(name_or_path, err) from err
    return family_of(config)
