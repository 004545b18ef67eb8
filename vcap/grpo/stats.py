"""Pure functions behind the logged rollout statistics (tested on hand-made masks)."""
from __future__ import annotations

import torch


def truncated(completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """(N,) bool: completions that never emitted EOS within their kept tokens, i.e. cut by the length budget.

    A completion that ends with EOS exactly at the last position finished; it is not truncated.
    """
    eos = torch.tensor(eos_token_ids, device=completion_ids.device)
    emitted = torch.isin(completion_ids, eos) & completion_mask.bool()
    return ~emitted.any(dim=1)


def mean_over_iterations(iterations: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of each statistic over the μ optimizer steps of one rollout (each step's stats count once)."""
    if not iterations:
        return {}
    return {key: torch.stack([torch.as_tensor(it[key], dtype=torch.float32) for it in iterations]).mean()
            for key in iterations[0]}
