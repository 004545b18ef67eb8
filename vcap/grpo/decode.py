"""``engine: vcap`` rollouts: each prompt prefilled once, its KV cache expanded to G, a static-cache decode loop.

``generate(num_return_sequences=G)`` copies each prompt G times before the prefill, so the language model reads
every video prompt G times. Here the B prompts are prefilled once (with the once-encoded video features), the
static cache's key/value rows are repeated G times, and the B x G sequences decode one token per step until all
have produced an EOS or the budget is spent. Sampling follows HF's order: suppressed tokens and the minimum
length first, then temperature and nucleus (top-p) filtering.
"""
from __future__ import annotations

import inspect

import torch
from transformers import StaticCache
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

from vcap.grpo.prefix import prompt_positions
from vcap.grpo.vision import select_features


# transformers renamed forward's past_key_values to cache (5.2x); vLLM 0.32's CPU build brings 5.19
CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen2VLModel.forward).parameters else "past_key_values"


def next_token_scores(logits: torch.Tensor, step: int, eos_token_ids: list[int], suppress_tokens: list[int] | None,
                      min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                      seen: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 scores with suppressed tokens (and EOS before ``min_new_tokens``) at -inf; with a
    ``repetition_penalty`` != 1, the scores of every token marked in ``seen`` (a (rows, vocab) bool mask of the
    prompt and completion so far, padding included, as HF) are divided by it when positive and multiplied by it
    when negative."""
    scores = logits.float()
    if repetition_penalty != 1.0:
        penalized = torch.where(scores < 0, scores * repetition_penalty, scores / repetition_penalty)
        scores = torch.where(seen, penalized, scores)
    banned = list(suppress_tokens or []) + (list(eos_token_ids) if step < min_new_tokens else [])
    if banned:
        scores[:, banned] = float("-inf")
    return scores


def sample_tokens(scores: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy argmax, or a draw from softmax(scores / T) restricted to the smallest set with mass >= top_p."""
    if not do_sample:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already reaches top_p
        outside[:, 0] = False
        scores = scores.scatter(1, order, sorted_scores.masked_fill(outside, float("-inf")))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)


def expand_cache(cache: StaticCache, repeats: int) -> None:
    """Each prompt's cached keys/values repeated ``repeats`` times in place (a a b b), as the rollout layout."""
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
        layer.values = layer.values.repeat_interleave(repeats, dim=0)
        layer.batch_size = layer.keys.shape[0]


def forward_step(model, token: torch.Tensor, attention: torch.Tensor, position: torch.Tensor,
                 cache: StaticCache) -> torch.Tensor:
    """One decode step: the next-token logits of every sequence (the function ``engine: vcap`` compiles)."""
    return model(input_ids=token.unsqueeze(1), attention_mask=attention, position_ids=position,
                 **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def prefill_once_generate(model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                          eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                          do_sample: bool = True, video_features=None, suppress_tokens: list[int] | None = None,
                          min_new_tokens: int = 0, generator: torch.Generator | None = None,
                          repetition_penalty: float = 1.0, decode_step=forward_step,
                          cache_len: int | None = None) -> torch.Tensor:
    """(B x G, T) completion ids, group by group, pad after each EOS; T <= max_new_tokens (stops when all end).

    ``decode_step`` runs each decode step (``forward_step`` or a compiled copy); ``cache_len`` (>= prompt +
    budget) sizes the static cache and attention mask, so prompts of different lengths can share one shape."""
    batch, prompt_len = inputs["input_ids"].shape
    n = batch * num_generations
    device = inputs["input_ids"].device
    cache_len = max(cache_len or 0, prompt_len + max_new_tokens)
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    positions = prompt_positions(model, inputs, 0, batch - 1)
    prefill = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=positions)
    if video_features is not None:
        prefill["mm_encoder_outputs"] = {"video": select_features(video_features, range(batch))}
    elif "pixel_values_videos" in inputs:
        prefill.update(pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"])
    logits = model(**prefill, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]
    logits = logits.repeat_interleave(num_generations, dim=0)
    expand_cache(cache, num_generations)

    # every completion continues right after its prompt, on all three mrope axes
    next_pos = (positions[:, :, -1:] + 1).repeat_interleave(num_generations, dim=1)
    attention = torch.zeros(n, cache_len, dtype=torch.long, device=device)  # unused columns stay masked
    attention[:, :prompt_len] = inputs["attention_mask"].repeat_interleave(num_generations, dim=0)
    eos = torch.tensor(eos_token_ids, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens = []
    seen = None  # a mask, not the growing id history: each step costs O(vocab), not O(prompt + completion)
    if repetition_penalty != 1.0:
        seen = torch.zeros(n, logits.shape[-1], dtype=torch.bool, device=device)
        seen.scatter_(1, inputs["input_ids"].repeat_interleave(num_generations, dim=0), True)
    for step in range(max_new_tokens):
        scores = next_token_scores(logits, step, eos_token_ids, suppress_tokens, min_new_tokens, repetition_penalty,
                                   seen)
        token = sample_tokens(scores, temperature, top_p, do_sample, generator)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        finished |= torch.isin(token, eos)
        if seen is not None:
            seen.scatter_(1, token.unsqueeze(1), True)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        attention[:, prompt_len + step] = 1
        logits = decode_step(model, token, attention, next_pos + step, cache)
    return torch.stack(tokens, dim=1)
