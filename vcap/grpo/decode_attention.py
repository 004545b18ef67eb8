"""Attention for one-token decode steps over a static cache, without copying the keys and values per query head.

HF's sdpa attention, given a padding mask, repeats each key/value head for its query heads before calling SDPA
(``repeat_kv``: a masked SDPA would fall back to its math kernel with grouped heads), so every decode step copies
the whole static cache several times over (Qwen2-VL-2B: 6 query heads per key head; a measured 1.6 ms of a 6.8 ms
step on an H200 at 8 rows). With one query token per row the attention is two batched products that read the
cache once: the G query heads of a key head as the rows of one product. Scores are computed in the cache's dtype
and the softmax in fp32, as HF's eager attention does.

``decode_attention(model)`` switches the language model to it for the decode loop only (the prefill and the
training passes keep the user's implementation); the mask is built exactly as for sdpa.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from vcap.grpo.vision import core_model

NAME = "vcap_decode"
REPLACES = ("sdpa", "eager")  # implementations whose numerics this matches (flash kernels keep their own)


def grouped_query_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs):
    """(rows, 1, heads, d) attention output of one query token per row; other query lengths go to sdpa."""
    rows, heads, q_len, dim = query.shape
    if q_len != 1 or dropout != 0.0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kv_heads = key.shape[1]
    grouped = query.view(rows, kv_heads, heads // kv_heads, dim)  # query head h reads key head h // groups
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # (rows, 1, 1, L): True (or 0.0) where the key is visible
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask.float()
    probs = scores.softmax(dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (rows, kv_heads, groups, d)
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(NAME, grouped_query_attention)
AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextmanager
def decode_attention(model):
    """Within: the language model's attention layers use ``grouped_query_attention`` (when they use sdpa/eager)."""
    config = core_model(model).language_model.config
    before = config._attn_implementation
    if before not in REPLACES:
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
