"""Rollout tokens/s for each engine side by side on the same model and prompts; one JSON object.

* ``hf``: ``generate(num_return_sequences=G)`` (prefills every prompt G times);
* ``vcap``: each video encoded once, each prompt prefilled once, G copies decoded from the expanded static cache.

Completions have a fixed length (``min_new_tokens``), so both engines produce the same number of tokens. On CUDA
the JSON also gives the weight-bandwidth roofline: decode tokens/s if every step only streamed the weights once
(G x prompts tokens per step), from ``--bandwidth_gbs`` (H100 SXM: 3350).

    python benchmarks/rollout.py --shape cpu-bench --visual_tokens 1024
    python benchmarks/rollout.py --shape qwen2-vl-2b --visual_tokens 512 --completion_length 256 --num_generations 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from grpo_step import SHAPES, build_model, make_inputs, sync


def run(args) -> dict:
    from transformers import GenerationConfig

    from vcap.grpo.rollout import sample_completions
    from vcap.grpo.vision import encode_videos
    from vcap.model.tiny import build_processor, build_tokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(args.shape, tokenizer, dtype, "sdpa").eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.model.visual.requires_grad_(False)
    inputs = make_inputs(args, build_processor(tokenizer), device, dtype)
    g, n_new = args.num_generations, args.completion_length
    tokens = args.prompts * g * n_new
    out: dict[str, dict] = {}
    for step in range(args.warmup + args.steps):
        for engine in args.engines:  # interleaved, so load from other processes hits both alike
            sync()
            start = time.perf_counter()
            features = encode_videos(model, inputs) if engine == "vcap" else None
            rollout = sample_completions(model, inputs, g, n_new, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                                         video_features=features, engine=engine, min_new_tokens=n_new)
            sync()
            seconds = time.perf_counter() - start
            assert rollout.completion_ids.shape == (args.prompts * g, n_new)
            if step >= args.warmup:
                out.setdefault(engine, {"seconds": []})["seconds"].append(seconds)
    for stats in out.values():
        stats["seconds"] = round(sum(stats["seconds"]) / len(stats["seconds"]), 3)
        stats["tokens_per_s"] = round(tokens / stats["seconds"], 1)
    report = {"shape": args.shape, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch_threads": torch.get_num_threads(), "dtype": args.dtype, "prompts": args.prompts, "num_generations": g,
              "visual_tokens": int(inputs["video_grid_thw"][0].prod()) // 4,
              "prompt_tokens": inputs["input_ids"].shape[1], "completion_tokens": n_new, **out}
    if "hf" in out and "vcap" in out:
        report["vcap_vs_hf"] = round(out["vcap"]["tokens_per_s"] / out["hf"]["tokens_per_s"], 2)
    if torch.cuda.is_available() and args.bandwidth_gbs:
        weight_bytes = sum(p.numel() * p.element_size() for p in model.model.language_model.parameters())
        report["roofline_tokens_per_s"] = round(args.bandwidth_gbs * 1e9 / weight_bytes * args.prompts * g, 1)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--engines", nargs="+", choices=["hf", "vcap"], default=["hf", "vcap"])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--visual_tokens", type=int, default=None, help="visual tokens per video at 224x224 frames")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=56)
    p.add_argument("--width", type=int, default=56)
    p.add_argument("--completion_length", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 avoids thread contention on a busy machine")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CUDA, 0 on CPU")
    p.add_argument("--bandwidth_gbs", type=float, default=3350.0, help="device memory bandwidth for the roofline")
    args = p.parse_args()
    if args.visual_tokens is not None:
        if args.visual_tokens % 64:
            p.error("--visual_tokens must be a multiple of 64 (one 224x224 frame pair)")
        args.height = args.width = 224
        args.frames = 2 * args.visual_tokens // 64
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    args.warmup = args.warmup if args.warmup is not None else int(torch.cuda.is_available())
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
