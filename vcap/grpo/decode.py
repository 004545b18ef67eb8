"""``engine: vcap`` rollouts: each prompt prefilled once, its KV cache copied to its G rows, then a decode loop.

``generate(num_return_sequences=G)`` copies each prompt G times before the prefill, so the language model reads
every video prompt G times. Here the B prompts are prefilled once (with the once-encoded video features), their
keys and values are copied into the G rows of a static cache, and the B x G sequences decode one token per step.

One decode step (``decode_step``) is a function of tensors that it updates in place (``DecodeState`` and the static
cache): the forward on the cache, the logits processing, the choice of the next token and the bookkeeping. It has
no host sync and builds no tensor from Python data, so ``vcap.grpo.graphs`` can capture it as a CUDA graph and
replay it; everywhere else, and as the graph's slow twin, the same function runs eagerly. The random draw of a
sampled step (``draw_noise``) sits outside ``decode_step`` because ``torch.compile`` cannot take a generator.

Sampling follows HF ``generate``'s order: repetition penalty, suppressed tokens and the minimum length, then
temperature and nucleus (top-p) filtering; a sample is argmax(p / E) with E ~ Exp(1) per token, which draws from p
(the construction ``torch.multinomial`` itself uses for one sample) without a host sync.

``fused_decode_step`` is the same step written for ``torch.compile`` to fuse (``VcapEngine(compile=True)``): the
language model's decoder layers run here, on their own modules, with the rotary embedding as a roll (no
concatenation that inductor writes to memory), the keys and values of a layer written into the static cache with
one scatter (``static_cache_like`` allocates each layer's keys and values as the two halves of one tensor) and the
attention of ``vcap.grpo.decode_attention``. Eagerly it computes ``decode_step``'s numbers bit for bit
(``tests/test_decode_kernels.py``); ``decode_step``, through the model's own forward, stays its slow twin and
runs whatever ``fusable`` refuses (other families, sharded or wrapped layers).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

from vcap.grpo.decode_attention import grouped_query_attention
from vcap.grpo.prefix import prompt_positions
from vcap.grpo.vision import core_model, select_features

# transformers renamed forward's past_key_values to cache (5.2x); vLLM 0.32's CPU build brings 5.19
CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen2VLModel.forward).parameters else "past_key_values"
TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; constant through a rollout (a CUDA graph bakes these values in)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    pad_token_id: int = 0

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")


@dataclass
class DecodeState:
    """The decode loop's tensors, all updated in place, so their addresses never change (a CUDA graph reads and
    writes the addresses it was captured with). n rows = prompts x G, L = the static cache's length."""

    token: torch.Tensor  # (n,) the last chosen token: the next forward's input
    position: torch.Tensor  # (3, n, 1) its mrope position on each axis
    attention: torch.Tensor  # (n, L) 1 where the cache slot holds a real token
    column: torch.Tensor  # (n, 1) the cache slot of the next chosen token
    step: torch.Tensor  # () tokens chosen so far
    finished: torch.Tensor  # (n,) the row has chosen an EOS
    completions: torch.Tensor  # (n, L) the chosen tokens in order, pad after a row's EOS
    never: torch.Tensor  # (V,) tokens never chosen (vision placeholders)
    eos: torch.Tensor  # (V,) EOS tokens
    seen: torch.Tensor | None  # (n, V) tokens of the prompt and completion so far (repetition penalty only)
    noise: torch.Tensor | None  # (n, V) fp32 Exp(1) draws of this step (sampling only)

    @classmethod
    def allocate(cls, rows: int, cache_len: int, vocab: int, sampling: Sampling, never: list[int],
                 eos: list[int], device: torch.device) -> DecodeState:
        def vocab_mask(ids: list[int]) -> torch.Tensor:
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[[i for i in ids if 0 <= i < vocab]] = True
            return mask.to(device)

        long = dict(dtype=torch.long, device=device)
        return cls(token=torch.zeros(rows, **long), position=torch.zeros(3, rows, 1, **long),
                   attention=torch.zeros(rows, cache_len, **long), column=torch.zeros(rows, 1, **long),
                   step=torch.zeros((), **long), finished=torch.zeros(rows, dtype=torch.bool, device=device),
                   completions=torch.zeros(rows, cache_len, **long), never=vocab_mask(never), eos=vocab_mask(eos),
                   seen=(torch.zeros(rows, vocab, dtype=torch.bool, device=device)
                         if sampling.repetition_penalty != 1.0 else None),
                   noise=torch.ones(rows, vocab, device=device) if sampling.do_sample else None)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in vars(self).values() if isinstance(t, torch.Tensor)]


