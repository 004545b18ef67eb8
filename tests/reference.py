"""Independent references for the GRPO tests. Nothing here imports vcap's training code.

* Log-probs: one plain forward per sequence of its prompt (unpadded) followed by its completion (unpadded), with
  the whole logit matrix and ``torch.log_softmax(logits / T)``: no padding, no ``logits_to_keep``, no shared
  prefix, no chunking, no ``selected_logprobs``.
* Loss: the clipped surrogate in its case-split form (A >= 0: the upper bound binds, A < 0: the lower one), the k3
  KL, and each loss type's aggregation written as an explicit sum over sequences.
* One optimizer step: clip by the global norm as ``torch.nn.utils.clip_grad_norm_`` documents it, then plain SGD.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch


def video_rows(prompts: dict, p: int) -> slice:
    """Rows of ``pixel_values_videos`` of prompt ``p``: each video has t * h * w patch rows."""
    sizes = [int(t) * int(h) * int(w) for t, h, w in prompts["video_grid_thw"].tolist()]
    return slice(sum(sizes[:p]), sum(sizes[:p + 1]))


def single_prompt(prompts: dict, p: int) -> dict:
    """Prompt ``p`` alone, its left padding removed."""
    keep = prompts["attention_mask"][p].bool()
    out = {"input_ids": prompts["input_ids"][p][keep]}
    if "mm_token_type_ids" in prompts:
        out["mm_token_type_ids"] = prompts["mm_token_type_ids"][p][keep]
    if "pixel_values_videos" in prompts:
        out["pixel_values_videos"] = prompts["pixel_values_videos"][video_rows(prompts, p)]
        out["video_grid_thw"] = prompts["video_grid_thw"][p:p + 1]
    return out


def reference_logprobs(model, prompts: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                       num_generations: int, temperature: float) -> torch.Tensor:
    """(N, C) log-probs of each kept completion token (0 where masked), differentiable w.r.t. the model."""
    rows = []
    width = completion_ids.shape[1]
    for i in range(completion_ids.shape[0]):
        prompt = single_prompt(prompts, i // num_generations)
        k = int(completion_mask[i].sum())
        completion = completion_ids[i, :k]
        ids = torch.cat([prompt["input_ids"], completion]).unsqueeze(0)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "mm_token_type_ids" in prompt:
            inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion)])[None]
        if "pixel_values_videos" in prompt:
            inputs["pixel_values_videos"] = prompt["pixel_values_videos"]
            inputs["video_grid_thw"] = prompt["video_grid_thw"]
        logits = model(**inputs, use_cache=False).logits[0].float()
        start = prompt["input_ids"].shape[0] - 1  # the logit at position j predicts token j + 1
        logp = torch.log_softmax(logits[start:start + k] / temperature, dim=-1)
        chosen = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        rows.append(torch.cat([chosen, chosen.new_zeros(width - k)]))
    return torch.stack(rows)


def reference_advantages(rewards: list[float], num_generations: int, scale: str = "group", eps: float = 1e-4,
                         valid: list[bool] | None = None) -> list[float]:
    """(r - mean) / (sample std + eps) over each group's valid members; 0 for invalid members and equal groups."""
    valid = [True] * len(rewards) if valid is None else valid
    out = []
    for g in range(0, len(rewards), num_generations):
        group = list(zip(rewards[g:g + num_generations], valid[g:g + num_generations]))
        members = [r for r, ok in group if ok]
        std = statistics.stdev(members) if len(members) > 1 else 0.0
        mean = statistics.fmean(members) if members else 0.0
        for r, ok in group:
            if not ok or std < 1e-8:
                out.append(0.0)
            else:
                out.append((r - mean) / (std + eps) if scale == "group" else r - mean)
    return out


def reference_loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, adv: list[float],
                   mask: torch.Tensor, loss_type: str, beta: float, eps: float, eps_high: float,
                   max_len: int) -> torch.Tensor:
    """The batch loss; every sequence counts in the sequence totals, excluded ones (all-zero mask) add nothing."""
    n = logp.shape[0]
    total_tokens = float(mask.sum())
    loss = logp.new_zeros(())
    for i in range(n):
        kept = mask[i].bool()
        if not kept.any():
            continue
        lp = logp[i][kept]
        ratio = torch.exp(lp - old[i][kept])
        a = adv[i]
        if a >= 0:
            surrogate = -a * torch.minimum(ratio, torch.full_like(ratio, 1 + eps_high))
        else:
            surrogate = -a * torch.maximum(ratio, torch.full_like(ratio, 1 - eps))
        per_token = surrogate
        if beta:
            log_ratio = ref[i][kept] - lp
            per_token = per_token + beta * (torch.exp(log_ratio) - log_ratio - 1)
        if loss_type == "grpo":
            loss = loss + per_token.sum() / kept.sum() / n
        elif loss_type == "dapo":
            loss = loss + per_token.sum() / total_tokens
        elif loss_type == "dr_grpo":
            loss = loss + per_token.sum() / (n * max_len)
        else:
            raise ValueError(loss_type)
    return loss


def clip_by_global_norm(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """g * min(1, max_norm / (||g|| + 1e-6)) with ||g|| the 2-norm of all gradients together."""
    if max_norm <= 0:
        return dict(grads)
    total = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values())))
    coef = min(1.0, max_norm / (total + 1e-6))
    return {name: g * coef for name, g in grads.items()}


def global_norm(grads: dict[str, torch.Tensor]) -> float:
    return float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values())))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", rel: float = 1e-4,
                 atol: float = 0.0) -> None:
    """Max error within ``rel`` of the expected tensor's largest entry (fp32 sums in another order differ), plus
    ``atol``."""
    scale = expected.abs().max().clamp(min=1e-12)
    err = (actual - expected).abs().max()
    assert err <= rel * scale + atol, f"{what}: max error {err:.3g} vs scale {scale:.3g}"
