"""Each prompt's video encoded once per step and reused by the rollout and every log-prob pass.

With a frozen vision tower the features do not depend on which pass asks (policy, old policy, reference: the
reference shares the frozen tower), so one no-grad encode serves them all; transformers >= 5.18 accepts them as
``mm_encoder_outputs`` in ``forward`` and ``generate``. A trainable tower is encoded inside each forward instead,
once per prompt in the shared-prefix layout, so its gradient flows from all of that prompt's completions.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


def core_model(model):
    """The ``*VLModel`` (vision tower + language model) inside a HF or PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def tower_is_frozen(model) -> bool:
    """True when no vision parameter trains (LoRA on the tower counts as training)."""
    tower = getattr(core_model(model), "visual", None)
    return tower is not None and not any(p.requires_grad for p in tower.parameters())


@torch.no_grad()
def encode_videos(model, prompts: dict[str, torch.Tensor]) -> BaseModelOutputWithPooling | None:
    """Merged video features, one tensor per prompt; None when the tower trains (each forward encodes then),
    without videos, or for towers with extra outputs."""
    if "pixel_values_videos" not in prompts or not tower_is_frozen(model):
        return None
    out = core_model(model).get_video_features(prompts["pixel_values_videos"], prompts["video_grid_thw"],
                                               return_dict=True)
    extra = [k for k, v in out.items() if v is not None and k not in ("pooler_output", "last_hidden_state")]
    if extra:  # e.g. Qwen3-VL deepstack features: not split per video here, so let the forward encode
        return None
    return BaseModelOutputWithPooling(pooler_output=tuple(out.pooler_output))  # drop the 4x larger unmerged states


def select_features(features: BaseModelOutputWithPooling, prompt_indices: Iterable[int]) -> BaseModelOutputWithPooling:
    """Features of the given prompts in order (an index may repeat: the repeated layout)."""
    return BaseModelOutputWithPooling(pooler_output=tuple(features.pooler_output[i] for i in prompt_indices))
