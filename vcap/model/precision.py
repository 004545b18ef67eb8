"""Weights that can hold an update: full fine-tuning keeps fp32 master weights and computes in bf16.

AdamW's first steps move every weight by about ``lr`` (the update is lr * m / sqrt(v)). The gap between
neighbouring bf16 numbers near |w| is 2**(floor(log2|w|) - 7), about 1.2e-4 at |w| = 0.02, so at
lr 1e-6 ``w - update`` rounds back to ``w`` and the run changes almost nothing while it logs rewards.
The recipe therefore loads fp32 weights and lets Lightning's ``precision: bf16-mixed`` (or FSDP's
mixed precision) run the forward and backward in bf16.
"""
from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)
LOW_PRECISION = (torch.bfloat16, torch.float16)
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}


def rounding_gap(value: float, dtype: torch.dtype) -> float:
    """Distance from ``value`` to the next representable number of ``dtype`` (normal range)."""
    if value == 0:
        return 0.0
    return 2.0 ** (math.floor(math.log2(abs(value))) - MANTISSA_BITS[dtype])


def low_precision_trainables(model: torch.nn.Module) -> dict[torch.dtype, int]:
    """Number of trainable parameter elements per bf16/fp16 dtype."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.requires_grad and p.dtype in LOW_PRECISION:
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return counts


def low_precision_message(counts: dict[torch.dtype, int], learning_rate: float) -> str:
    dtype = max(counts, key=counts.get)
    gap = rounding_gap(0.02, dtype)
    return (f"{sum(counts.values()):,} trainable weights are stored in {str(dtype).replace('torch.', '')}: near "
            f"|w| = 0.02 neighbouring values are {gap:.1e} apart, so AdamW updates of about lr = {learning_rate:g} "
            "round back to the old weights and training silently does nothing. Load fp32 weights and compute in "
            "bf16: `model.init_args.dtype: float32` with `trainer.precision: bf16-mixed` (or FSDP mixed precision, "
            "configs/grpo_fsdp.yaml), or train LoRA adapters (fp32) with configs/grpo.yaml. To train "
            "low-precision weights anyway (e.g. with a Kahan-summation or stochastic-rounding optimizer), set "
            "`model.init_args.allow_low_precision_training: true`.")


def check_trainable_precision(model: torch.nn.Module, learning_rate: float, allow: bool) -> None:
    """Refuse to optimise bf16/fp16 weights unless ``allow``; then warn with the same reason."""
    counts = low_precision_trainables(model)
    if not counts:
        return
    message = low_precision_message(counts, learning_rate)
    if not allow:
        raise ValueError(message)
    log.warning("allow_low_precision_training is set: %s", message)