def processed_scores(logits: torch.Tensor, state: DecodeState, sampling: Sampling) -> torch.Tensor:
    """fp32 scores of the next token after HF's processors: repetition penalty (scores of tokens in ``seen``
    divided by it when positive, multiplied when negative), suppressed tokens and EOS before ``min_new_tokens`` at
    -inf, then (sampling) temperature and top-p: tokens outside the smallest set with mass >= top_p at -inf."""
    scores = logits.float()
    if sampling.repetition_penalty != 1.0:
        penalty = sampling.repetition_penalty
        scores = torch.where(state.seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    banned = state.never
    if sampling.min_new_tokens > 0:  # a device comparison: the step count never reaches the host
        banned = banned | (state.eos & (state.step < sampling.min_new_tokens))
    scores = scores.masked_fill(banned, float("-inf"))
    if not sampling.do_sample:
        return scores
    scores = scores / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # the mass before this token already reaches top_p (>=, as HF's TopPLogitsWarper: at an exact tie the
        # token is not needed to reach it)
        outside = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        outside[:, 0].fill_(False)  # the most likely token always stays (fill_: no tensor from Python data)
        scores = scores.scatter(1, order, sorted_scores.masked_fill(outside, float("-inf")))
    return scores


def choose_tokens(scores: torch.Tensor, state: DecodeState, sampling: Sampling) -> torch.Tensor:
    """Greedy argmax, or argmax(softmax(scores) / E) with this step's Exp(1) draws E (a draw from the softmax)."""
    if not sampling.do_sample:
        return scores.argmax(dim=-1)
    return (scores.softmax(dim=-1) / state.noise.clamp(min=TINY)).argmax(dim=-1)


def record(state: DecodeState, token: torch.Tensor, sampling: Sampling) -> None:
    """Append the chosen tokens (pad for rows that already ended) and open their cache slot for the next step."""
    token = token.masked_fill(state.finished, sampling.pad_token_id)
    state.completions.index_copy_(1, state.step.view(1), token.unsqueeze(1))
    state.token.copy_(token)
    state.finished |= state.eos[token]
    if state.seen is not None:
        state.seen.scatter_(1, token.unsqueeze(1), True)
    state.attention.scatter_(1, state.column, 1)
    state.column += 1
    state.step += 1


def choose_and_record(logits: torch.Tensor, state: DecodeState, sampling: Sampling) -> None:
    record(state, choose_tokens(processed_scores(logits, state, sampling), state, sampling), sampling)


def forward_step(model, token: torch.Tensor, attention: torch.Tensor, position: torch.Tensor,
                 cache: StaticCache) -> torch.Tensor:
    """The next-token logits of every row, given each row's last token, on the static cache."""
    return model(input_ids=token.unsqueeze(1), attention_mask=attention, position_ids=position,
                 **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]


def decode_step(model, state: DecodeState, cache: StaticCache, sampling: Sampling) -> None:
    """One decode step, in place: what a CUDA graph captures and ``torch.compile`` may fuse."""
    logits = forward_step(model, state.token, state.attention, state.position, cache)
    state.position += 1
    choose_and_record(logits, state, sampling)


# -- the step written for the compiler: the decoder layers here, each a few fusable pieces -------------------------
FUSABLE = {"Qwen2VLTextModel": "Qwen2VLDecoderLayer", "Qwen2_5_VLTextModel": "Qwen2_5_VLDecoderLayer"}


def fusable(model) -> bool:
    """Whether ``fused_forward`` computes the model's own decode forward: a Qwen2-VL or Qwen2.5-VL language model
    whose decoder layers are their plain classes (an FSDP-wrapped or ``fully_shard``-ed layer is another class: its
    forward gathers the weights, so it must be called as a module), full attention only, weights not sharded."""
    lm = core_model(model).language_model
    layer_class = FUSABLE.get(type(lm).__name__)
    return (layer_class is not None and all(type(layer).__name__ == layer_class for layer in lm.layers)
            and all(kind == "full_attention" for kind in lm.config.layer_types)
            and type(lm.embed_tokens.weight).__name__ != "DTensor")


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """HF's ``x * cos + rotate_half(x) * sin``, bit for bit, with ``rotate_half(x)`` as a roll by half the head:
    ``signed_sin`` is sin with its first half negated ((-a) * b == -(a * b) exactly). A roll is an index in the
    fused kernel; ``rotate_half``'s ``cat`` is a buffer inductor writes out, one more kernel per layer."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def write_slot(static, slot: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
    """A layer's new keys and values into cache slot ``slot``: one scatter into the layer's joint keys-and-values
    tensor when ``static_cache_like`` made one (``static.kv``), else one per tensor as ``StaticLayer.update``."""
    joint = getattr(static, "kv", None)
    if joint is not None:
        joint.index_copy_(3, slot, torch.stack((keys, values)))
    else:
        static.keys.index_copy_(2, slot, keys)
        static.values.index_copy_(2, slot, values)


def fused_forward(model, token: torch.Tensor, attention: torch.Tensor, position: torch.Tensor,
                  cache: StaticCache) -> torch.Tensor:
    """``forward_step``'s logits (bit for bit, eagerly) from the decoder layers' own modules (LoRA and merged
    rollout copies included), for ``torch.compile``: per layer the norm, the three projections, one kernel for
    the rotary embedding of queries and keys and the cache write, the grouped attention, the output projection,
    norm + residual, the MLP. Every layer writes the slot of the first layer's ``cumulative_length``; all advance
    together at the end (as ``StaticLayer.update``, one slot per step)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = core_model(model).language_model
    rows = token.shape[0]
    hidden = lm.embed_tokens(token.unsqueeze(1))
    cos, sin = lm.rotary_emb(hidden, position)  # (rows, 1, head_dim) each, mrope sections recomposed
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # once per step, not per layer
    visible = attention.bool()[:, None, None, :]  # the padding mask; slots after this token are not yet set
    slot = cache.layers[0].cumulative_length.view(1)
    for layer, static in zip(lm.layers, cache.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, signed_sin), rotate(k, cos, signed_sin)
        write_slot(static, slot, k, v)
        out, _ = grouped_query_attention(attn, q, static.keys, static.values, visible, scaling=attn.scaling)
        hidden = hidden + attn.o_proj(out.reshape(rows, 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    for static in cache.layers:
        static.cumulative_length.add_(1)
    return base.lm_head(lm.norm(hidden))[:, -1]


def fused_decode_step(model, state: DecodeState, cache: StaticCache, sampling: Sampling) -> None:
    """``decode_step`` through ``fused_forward`` (through the model's forward when not ``fusable``)."""
    forward = fused_forward if fusable(model) else forward_step
    logits = forward(model, state.token, state.attention, state.position, cache)
    state.position += 1
    choose_and_record(logits, state, sampling)


def draw_noise(state: DecodeState, generator: torch.Generator | None = None) -> None:
    """This step's Exp(1) draws, in place (sampling only)."""
    if state.noise is not None:
        state.noise.exponential_(generator=generator)


def output_length(state: DecodeState) -> int:
    """Columns of ``completions`` to return: up to the last row's EOS, or every step taken if a row never ended
    (steps after every row ended, taken between two stop checks, add only padding). One host sync."""
    steps = int(state.step)
    is_eos = state.eos[state.completions[:, :steps]]
    if steps == 0 or not bool(state.finished.all()):
        return steps
    return int(is_eos.int().argmax(dim=1).max()) + 1


# -- the prompts: prefill once, fill the G rows of the static cache -------------------------------------------
def prefill(model, inputs: dict[str, torch.Tensor], video_features=None):
    """Each prompt once: its next-token logits (B, V), its keys/values (a dynamic cache), its mrope positions."""
    batch = inputs["input_ids"].shape[0]
    positions = prompt_positions(model, inputs, 0, batch - 1)
    args = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=positions)
    if video_features is not None:
        args["mm_encoder_outputs"] = {"video": select_features(video_features, range(batch))}
    elif "pixel_values_videos" in inputs:
        args.update(pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"])
    out = model(**args, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out[CACHE_KWARG], positions  # the output's cache field is named like the kwarg


def static_cache_like(model, prompt_cache, rows: int, cache_len: int) -> StaticCache:
    """A static cache of ``rows`` x ``cache_len`` with the prefill's heads, head sizes and dtypes, allocated now.

    A layer's keys and values of one shape and dtype are the two halves of one tensor (``static.kv``), so
    ``fused_forward`` writes both with one scatter; ``StaticLayer.update`` writes the halves as before. Keys and
    values take their own dtypes from the prefill: under autocast (fp32 weights, ``bf16-mixed``) the
    rotary embedding leaves the keys in fp32 while the values come out of the projection in bf16."""
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    for static, prompt in zip(cache.layers, prompt_cache.layers):
        keys, values = prompt.keys, prompt.values
        static.lazy_initialization(keys.new_empty((rows, keys.shape[1], 0, keys.shape[-1])),
                                   values.new_empty((rows, values.shape[1], 0, values.shape[-1])))
        if static.keys.shape == static.values.shape and static.keys.dtype == static.values.dtype:
            joint = torch.zeros((2, *static.keys.shape), dtype=static.keys.dtype, device=static.keys.device)
            # detached: the halves share the joint's memory without being autograd views of it (a view made
            # under no_grad may not be written where grad is on)
            static.kv, static.keys, static.values = joint, joint[0].detach(), joint[1].detach()
            for t in (joint, static.keys, static.values):
                torch._dynamo.mark_static_address(t)  # as lazy_initialization does: fixed addresses
    return cache


def load_prompts(state: DecodeState, cache: StaticCache, prompt_cache, logits: torch.Tensor,
                 positions: torch.Tensor, inputs: dict[str, torch.Tensor], num_generations: int,
                 sampling: Sampling, generator: torch.Generator | None = None) -> None:
    """Reset ``state`` and ``cache`` in place for a new rollout, each prompt's keys/values in its G rows, and
    choose the first token of every row from the prefill's logits."""
    g = num_generations
    batch, prompt_len = inputs["input_ids"].shape
    for static, prompt in zip(cache.layers, prompt_cache.layers):
        for dst, src in ((static.keys, prompt.keys), (static.values, prompt.values)):
            rows = dst.view(batch, g, *dst.shape[1:])
            rows[..., :prompt_len, :].copy_(src.unsqueeze(1))
            rows[..., prompt_len:, :].zero_()  # stale slots stay finite: masked, they must add exactly 0
        static.cumulative_length.fill_(prompt_len)
    mask = inputs["attention_mask"].repeat_interleave(g, dim=0)
    state.attention.zero_()
    state.attention[:, :prompt_len].copy_(mask)
    state.position.copy_((positions[:, :, -1:] + 1).repeat_interleave(g, dim=1))  # right after the prompt
    state.column.fill_(prompt_len)
    state.step.zero_()
    state.finished.zero_()
    state.completions.zero_()
    if state.seen is not None:
        state.seen.zero_()
        state.seen.scatter_(1, inputs["input_ids"].repeat_interleave(g, dim=0), True)  # padding too, as HF
    draw_noise(state, generator)
    choose_and_record(logits.repeat_interleave(g, dim=0), state, sampling)
