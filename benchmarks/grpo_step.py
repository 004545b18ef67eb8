"""Time and memory of one GRPO step, phase by phase: rollout, reference log-probs, policy update.

Random-weight models with the real Qwen2-VL geometry stand in for checkpoints (no download needed), so the
numbers measure compute, not quality. Prints one JSON object per configuration.

    python benchmarks/grpo_step.py --shape tiny                       # CPU smoke run
    python benchmarks/grpo_step.py --shape qwen2-vl-2b --lora --frames 16 --pixels 151200
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

SHAPES = {
    "tiny": None,
    "qwen2-vl-2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                  num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, mrope=[16, 24, 24]),
                        vision_hidden=1536),
    "qwen2-vl-7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                  num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, mrope=[16, 24, 24]),
                        vision_hidden=3584),
}


def build_model(shape: str, tokenizer, dtype):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vcap.model.tiny import build_config

    if SHAPES[shape] is None:
        config = build_config(tokenizer)
    else:
        spec = SHAPES[shape]
        t = dict(spec["text"])
        mrope = t.pop("mrope")
        ids = tokenizer.convert_tokens_to_ids
        text = dict(t, max_position_embeddings=32768, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                    pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": t.pop("rope_theta"), "mrope_section": mrope})
        text.pop("rope_theta", None)
        vision = dict(depth=32, embed_dim=1280, hidden_size=spec["vision_hidden"], num_heads=16, mlp_ratio=4,
                      in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                               vision_end_token_id=ids("<|vision_end|>"))
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config)
    return model.to(dtype)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def run(args) -> dict:
    from transformers import GenerationConfig

    from vcap.grpo.losses import group_advantages, grpo_loss
    from vcap.grpo.rollout import chunked_logprobs, sample_completions, select, token_logprobs
    from vcap.model.tiny import build_processor, build_tokenizer
    from vcap.prompts import DEFAULT_PROMPT, build_messages

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, pixels=args.pixels)
    model = build_model(args.shape, tokenizer, dtype)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.model.visual.requires_grad_(False)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        from vcap.model.loading import LANGUAGE_MODEL_LINEARS
        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=LANGUAGE_MODEL_LINEARS))
    side = int(args.pixels ** 0.5) // 28 * 28
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (args.frames, side, side, 3), dtype=np.uint8) for _ in range(args.prompts)]
    text = processor.apply_chat_template(build_messages(DEFAULT_PROMPT), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text] * args.prompts, videos=frames, padding=True, return_tensors="pt",
                       videos_kwargs={"do_sample_frames": False})
    inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    g, n_new = args.num_generations, args.completion_length
    results = []
    for step in range(args.steps + 1):  # step 0 warms up kernels and the allocator
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        def rollout_fn():
            model.generation_config.min_new_tokens = n_new  # fixed length: comparable timings
            return sample_completions(model, inputs, g, n_new, [tokenizer.eos_token_id], tokenizer.pad_token_id)
        rollout, t_gen = timed(rollout_fn)
        rewards = torch.rand(rollout.completion_ids.shape[0])
        adv = group_advantages(rewards, g).advantages.to(device)

        def ref_fn():
            with torch.no_grad():
                if args.lora:
                    with model.disable_adapter():
                        return chunked_logprobs(model, rollout, args.micro_batch_size)
                return chunked_logprobs(model, rollout, args.micro_batch_size)
        ref, t_ref = timed(ref_fn)

        def update_fn():
            n, mb = rollout.completion_ids.shape[0], args.micro_batch_size
            opt.zero_grad()
            for s in range(0, n, mb):
                e = min(s + mb, n)
                logp = token_logprobs(model, select(rollout.inputs, s, e), rollout.completion_ids[s:e],
                                      rollout.completion_mask[s:e])
                loss, _ = grpo_loss(logp, logp.detach(), ref[s:e], adv[s:e], rollout.completion_mask[s:e].float(),
                                    beta=0.04, total_sequences=n)
                loss.backward()
            opt.step()
        _, t_upd = timed(update_fn)
        if step:
            results.append((t_gen, t_ref, t_upd))
    t_gen, t_ref, t_upd = (float(np.mean(x)) for x in zip(*results))
    n_seq = args.prompts * g
    prompt_len = inputs["input_ids"].shape[1]
    return {
        "shape": args.shape, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "dtype": args.dtype, "lora": args.lora, "gradient_checkpointing": args.gradient_checkpointing,
        "prompts": args.prompts, "num_generations": g, "frames": args.frames, "pixels_per_frame": side * side,
        "prompt_tokens": prompt_len, "completion_tokens": n_new,
        "seconds": {"rollout": round(t_gen, 3), "reference": round(t_ref, 3), "update": round(t_upd, 3),
                    "step": round(t_gen + t_ref + t_upd, 3)},
        "generated_tokens_per_s": round(n_seq * n_new / t_gen, 1),
        "trained_tokens_per_s": round(n_seq * (prompt_len + n_new) / t_upd, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--pixels", type=int, default=56 * 56)
    p.add_argument("--completion_length", type=int, default=64)
    p.add_argument("--micro_batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--gradient_checkpointing", action="store_true")
    args = p.parse_args()
    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
