"""Shared-prefix log-probs: each prompt runs once per micro-batch and its completions attend to it.

The repeated path feeds G copies of ``prompt + completion_i``. Here one row holds the prompt once followed by
its completions, each in its own slot of ``C`` tokens::

    [pad pad p0 p1 ... pP | c1_0 .. c1_C | c2_0 .. c2_C | ...]

A 4-D attention mask lets every prompt token see the prompt causally and every completion token see the
(unpadded) prompt plus the earlier tokens of its own slot only; each slot gets the rotary positions it has in
the repeated layout (right after the prompt). Each completion's tokens therefore see exactly the keys and values
they see in the repeated path, so log-probs are equal and the gradient that reaches the prompt is the sum over
its completions, as in the repeated path (cf. Prefix Grouper, arXiv 2506.05433). The linear layers process
P + G*C tokens instead of G*(P + C). Works with sdpa and eager attention (a custom mask is a plain forward, so
gradient checkpointing, LoRA and ``disable_adapter()`` need nothing special).
"""
from __future__ import annotations

import torch

from vcap.grpo.logprobs import selected_logprobs
from vcap.grpo.vision import core_model, select_features

SUPPORTED_ATTENTION = ("sdpa", "eager")


def attention_implementation(model) -> str:
    return core_model(model).language_model.config._attn_implementation


def check_shared_prefix_support(model) -> None:
    impl = attention_implementation(model)
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(f"model.init_args.shared_prefix needs attn_implementation in {list(SUPPORTED_ATTENTION)}, "
                         f"got {impl!r}; pass --model.init_args.attn_implementation sdpa or "
                         "--model.init_args.shared_prefix false")


def group_slots(start: int, stop: int, num_generations: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For sequences [start, stop) laid out group by group: their prompt indices, row and slot in the packed batch."""
    seq = torch.arange(start, stop)
    prompt = seq // num_generations
    row = prompt - prompt[0]
    first_in_row = torch.maximum(prompt * num_generations, torch.tensor(start))
    return prompt, row, seq - first_in_row


def prompt_positions(model, prompts: dict[str, torch.Tensor], first: int, last: int) -> torch.Tensor:
    """(3, B, P) mrope positions of prompts [first, last] (text-only prompts: plain positions on all 3 axes)."""
    mask = prompts["attention_mask"][first:last + 1]
    if "video_grid_thw" not in prompts:
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0).expand(3, -1, -1)
    extra = {k: prompts[k][first:last + 1] for k in ("second_per_grid_ts",) if k in prompts}
    positions, _ = core_model(model).get_rope_index(
        prompts["input_ids"][first:last + 1], mm_token_type_ids=prompts["mm_token_type_ids"][first:last + 1],
        video_grid_thw=prompts["video_grid_thw"][first:last + 1], attention_mask=mask, **extra)
    return positions


def grouped_attention_mask(valid: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(B, 1, L, L) mask: causal, valid keys only, a completion slot sees the prompt (segment 0) and itself.

    ``dtype`` None gives a boolean mask (True = attend, for sdpa); a float dtype gives the additive eager mask.
    Every query also sees itself so padding rows are never fully masked (their outputs are never used).
    """
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    same_or_prompt = (segment.unsqueeze(1) == segment.unsqueeze(0)) | (segment == 0).unsqueeze(0)
    allowed = causal & same_or_prompt
    allowed = allowed.unsqueeze(0) & valid.bool().unsqueeze(1)
    allowed |= torch.eye(length, dtype=torch.bool, device=valid.device)
    allowed = allowed.unsqueeze(1)
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_prefix_logprobs(model, prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                           completion_mask: torch.Tensor, num_generations: int, start: int, stop: int,
                           temperature: float = 1.0, video_features=None) -> torch.Tensor:
    """(stop - start, C) log-probs of completions [start, stop) with each of their prompts run once.

    Args:
        prompts: processor outputs of the un-repeated, left-padded prompt batch (one video per prompt).
        completion_ids / completion_mask: (N, C) for all N = prompts x G sequences, group by group.
        video_features: the prompts' encoded videos (``vcap.grpo.vision.encode_videos``); None encodes the
            pixels of the prompts in this micro-batch inside the forward (once each, shared by their slots).
    """
    device = completion_ids.device
    prompt_idx, row, slot = group_slots(start, stop, num_generations)
    first, last = int(prompt_idx[0]), int(prompt_idx[-1])
    rows, slots, width = last - first + 1, int(slot.max()) + 1, completion_ids.shape[1]
    row, slot = row.to(device), slot.to(device)

    prompt_mask = prompts["attention_mask"][first:last + 1]
    keep_from = int(prompt_mask.any(0).nonzero()[0])  # drop columns that are padding in every row
    prompt_mask = prompt_mask[:, keep_from:]
    prompt_ids = prompts["input_ids"][first:last + 1, keep_from:]
    prefix_pos = prompt_positions(model, prompts, first, last)[:, :, keep_from:]

    ids = completion_ids.new_zeros((rows, slots, width))  # empty slots: masked, any token
    valid = completion_mask.new_zeros((rows, slots, width))
    ids[row, slot] = completion_ids[start:stop]
    valid[row, slot] = completion_mask[start:stop]
    # completion token t sits right after the prompt in every slot, as in the repeated layout
    next_pos = prefix_pos[:, :, -1:] + 1
    slot_pos = (next_pos.unsqueeze(2) + torch.arange(width, device=device)).expand(-1, -1, slots, -1)

    prefix_len = prompt_ids.shape[1]
    segment = torch.cat([torch.zeros(prefix_len, dtype=torch.long, device=device),
                         torch.arange(1, slots + 1, device=device).repeat_interleave(width)])
    all_valid = torch.cat([prompt_mask.to(valid.dtype), valid.view(rows, -1)], dim=1)
    eager = attention_implementation(model) == "eager"
    mask = grouped_attention_mask(all_valid, segment, model.dtype if eager else None)
    inputs = dict(input_ids=torch.cat([prompt_ids, ids.view(rows, -1)], dim=1), attention_mask=mask,
                  position_ids=torch.cat([prefix_pos, slot_pos.reshape(3, rows, -1)], dim=2))
    if video_features is not None:
        inputs["mm_encoder_outputs"] = {"video": select_features(video_features, range(first, last + 1))}
    elif "pixel_values_videos" in prompts:
        rows_per_video = prompts["video_grid_thw"].prod(-1)
        offsets = torch.cat([rows_per_video.new_zeros(1), rows_per_video.cumsum(0)])
        inputs["pixel_values_videos"] = prompts["pixel_values_videos"][offsets[first]:offsets[last + 1]]
        inputs["video_grid_thw"] = prompts["video_grid_thw"][first:last + 1]
    logits = model(**inputs, use_cache=False, logits_to_keep=slots * width + 1).logits
    # kept logits: [last prompt token, slot 0 tokens, slot 1 tokens, ...]; token t of slot s is predicted by
    # the last prompt token (t = 0) or by token t - 1 of the same slot
    predictor = torch.arange(width, device=device) + torch.arange(slots, device=device).unsqueeze(1) * width
    predictor[:, 0] = 0
    logp = selected_logprobs(logits, predictor.view(-1), ids.view(rows, -1), temperature)
    return logp.view(rows, slots, width)[row, slot]
