"""Sampling completions and scoring their tokens under a model (policy, old policy or reference).

``inputs`` are processor outputs for a left-padded prompt batch with one video per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vcap.distributed import full_parameters_for_generation

PER_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
PER_VIDEO_KEYS = ("video_grid_thw", "second_per_grid_ts")  # one row per video (Qwen2.5-VL adds the second)


@dataclass
class Rollout:
    inputs: dict[str, torch.Tensor]  # prompts repeated G times, group by group
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C): 1 up to and including the first EOS


def video_rows(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patch rows of ``pixel_values_videos`` that belong to each sample (one video per sample)."""
    return inputs["video_grid_thw"].prod(dim=-1)


def repeat_inputs(inputs: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    """Each prompt (and its video rows) repeated ``repeats`` times in place: a a b b, not a b a b."""
    if repeats == 1:
        return dict(inputs)
    out = {k: inputs[k].repeat_interleave(repeats, dim=0) for k in PER_SEQUENCE_KEYS if k in inputs}
    if "pixel_values_videos" in inputs:
        chunks = inputs["pixel_values_videos"].split(video_rows(inputs).tolist())
        out["pixel_values_videos"] = torch.cat([c for c in chunks for _ in range(repeats)])
        out.update({k: inputs[k].repeat_interleave(repeats, dim=0) for k in PER_VIDEO_KEYS if k in inputs})
    return out


def select(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Samples [start, stop) of a batch, video rows included."""
    out = {k: inputs[k][start:stop] for k in PER_SEQUENCE_KEYS if k in inputs}
    if "pixel_values_videos" in inputs:
        offsets = torch.cat([video_rows(inputs).new_zeros(1), video_rows(inputs).cumsum(0)])
        out["pixel_values_videos"] = inputs["pixel_values_videos"][offsets[start]:offsets[stop]]
        out.update({k: inputs[k][start:stop] for k in PER_VIDEO_KEYS if k in inputs})
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


@torch.no_grad()
def sample_completions(model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                       eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       do_sample: bool = True, **generate_kwargs) -> Rollout:
    """One batched ``generate`` call for all prompts x G; returns the rollout with repeated inputs."""
    was_training = model.training
    model.eval()
    try:
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(do_sample=False)
        with full_parameters_for_generation(model):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=num_generations,
                                 eos_token_id=eos_token_ids, pad_token_id=pad_token_id, use_cache=True,
                                 suppress_tokens=vision_token_ids(model) or None, **sampling, **generate_kwargs)
    finally:
        model.train(was_training)
    completion_ids = out[:, inputs["input_ids"].shape[1]:]
    mask = completion_mask(completion_ids, eos_token_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_token_id)
    return Rollout(repeat_inputs(inputs, num_generations), completion_ids, mask)


def token_logprobs(model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                   mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, C) log-probabilities of ``completion_ids`` after the prompts; only completion logits are computed."""
    n_completion = completion_ids.shape[1]
    full = {
        **inputs,
        "input_ids": torch.cat([inputs["input_ids"], completion_ids], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], mask.to(inputs["attention_mask"].dtype)], dim=1),
    }
    if "mm_token_type_ids" in inputs:  # transformers 5 needs it with video inputs; completions are text (0)
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
    logits = model(**full, use_cache=False, logits_to_keep=n_completion + 1).logits[:, :-1]
    logits = logits.float() / temperature
    return torch.gather(logits.log_softmax(dim=-1), 2, completion_ids.unsqueeze(-1)).squeeze(-1)


def chunked_logprobs(model, rollout: Rollout, micro_batch_size: int, temperature: float = 1.0) -> torch.Tensor:
    """``token_logprobs`` over the rollout in micro-batches (call under no_grad for old/ref passes)."""
    n = rollout.completion_ids.shape[0]
    parts = []
    for start in range(0, n, micro_batch_size):
        stop = min(start + micro_batch_size, n)
        parts.append(token_logprobs(model, select(rollout.inputs, start, stop), rollout.completion_ids[start:stop],
                                    rollout.completion_mask[start:stop], temperature))
    return torch.cat(parts)
