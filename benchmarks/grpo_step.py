"""Time, work and memory of one GRPO step, phase by phase, for the repeated layout and the step engine.

Random-weight models with the real Qwen2-VL geometry stand in for checkpoints (no download needed), so the
numbers measure compute, not quality. ``--compare`` runs both in one process on the same model and inputs:

* ``repeated``: HF ``generate(num_return_sequences=G)``, then each prompt (video rows included) copied G times
  into every log-prob pass;
* ``engine``: each video encoded once per step, the ``vcap`` rollout engine (each prompt prefilled once), each
  prompt run once per micro-batch in the log-prob passes (shared prefix).

It prints one JSON object: seconds per phase, ratios, ViT patch rows and language-model tokens processed,
peak CUDA memory per phase.

    python benchmarks/grpo_step.py --shape cpu-bench --visual_tokens 1024 --compare       # CPU, ~minutes
    python benchmarks/grpo_step.py --shape qwen2-vl-2b --visual_tokens 512 --completion_length 256 --compare
    python benchmarks/grpo_step.py --shape paper --compare                                # 7B + LoRA, ~3k tokens
    python benchmarks/grpo_step.py --shape cpu-bench --visual_tokens 1024 --compare --peer trl
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

SHAPES = {
    "tiny": None,
    "cpu-bench": dict(text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=2, rope_theta=1e4, mrope=[16, 8, 8]),
                      vision=dict(depth=4, embed_dim=256, num_heads=4)),
    "qwen2-vl-2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                  num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, mrope=[16, 24, 24]),
                        vision=dict(depth=32, embed_dim=1280, num_heads=16)),
    "qwen2-vl-7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                  num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, mrope=[16, 24, 24]),
                        vision=dict(depth=32, embed_dim=1280, num_heads=16)),
}
SHAPES["paper"] = SHAPES["qwen2-vl-7b"]  # + LoRA r=64, 32 frames at 360x420 (~3k visual tokens), 512 new tokens
PAPER = dict(lora=True, frames=32, height=364, width=420, completion_length=512)


def build_model(shape: str, tokenizer, dtype, attn: str):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vcap.model.tiny import build_config

    if SHAPES[shape] is None:
        config = build_config(tokenizer)
    else:
        spec = SHAPES[shape]
        t = dict(spec["text"])
        mrope, theta = t.pop("mrope"), t.pop("rope_theta")
        t.setdefault("vocab_size", len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids
        text = dict(t, max_position_embeddings=32768, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                    pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope})
        vision = dict(spec["vision"], hidden_size=t["hidden_size"], mlp_ratio=4, in_channels=3, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                               vision_end_token_id=ids("<|vision_end|>"))
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config)
    return model.to(dtype)


class WorkCounter:
    """Counts ViT patch rows and language-model tokens (batch x sequence) that forward passes process."""

    def __init__(self, model):
        from vcap.grpo.vision import core_model

        core = core_model(model)
        self.vit_rows = self.lm_tokens = 0
        core.visual.register_forward_pre_hook(self._vit, with_kwargs=True)
        core.language_model.register_forward_pre_hook(self._lm, with_kwargs=True)

    def _vit(self, module, args, kwargs):
        self.vit_rows += int((args[0] if args else kwargs["hidden_states"]).shape[0])

    def _lm(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.lm_tokens += int(embeds.shape[0] * embeds.shape[1])

    def take(self) -> tuple[int, int]:
        out = (self.vit_rows, self.lm_tokens)
        self.vit_rows = self.lm_tokens = 0
        return out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_inputs(args, processor, device, dtype):
    from vcap.prompts import DEFAULT_PROMPT, build_messages

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (args.frames, args.height, args.width, 3), dtype=np.uint8) for _ in range(args.prompts)]
    text = processor.apply_chat_template(build_messages(DEFAULT_PROMPT), tokenize=False, add_generation_prompt=True)
    pixels = args.height * args.width
    inputs = processor(text=[text] * args.prompts, videos=frames, padding=True, return_tensors="pt",
                       videos_kwargs={"do_sample_frames": False, "size": {"shortest_edge": pixels, "longest_edge": pixels}})
    inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    return inputs


def run_step(model, opt, inputs, args, tokenizer, engine, counter: WorkCounter) -> dict:
    """One GRPO step (beta != 0, num_iterations updates); returns per-phase seconds, work and peak memory.
    ``engine``: the vcap rollout engine (built once, so its graphs persist across steps), or None for the
    repeated layout."""
    from vcap.grpo.losses import group_advantages, grpo_loss
    from vcap.grpo.rollout import chunked_logprobs, sequence_logprobs
    from vcap.grpo.engines import sample_completions
    from vcap.grpo.vision import encode_videos

    g, n_new, mb = args.num_generations, args.completion_length, args.micro_batch_size
    phases: dict[str, dict] = {}

    def phase(name, fn):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        rows, tokens = counter.take()
        phases[name] = {"seconds": time.perf_counter() - start, "vit_rows": rows, "lm_tokens": tokens,
                        "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                            if torch.cuda.is_available() else None)}
        return out

    features = phase("vision", lambda: encode_videos(model, inputs)) if engine else None
    torch.manual_seed(0)
    rollout = phase("rollout", lambda: sample_completions(  # min_new_tokens: fixed length, comparable timings
        model, inputs, g, n_new, [tokenizer.eos_token_id], tokenizer.pad_token_id, video_features=features,
        engine=engine if engine else "hf", **({} if engine else {"min_new_tokens": n_new})))
    n = rollout.completion_ids.shape[0]
    adv = group_advantages(torch.rand(n), g).advantages.to(rollout.completion_ids.device)
    mask = rollout.completion_mask.float()

    @torch.no_grad()
    def reference():
        if args.lora:
            with model.disable_adapter():
                return chunked_logprobs(model, rollout, mb, shared_prefix=engine)
        return chunked_logprobs(model, rollout, mb, shared_prefix=engine)

    old = phase("old", torch.no_grad()(lambda: chunked_logprobs(model, rollout, mb, shared_prefix=engine))) \
        if args.num_iterations > 1 else None
    ref = phase("reference", reference)

    def update():
        opt.zero_grad()
        for s in range(0, n, mb):
            e = min(s + mb, n)
            logp = sequence_logprobs(model, rollout, s, e, shared_prefix=engine)
            old_logp = logp.detach() if old is None else old[s:e]
            loss, _ = grpo_loss(logp, old_logp, ref[s:e], adv[s:e], mask[s:e], beta=0.04, total_sequences=n)
            loss.backward()
        opt.step()
    for i in range(args.num_iterations):
        phase(f"policy{i}" if args.num_iterations > 1 else "policy", update)
    return phases


def summarize(steps: list[dict]) -> dict:
    """Mean over measured steps; totals for the step and for reference + policy passes."""
    out = {}
    for name in steps[0]:
        rows = [s[name] for s in steps]
        out[name] = {"seconds": round(float(np.mean([r["seconds"] for r in rows])), 3), "vit_rows": rows[0]["vit_rows"],
                     "lm_tokens": rows[0]["lm_tokens"], "peak_memory_gib": rows[0]["peak_memory_gib"]}
        if "rollout_cuda_graph" in rows[-1]:
            out[name]["cuda_graph"] = rows[-1]["rollout_cuda_graph"]
    passes = [k for k in out if k == "reference" or k == "old" or k.startswith("policy")]
    out["passes"] = {"seconds": round(sum(out[k]["seconds"] for k in passes), 3),
                     "vit_rows": sum(out[k]["vit_rows"] for k in passes),
                     "lm_tokens": sum(out[k]["lm_tokens"] for k in passes)}
    phases = [k for k in out if k != "passes"]
    out["step"] = {"seconds": round(sum(out[k]["seconds"] for k in phases), 3),
                   "vit_rows": sum(out[k]["vit_rows"] for k in phases),
                   "lm_tokens": sum(out[k]["lm_tokens"] for k in phases),
                   "peak_memory_gib": max((out[k]["peak_memory_gib"] or 0) for k in phases) or None}
    return out


def run(args) -> dict:
    from transformers import GenerationConfig

    from vcap.grpo.engines import build_engine
    from vcap.model.tiny import build_processor, build_tokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    torch.manual_seed(0)
    model = build_model(args.shape, tokenizer, dtype, args.attn_implementation)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.model.visual.requires_grad_(False)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        from vcap.model.loading import LANGUAGE_MODEL_LINEARS
        if args.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=LANGUAGE_MODEL_LINEARS))
    model.train()
    inputs = make_inputs(args, processor, device, dtype)
    counter = WorkCounter(model)
    # SGD: the optimizer is not what is measured, and AdamW state would add 2x trainable memory to both sides
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    modes = ["repeated", "engine"] if args.compare else ["engine" if args.engine else "repeated"]
    engine = build_engine({"class_path": "vcap", "init_args": {
        "sampling": {"min_new_tokens": args.completion_length},  # fixed length: comparable timings
        "cuda_graph": {"on": True, "off": False}[args.cuda_graph] if args.cuda_graph else None,
        "compile": args.compile}})
    measured: dict[str, list] = {mode: [] for mode in modes}
    for step in range(args.warmup + args.steps):
        for mode in modes:  # interleaved, so load from other processes hits both sides alike
            phases = run_step(model, opt, inputs, args, tokenizer, engine if mode == "engine" else None, counter)
            if mode == "engine":
                stats = {f"rollout_{k}": v for k, v in engine.last_stats.items() if k in ("cuda_graph",)}
                phases["rollout"].update(stats)
            if step >= args.warmup:
                measured[mode].append(phases)
    results = {mode: summarize(steps) for mode, steps in measured.items()}
    report = {
        "shape": args.shape, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "dtype": args.dtype, "attn_implementation": args.attn_implementation,
        "lora": args.lora, "gradient_checkpointing": args.gradient_checkpointing, "prompts": args.prompts,
        "num_generations": args.num_generations, "num_iterations": args.num_iterations,
        "micro_batch_size": args.micro_batch_size, "frames": args.frames, "frame_size": [args.height, args.width],
        "visual_tokens": int(inputs["video_grid_thw"][0].prod()) // 4, "prompt_tokens": inputs["input_ids"].shape[1],
        "completion_tokens": args.completion_length, "steps": args.steps, **results,
    }
    if args.compare:
        rep, eng = results["repeated"], results["engine"]
        report["speedup"] = {k: round(rep[k]["seconds"] / max(eng[k]["seconds"], 1e-9), 2)
                             for k in rep if k in eng and k != "vision"}
        report["vit_rows_ratio"] = round(eng["step"]["vit_rows"] / max(rep["step"]["vit_rows"], 1), 4)
        report["lm_tokens_ratio_passes"] = round(eng["passes"]["lm_tokens"] / max(rep["passes"]["lm_tokens"], 1), 4)
    if args.peer == "trl":
        from trl_peer import run_trl

        args.visual_tokens_measured = report["visual_tokens"]
        report["trl"] = run_trl(model, tokenizer, args)
        if "engine" in results:  # without --compare there is no speedup entry yet
            report.setdefault("speedup", {})["step_vs_trl"] = round(report["trl"]["step_seconds"] / results["engine"]["step"]["seconds"], 2)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--compare", action="store_true", help="run the repeated layout and the engine, one JSON")
    p.add_argument("--engine", action="store_true", help="without --compare: measure the engine (default: repeated)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--attn_implementation", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--num_iterations", type=int, default=1, help="mu > 1 adds the old-policy pass")
    p.add_argument("--visual_tokens", type=int, default=None,
                   help="visual tokens per video at 224x224 frames (64 per 2 frames); sets --frames")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=56)
    p.add_argument("--width", type=int, default=56)
    p.add_argument("--completion_length", type=int, default=64)
    p.add_argument("--micro_batch_size", type=int, default=None, help="default: num_generations")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 avoids thread contention on a busy machine")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--peer", choices=["trl"], default=None, help="also run TRL's GRPOTrainer (needs trl installed)")
    p.add_argument("--cuda_graph", choices=["on", "off"], default=None,
                   help="the vcap engine's CUDA-graph decode (default: the engine's default, on with CUDA)")
    p.add_argument("--compile", action="store_true", help="the vcap engine compiles its decode step (inductor)")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--gradient_checkpointing", action="store_true")
    args = p.parse_args()
    if args.shape == "paper":
        for key, value in PAPER.items():
            setattr(args, key, value)
    if args.visual_tokens is not None:
        if args.visual_tokens % 64:
            p.error("--visual_tokens must be a multiple of 64 (one 224x224 frame pair)")
        args.height = args.width = 224
        args.frames = 2 * args.visual_tokens // 64
    if args.peer == "trl":
        import importlib.util
        if importlib.util.find_spec("trl") is None:
            p.error("--peer trl needs TRL: pip install trl")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    args.micro_batch_size = args.micro_batch_size or args.num_generations
    args.warmup = args.warmup if args.warmup is not None else int(torch.cuda.is_available())
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
