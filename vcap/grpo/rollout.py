"""Sampling completions and scoring their tokens under a model (policy, old policy or reference).

``inputs`` are processor outputs for a left-padded prompt batch with one video per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from vcap.grpo.logprobs import selected_logprobs
from vcap.grpo.prefix import shared_prefix_logprobs
from vcap.grpo.vision import select_features

PER_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
PER_VIDEO_KEYS = ("video_grid_thw", "second_per_grid_ts")  # one row per video (Qwen2.5-VL adds the second)


@dataclass
class Rollout:
    prompts: dict[str, torch.Tensor]  # the prompt batch, once per prompt
    num_generations: int
    completion_ids: torch.Tensor  # (N, C), N = prompts x G, group by group
    completion_mask: torch.Tensor  # (N, C): 1 up to and including the first EOS
    video_features: object = None  # the prompts' encoded videos when the tower is frozen (vcap.grpo.vision)

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Prompts repeated G times, group by group: the repeated (slow, reference) layout."""
        return repeat_inputs(self.prompts, self.num_generations)


def video_rows(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patch rows of ``pixel_values_videos`` that belong to each sample (one video per sample)."""
    return inputs["video_grid_thw"].prod(dim=-1)


def repeat_inputs(inputs: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    """Each prompt (and its video rows) repeated ``repeats`` times in place: a a b b, not a b a b."""
    if repeats == 1:
        return dict(inputs)
    # one video per sample, so per-video rows repeat like the sequences (kept even without pixels: mrope needs them)
    out = {k: inputs[k].repeat_interleave(repeats, dim=0) for k in PER_SEQUENCE_KEYS + PER_VIDEO_KEYS if k in inputs}
    if "pixel_values_videos" in inputs:
        chunks = inputs["pixel_values_videos"].split(video_rows(inputs).tolist())
        out["pixel_values_videos"] = torch.cat([c for c in chunks for _ in range(repeats)])
    return out


def select(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Samples [start, stop) of a batch, video rows included."""
    out = {k: inputs[k][start:stop] for k in PER_SEQUENCE_KEYS + PER_VIDEO_KEYS if k in inputs}
    if "pixel_values_videos" in inputs:
        offsets = torch.cat([video_rows(inputs).new_zeros(1), video_rows(inputs).cumsum(0)])
        out["pixel_values_videos"] = inputs["pixel_values_videos"][offsets[start]:offsets[stop]]
    return out


def vision_token_ids(model) -> list[int]:
    """Placeholder tokens a completion must never contain (each would demand a missing video/image)."""
    config = getattr(model, "config", None)
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({getattr(config, n) for n in names if getattr(config, n, None) is not None})


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # positions after the first EOS are padding; the EOS itself is kept so the model learns to stop
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def token_logprobs(model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                   mask: torch.Tensor, temperature: float = 1.0, video_features=None) -> torch.Tensor:
    """(N, C) log-probabilities of ``completion_ids`` after the prompts (one row each); only completion logits
    are computed. ``video_features`` (one entry per row) replace the pixels when given."""
    n_completion = completion_ids.shape[1]
    full = {
        **{k: v for k, v in inputs.items() if video_features is None or k != "pixel_values_videos"},
        "input_ids": torch.cat([inputs["input_ids"], completion_ids], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], mask.to(inputs["attention_mask"].dtype)], dim=1),
    }
    if "mm_token_type_ids" in inputs:  # transformers 5 needs it with video inputs; completions are text (0)
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
    if video_features is not None:
        full["mm_encoder_outputs"] = {"video": video_features}
    logits = model(**full, use_cache=False, logits_to_keep=n_completion + 1).logits
    positions = torch.arange(n_completion, device=logits.device)  # logit t predicts completion token t
    return selected_logprobs(logits, positions, completion_ids, temperature)


def sequence_logprobs(model, rollout: Rollout, start: int, stop: int, temperature: float = 1.0,
                      shared_prefix: bool = True) -> torch.Tensor:
    """(stop - start, C) log-probs of completions [start, stop): each prompt once (``shared_prefix``) or the
    repeated layout, one prompt copy per completion (the slow twin)."""
    ids, mask = rollout.completion_ids, rollout.completion_mask
    if shared_prefix:
        return shared_prefix_logprobs(model, rollout.prompts, ids, mask, rollout.num_generations, start, stop,
                                      temperature, rollout.video_features)
    features = None
    if rollout.video_features is not None:
        g = rollout.num_generations
        features = select_features(rollout.video_features, [i // g for i in range(start, stop)])
    return token_logprobs(model, select(rollout.inputs, start, stop), ids[start:stop], mask[start:stop], temperature,
                          features)


def chunked_logprobs(model, rollout: Rollout, micro_batch_size: int, temperature: float = 1.0,
                     shared_prefix: bool = True) -> torch.Tensor:
    """``sequence_logprobs`` over the rollout in micro-batches (call under no_grad for old/ref passes)."""
    n = rollout.completion_ids.shape[0]
    return torch.cat([sequence_logprobs(model, rollout, start, min(start + micro_batch_size, n), temperature,
                                        shared_prefix) for start in range(0, n, micro_batch_size)])
