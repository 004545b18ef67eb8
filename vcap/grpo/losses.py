"""GRPO math as pure tensor functions: advantages, clipped surrogate, k3 KL, loss aggregation.

Shapes: rewards are (N,) with N = prompts * G laid out group by group (the order
``generate(num_return_sequences=G)`` returns). Token tensors are (N, T) with a 0/1 ``mask``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Advantages(NamedTuple):
    advantages: torch.Tensor  # (N,)
    zero_std: torch.Tensor  # (N // G,) bool: groups whose rewards were all equal
    group_std: torch.Tensor  # (N // G,)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group", eps: float = 1e-4,
                     valid: torch.Tensor | None = None) -> Advantages:
    """A_i = (r_i - mean(group)) / (std(group) + eps); ``scale='none'`` skips the division (Dr. GRPO).

    A group whose rewards are all equal gets advantage 0 whatever ``eps`` is, so it adds no gradient.
    ``valid`` (N,) bool drops samples (e.g. a failed judge call) from their group's statistics; they get 0.
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must be 1-D with a multiple of num_generations={num_generations} entries, got {tuple(rewards.shape)}")
    if scale not in ("group", "none"):
        raise ValueError(f"unknown advantage scale {scale!r}; valid: 'group', 'none'")
    grouped = rewards.view(-1, num_generations).float()
    keep = torch.ones_like(grouped, dtype=torch.bool) if valid is None else valid.view(-1, num_generations).bool()
    count = keep.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (grouped * keep).sum(dim=1, keepdim=True) / count
    centered = torch.where(keep, grouped - mean, torch.zeros_like(grouped))
    # sample (Bessel-corrected) std, as torch.std in TRL and verl; one valid member -> std 0
    std = ((centered ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    zero_std = std.squeeze(1) < 1e-8
    adv = centered / (std + eps) if scale == "group" else centered
    adv = torch.where(zero_std.unsqueeze(1) | ~keep, torch.zeros_like(adv), adv)
    return Advantages(adv.reshape(-1), zero_std, std.squeeze(1))


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float = 0.2, epsilon_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(ρA, clip(ρ, 1-ε, 1+ε_high)A) and the mask of tokens where clipping bit."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    return loss, was_clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π‖π_ref): exp(r - l) - (r - l) - 1, always >= 0."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


# -- loss aggregation ---------------------------------------------------------------------------
# Each aggregator turns per-token losses into a scalar. ``total_sequences`` / ``total_tokens`` let a
# micro-batch contribute exactly its share of the full-batch loss, so chunked backward passes sum
# to the same gradient as one big pass.

Aggregator = Callable[..., torch.Tensor]
LOSS_AGGREGATIONS: dict[str, Aggregator] = {}


def register_loss(name: str):
    def wrap(fn: Aggregator) -> Aggregator:
        LOSS_AGGREGATIONS[name] = fn
        return fn
    return wrap


def get_loss_aggregation(name: str) -> Aggregator:
    if name not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_type {name!r}; valid: {sorted(LOSS_AGGREGATIONS)}")
    return LOSS_AGGREGATIONS[name]


@register_loss("grpo")
def seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor, *, total_sequences: int | None = None,
                        **_: object) -> torch.Tensor:
    """Original GRPO: mean over sequences of each sequence's token mean."""
    n = per_token.shape[0] if total_sequences is None else total_sequences
    seq_mean = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return seq_mean.sum() / n


@register_loss("dapo")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, *, total_tokens: float | None = None,
               **_: object) -> torch.Tensor:
    """DAPO: one mean over every completion token in the batch."""
    # a given total is a rank's share of the global count (vcap.distributed.share_of_global_counts): it may be < 1
    denom = mask.sum().clamp(min=1) if total_tokens is None else torch.as_tensor(total_tokens, dtype=per_token.dtype)
    return (per_token * mask).sum() / denom


@register_loss("dr_grpo")
def seq_sum_constant_norm(per_token: torch.Tensor, mask: torch.Tensor, *, max_completion_length: int,
                          total_sequences: int | None = None, **_: object) -> torch.Tensor:
    """Dr. GRPO: token sum divided by a constant (sequences x max_completion_length), no length bias."""
    n = per_token.shape[0] if total_sequences is None else total_sequences
    return (per_token * mask).sum() / (n * max_completion_length)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, loss_type: str = "grpo", beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, max_completion_length: int = 256,
              total_sequences: int | None = None, total_tokens: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate plus ``beta`` * k3 KL, aggregated by ``loss_type``. Returns (loss, stats)."""
    aggregate = get_loss_aggregation(loss_type)
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantages, epsilon, epsilon_high)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
    norm = dict(total_sequences=total_sequences, total_tokens=total_tokens, max_completion_length=max_completion_length)
    loss = aggregate(per_token, mask, **norm)
    with torch.no_grad():
        stats = {"clip_fraction": token_mean(was_clipped, mask, total_tokens=total_tokens)}
        if kl is not None:
            stats["kl"] = token_mean(kl, mask, total_tokens=total_tokens)
    return loss, stats
