"""Chosen-token log-probabilities from logits without a (sequences x tokens x vocab) fp32 ``log_softmax``.

log p(y) = logit_y / T - logsumexp(logits / T). Each chunk of positions is upcast to fp32 on its own and, under
autograd, recomputed in backward (activation checkpointing), so the fp32 copy never exceeds one chunk.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 24  # fp32 logits per chunk (64 MiB)


def _chunk_logprobs(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    picked = logits[:, positions].float() / temperature  # (B, S, V): only this chunk is ever fp32
    chosen = picked.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return chosen - picked.logsumexp(dim=-1)


def selected_logprobs(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 1.0, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """(B, S) log-probs of ``targets`` under ``logits[:, positions]``.

    Args:
        logits: (B, T, V) in the model's dtype.
        positions: (S,) indices into T: the logit row that predicts each target.
        targets: (B, S) token ids.
    """
    batch, vocab = logits.shape[0], logits.shape[-1]
    step = max(1, chunk_elements // max(1, batch * vocab))
    parts = []
    for start in range(0, positions.shape[0], step):
        pos, tgt = positions[start:start + step], targets[:, start:start + step]
        if torch.is_grad_enabled() and logits.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, logits, pos, tgt, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(logits, pos, tgt, temperature))
    return torch.cat(parts, dim=1)
