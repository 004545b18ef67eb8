"""Kernels per decode step and per decoder layer, eager against compiled (inductor), measured on CPU; one JSON object.

The number of kernels a decode step launches is decided by the code and the compiler, not by the device, so it is
counted here without a GPU, on random weights, for the Qwen2-VL-2B text geometry (hidden 1536, 12 heads, 2 KV
heads, head_dim 128, intermediate 8960, vocab 151936, mrope [16, 24, 24], rope theta 1e6, tied embeddings as the
2B checkpoint; vision tower cut to one tiny block, which a decode step never runs) and for vcap-tiny's
(``vcap.model.tiny.build_config``: hidden 64, 4 heads, 2 KV heads, intermediate 128).

Method (``vcap.grpo.kernel_count``, shared with ``tests/test_decode_kernels.py``):

* one decode step of ``rows`` completions of one random text prompt (``prompt_len`` tokens, static cache of
  ``cache_len``), after a two-token rollout of ``DecodeRunner``, under ``decode_attention`` (as the runner runs it);
* **eager**: ATen ops the step dispatches (a ``TorchDispatchMode``), less those that launch no kernel: views and
  metadata-only ops (every op whose outputs all alias an input without writing it, and ``_unsafe_view``),
  allocations left unfilled (``empty*``, ``new_empty*``) and ``lift_fresh``;
* **compiled**: the step through ``torch.compile(backend="inductor", fullgraph=True, dynamic=False)`` with a fresh
  inductor cache, and the launches in the generated wrapper's ``call()``: inductor's own kernels (``cpp_fused_*``),
  extern kernels (``extern_kernels.mm/addmm/bmm``: the GEMMs), ATen fallbacks (``aten.sort``, ``aten.cumsum``) and
  write-backs (``copy_``);
* **per layer** = total(2 layers) - total(1 layer), so the head (embedding, rotary, mask) and the tail (final norm,
  LM head, logits processing, choice, bookkeeping) are separated: fixed = total(1 layer) - per layer, and a step
  of the full model (``step_full_model``) is fixed + layers x per layer (28 layers at 2B, 2 in vcap-tiny);
* greedy steps for the per-layer numbers; ``sampled_tail_extra`` is what sampling with temperature, top-p,
  minimum length and repetition penalty adds to a 1-layer step (the Exp(1) draw, one more kernel, runs outside
  the step and is not counted);
* steps: ``plain`` is ``vcap.grpo.decode.decode_step`` (the model's own forward), ``fused`` is
  ``fused_decode_step`` (what ``VcapEngine(compile=True)`` compiles).

On a GPU an eager op is one launch except a few (``sort``); inductor's Triton kernels and fusion rules are not the
C++ backend's, so a GPU count may differ by a few per layer. Takes 4-6 minutes on 2 busy CPU cores (12 compiles of
the 2B geometry, 12 of the tiny one; the 2B geometry needs ~3 GB).

    python benchmarks/decode_kernels.py
    python benchmarks/decode_kernels.py --geometries tiny --dtypes fp32    # ~1.5 minutes
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

GEOMETRIES = {  # name -> (text geometry, layers of the real model)
    "qwen2-vl-2b": (dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                         vocab_size=151936, rope_theta=1e6, mrope=[16, 24, 24]), 28),
    "tiny": (None, 2),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(geometry: str, layers: int, dtype: torch.dtype):
    """A random-weight Qwen2-VL of ``geometry`` with ``layers`` decoder layers, eval, sdpa."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vcap.model.tiny import build_config, build_tokenizer

    tokenizer = build_tokenizer()
    spec = GEOMETRIES[geometry][0]
    if spec is None:
        config = build_config(tokenizer, layers=layers)
    else:
        t = dict(spec)
        mrope, theta = t.pop("mrope"), t.pop("rope_theta")
        ids = tokenizer.convert_tokens_to_ids
        text = dict(t, num_hidden_layers=layers, max_position_embeddings=32768, bos_token_id=None,
                    eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope})
        vision = dict(depth=1, embed_dim=32, num_heads=2, hidden_size=t["hidden_size"], mlp_ratio=2, in_channels=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                               vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).to(dtype).eval()


def measure(geometry: str, dtype: torch.dtype, shape: dict) -> dict:
    from vcap.grpo.decode import Sampling, decode_step, fused_decode_step
    from vcap.grpo.kernel_count import decode_step_kernels

    greedy = Sampling(do_sample=False)
    sampled = Sampling(True, temperature=0.7, top_p=0.9, min_new_tokens=3, repetition_penalty=1.3)
    steps = {"plain": decode_step, "fused": fused_decode_step}
    full_layers = GEOMETRIES[geometry][1]
    totals: dict = {}
    for layers in (1, 2):
        model = build(geometry, layers, dtype)
        for name, step in steps.items():
            totals[name, layers] = decode_step_kernels(model, greedy, step=step, **shape)
            if layers == 1:
                totals[name, "sampled"] = decode_step_kernels(model, sampled, step=step, **shape)
        del model
        gc.collect()
    out: dict = {"full_model_layers": full_layers}
    for name in steps:
        one, two, sample = totals[name, 1], totals[name, 2], totals[name, "sampled"]
        out[name] = {}
        for mode in ("eager", "compiled"):
            per_layer = two[mode] - one[mode]
            fixed = one[mode] - per_layer
            out[name][mode] = {"per_layer": per_layer, "fixed": fixed, "step_1_layer": one[mode],
                               "step_2_layers": two[mode], "step_full_model": fixed + full_layers * per_layer,
                               "sampled_tail_extra": sample[mode] - one[mode]}
        by_kind = {k: two["compiled_by_kind"].get(k, 0) - one["compiled_by_kind"].get(k, 0)
                   for k in sorted(set(one["compiled_by_kind"]) | set(two["compiled_by_kind"]))}
        out[name]["compiled"]["per_layer_by_kind"] = by_kind
        out[name]["eager"]["per_layer_ops"] = {k: two["eager_ops"].get(k, 0) - one["eager_ops"].get(k, 0)
                                               for k in sorted(two["eager_ops"])
                                               if two["eager_ops"].get(k, 0) != one["eager_ops"].get(k, 0)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES), default=["qwen2-vl-2b", "tiny"])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"],
                   help="weights and cache dtype (bf16: what the GPU runs; eager counts then include its casts)")
    p.add_argument("--rows", type=int, default=8, help="completions decoded together (prompts x G)")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--cache_len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (counts do not depend on it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    shape = dict(rows=args.rows, prompt_len=args.prompt_len, cache_len=args.cache_len)
    report = {"device": "cpu", "torch": torch.__version__, "transformers": transformers.__version__, **shape}
    start = time.perf_counter()
    for geometry in args.geometries:
        for dtype in args.dtypes:
            report[f"{geometry}/{dtype}"] = measure(geometry, DTYPES[dtype], shape)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
