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


def group_statistics(grouped: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group (a row of ``grouped``) over the members ``keep`` marks: the values minus the group mean (0 where not
    kept), the sample (Bessel-corrected, as torch.std in TRL and verl) std, 0 for one member, and whether all kept
    values are equal or fewer than two are kept (shapes (G, n), (G, 1), (G, 1)). Equality is by comparison, not by
    std < threshold: the float mean of equal values can round away from them (eight float32 0.91s give r - mean =
    6e-8, so std 6e-8 and advantages of up to 2e-3 instead of 0). Values not kept may be NaN."""
    values = torch.where(keep, grouped, torch.zeros_like(grouped))  # NaN * 0 would still be NaN in the sums
    count = keep.sum(dim=1, keepdim=True)
    mean = values.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(keep, grouped - mean, torch.zeros_like(grouped))
    std = ((centered ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    highest = torch.where(keep, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1, keepdim=True)
    lowest = torch.where(keep, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1, keepdim=True)
    return centered, std, highest <= lowest


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
    centered, std, constant = group_statistics(grouped, keep)
    zero_std = constant.squeeze(1)
    std = torch.where(constant, torch.zeros_like(std), std)
    adv = centered / (std + eps) if scale == "group" else centered
    adv = torch.where(zero_std.unsqueeze(1) | ~keep, torch.zeros_like(adv), adv)
    return Advantages(adv.reshape(-1), zero_std, std.squeeze(1))


# -- combining several rewards before the advantage -----------------------------------------------
REWARD_AGGREGATIONS = ("sum", "normalize_then_sum")


class RewardValues(NamedTuple):
    values: torch.Tensor  # (N,) the value group_advantages turns into advantages
    normalized: dict[str, torch.Tensor]  # reward name -> (N,) its group-normalised score (normalize_then_sum only)


def normalize_then_sum(scores_by: dict[str, torch.Tensor], weights: dict[str, float], num_generations: int,
                       valid: torch.Tensor | None = None, eps: float = 1e-4) -> RewardValues:
    """GDPO's decoupled normalisation (TRL's ``multi_objective_aggregation="normalize_then_sum"``).

    For each reward k and each group g of G completions, over the group's completions that count (``valid``, and a
    finite score)::

        z_ik = (r_ik - mean_g(r_k)) / (std_g(r_k) + eps)      std: sample (Bessel-corrected) std, eps = 1e-4
        S_i  = sum_k w_k * z_ik

    as TRL does (per reward: the group's ``nanmean`` and Bessel ``nanstd``, + 1e-4; then the weighted sum). Guards
    TRL lacks: a reward whose counted scores in a group are all equal (a format reward every completion passed, a
    reward n/a for the whole record, one counted completion) gives z = 0 there exactly, never NaN or inf, and never
    the (r - mean) / 1e-4 of a float mean that rounds away from the common value (eight float32 0.91s give
    r - mean = 6e-8, hence 6e-4); a completion dropped from its group (``valid`` false) or with a non-finite score
    for reward k gets z_ik = 0 and is left out of that reward's group statistics, so no NaN reaches S. Each z_k has
    mean 0 over its group's counted completions, so S has too.

    ``scores_by`` must hold the scores the plain sum adds (``RewardOutput.scores_by``: 0 for a judgment failed under
    ``on_failure: zero`` and for a reward without reference, never the components' NaN), so failed and n/a scores
    count exactly as under ``sum``. Returns S and every z_k (for logging).
    """
    if not scores_by:
        raise ValueError("normalize_then_sum needs at least one reward")
    normalized: dict[str, torch.Tensor] = {}
    for name, scores in scores_by.items():
        if scores.dim() != 1 or scores.numel() % num_generations:
            raise ValueError(f"{name} scores must be 1-D with a multiple of num_generations={num_generations} "
                             f"entries, got {tuple(scores.shape)}")
        grouped = scores.float().view(-1, num_generations)
        keep = torch.isfinite(grouped)
        if valid is not None:
            keep &= valid.view(-1, num_generations).bool()
        centered, std, constant = group_statistics(grouped, keep)
        z = torch.where(constant | ~keep, torch.zeros_like(centered), centered / (std + eps))
        normalized[name] = z.reshape(-1)
    total = torch.zeros_like(next(iter(normalized.values())))
    for name, z in normalized.items():
        total = total + float(weights[name]) * z
    return RewardValues(total, normalized)


def aggregate_rewards(aggregation: str, total: torch.Tensor, scores_by: dict[str, torch.Tensor],
                      weights: dict[str, float], num_generations: int,
                      valid: torch.Tensor | None = None) -> RewardValues:
    """The value the GRPO advantage is computed from. ``sum``: ``total``, the weighted sum of raw scores, returned
    as is (the behaviour before this option existed); ``normalize_then_sum``: see :func:`normalize_then_sum`."""
    if aggregation == "sum":
        return RewardValues(total, {})
    if aggregation == "normalize_then_sum":
        return normalize_then_sum(scores_by, weights, num_generations, valid)
    raise ValueError(f"unknown reward_aggregation {aggregation!r}; valid: {list(REWARD_AGGREGATIONS)}")


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
    # a given total is a rank's share of the global count (vcap.training.distributed.share_of_global_counts): it may be < 1
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
