"""Print (JSON) the start-up memory estimate of each shipped 7B recipe on its target GPU, offline.

    python benchmarks/memory_estimate.py [configs/grpo.yaml configs/grpo.yaml+configs/qlora.yaml ...]

The model sizes come from a weightless (meta-device) Qwen2-VL-7B built from its published dimensions,
so no download is needed; the plan is read from the recipe YAML exactly as `vcap fit` would build it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from vcap.model.memory import GiB, TrainingPlan, estimate_memory, model_size, options_that_fit, tokens_per_prompt

ROOT = Path(__file__).resolve().parent.parent
# name -> (recipe, target GPU memory in bytes as torch reports it, GPU label)
RECIPES = {
    "configs/grpo.yaml": (79.1 * GiB, "1x H100 80GB"),
    "configs/grpo.yaml+configs/grpo_fsdp.yaml": (79.1 * GiB, "8x H100 80GB"),
    "configs/grpo.yaml+configs/qlora.yaml": (23.6 * GiB, "1x 24 GB GPU (RTX 4090 / L4 class)"),
}


def qwen2_vl_7b_config():
    from transformers import Qwen2VLConfig

    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def merged(names: str) -> dict:
    """``a.yaml+b.yaml``: the configs stacked as ``--config a.yaml --config b.yaml`` stacks them."""
    cfg: dict = {}
    for name in names.split("+"):
        cfg = deep_merge(cfg, yaml.safe_load((ROOT / name).read_text()))
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plan_from_recipe(cfg: dict) -> TrainingPlan:
    m, d, t = cfg["model"]["init_args"], cfg["data"]["init_args"], cfg.get("trainer", {})
    strategy = t.get("strategy")
    strategy_name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")
    sharded = any(s in strategy_name.lower() for s in ("fsdp", "modelparallel", "deepspeed"))
    prompts = d.get("batch_size", 1)
    prompt_tokens, video_tokens = tokens_per_prompt(d.get("nframes") or d.get("max_frames", 32),
                                                    d.get("max_pixels", 151200))
    peft = m.get("peft")
    return TrainingPlan(
        weight_dtype=m.get("dtype", "float32"), peft_rank=peft["init_args"]["r"] if peft else None,
        load_in_4bit=m.get("load_in_4bit", False), freeze_vision=m.get("freeze_vision", True), beta=m.get("beta", 0.04),
        shards=t.get("devices", 1) if sharded else 1, gradient_checkpointing=m.get("gradient_checkpointing", False),
        micro_batch_size=m.get("micro_batch_size", 8), prompt_tokens=prompt_tokens,
        completion_tokens=m.get("max_completion_length", 1024), rollout_sequences=prompts * m.get("num_generations", 8),
        video_tokens=video_tokens)


def main(paths: list[str]) -> None:
    size = model_size(qwen2_vl_7b_config())
    out = {"model": "Qwen2-VL-7B-Instruct (meta-device sizes)", "parameters": size.total, "recipes": {}}
    for name in paths or list(RECIPES):
        capacity, gpu = RECIPES.get(name, (79.1 * GiB, "80 GB GPU"))
        plan = plan_from_recipe(merged(name))
        est = estimate_memory(size, plan)
        out["recipes"][name] = {
            "target": gpu, "per_gpu_gib": round(est.total / GiB, 1), "capacity_gib": round(capacity / GiB, 1),
            "fits": est.total <= 0.92 * capacity, "parts_gib": {k: round(v / GiB, 2) for k, v in est.parts.items()},
            "plan": plan.__dict__,
            "other_options_that_fit": options_that_fit(size, plan, 0.92 * capacity),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
