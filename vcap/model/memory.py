"""A memory estimate you can read before you run: per-GPU bytes of each part of a GRPO training step.

``estimate_memory`` is a pure function of the model's sizes (``ModelSize``, read from its config) and
the training plan (``TrainingPlan``: precision, PEFT, sharding, micro-batch, sequence lengths). Model
of each part, per GPU:

- weights: every parameter at its storage width (fp32 4 B, bf16 2 B; QLoRA: 4-bit language-model
  linears at 0.5 B + 1/64 B of scales, the rest in the compute dtype); FSDP divides by the GPUs.
- grads: trainable parameters x their width (fp32 masters: 4 B); optimizer: AdamW, 8 B per trainable
  parameter (two fp32 moments); both divided by the GPUs under FSDP.
- reference: a second copy of all weights for full fine-tuning with beta != 0 (LoRA disables the
  adapters instead: 0); sharded like the policy under FSDP.
- activations per micro-batch (bf16): without checkpointing each layer keeps about 8*hidden +
  4*intermediate values per token; with it, the layer inputs (hidden per token per layer) plus one
  layer's full set. Logits: 10 B per vocabulary entry per completion token (bf16 logits, fp32 copy,
  fp32 log-softmax). Trainable vision towers add their own layers over 4x the merged video tokens.
- generation KV cache: 2 (K, V) x layers x kv_heads x head_dim x 2 B per token, for all G x prompts.
- rollout LoRA copy (engine vcap, ``merge_lora``): the adapted language-model linears once more at the base
  weights' width, adapters merged in (not with 4-bit bases, which keep the adapters).
- decode buffers: per rollout row, fp32 logits, scores and Exp(1) draws over the vocabulary (12 B per entry).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

GiB = 2**30
ADAM_BYTES = 8
WIDTH = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelSize:
    total: int  # all parameters
    vision: int  # parameters of the vision tower
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lm_linear: int  # parameters in the language model's q/k/v/o/gate/up/down projections
    lora_per_rank: int  # LoRA parameters per unit of rank over those projections (sum of in + out)
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_layers: int = 0


@dataclass(frozen=True)
class TrainingPlan:
    weight_dtype: str = "bfloat16"  # storage of the policy weights (float32 for fp32 masters)
    peft_rank: int | None = None  # LoRA rank, None for full fine-tuning
    load_in_4bit: bool = False
    freeze_vision: bool = True
    beta: float = 0.04  # 0: no reference model
    shards: int = 1  # GPUs that FSDP shards parameters, grads and optimizer states over
    gradient_checkpointing: bool = True
    micro_batch_size: int = 2  # sequences per forward/backward
    prompt_tokens: int = 3300  # video + text prompt
    completion_tokens: int = 1024
    rollout_sequences: int = 8  # prompts per step x G, all alive during generation
    video_tokens: int = 3100  # merged video tokens per prompt (vision tower runs on 4x as many patches)
    merge_lora: bool = True  # the vcap engine decodes a LoRA policy from merged copies of its linears


@dataclass
class MemoryEstimate:
    parts: dict[str, float] = field(default_factory=dict)  # bytes per GPU

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        rows = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items())
        return f"{self.total / GiB:.1f} GiB per GPU ({rows})"


def trainable_parameters(size: ModelSize, plan: TrainingPlan) -> int:
    if plan.peft_rank is not None:
        return size.lora_per_rank * plan.peft_rank
    return size.total - (size.vision if plan.freeze_vision else 0)


def estimate_memory(size: ModelSize, plan: TrainingPlan) -> MemoryEstimate:
    if plan.load_in_4bit and plan.peft_rank is None:
        raise ValueError("4-bit weights need LoRA (peft_rank)")
    width = WIDTH[plan.weight_dtype]
    if plan.load_in_4bit:
        weights = size.lm_linear * (0.5 + 1 / 64) + (size.total - size.lm_linear) * width
    else:
        weights = size.total * width
    trainable = trainable_parameters(size, plan)
    trainable_width = 4 if plan.peft_rank is not None else width  # LoRA adapters are fp32 (peft's default)
    shards = max(plan.shards, 1)
    reference = weights if plan.peft_rank is None and plan.beta != 0 else 0.0
    tokens = plan.micro_batch_size * (plan.prompt_tokens + plan.completion_tokens)
    per_layer_full = tokens * (8 * size.hidden + 4 * size.intermediate) * 2
    if plan.gradient_checkpointing:
        activations = tokens * size.hidden * 2 * size.layers + per_layer_full
    else:
        activations = per_layer_full * size.layers
    if not plan.freeze_vision and size.vision_layers:
        patches = plan.micro_batch_size * plan.video_tokens * 4
        per_vision_layer = patches * (8 * size.vision_hidden + 4 * size.vision_intermediate) * 2
        activations += per_vision_layer * (1 if plan.gradient_checkpointing else size.vision_layers)
    logits = plan.micro_batch_size * plan.completion_tokens * size.vocab * 10
    kv_cache = plan.rollout_sequences * (plan.prompt_tokens + plan.completion_tokens) * size.layers * 2 * \
        size.kv_heads * size.head_dim * 2
    lora_copy = size.lm_linear * width if plan.peft_rank is not None and plan.merge_lora and \
        not plan.load_in_4bit and shards == 1 else 0.0
    decode_buffers = plan.rollout_sequences * size.vocab * 12
    return MemoryEstimate({
        "weights": weights / shards, "grads": trainable * trainable_width / shards,
        "optimizer": trainable * ADAM_BYTES / shards, "reference": reference / shards,
        "activations": float(activations), "logits": float(logits), "kv_cache": float(kv_cache),
        "rollout_lora_copy": float(lora_copy), "decode_buffers": float(decode_buffers),
    })


def options_that_fit(size: ModelSize, plan: TrainingPlan, capacity: float, gpus_available: int = 8) -> list[str]:
    """Named changes to ``plan`` whose estimate fits in ``capacity`` bytes per GPU."""
    candidates = {
        "gradient checkpointing (model.init_args.gradient_checkpointing: true)":
            replace(plan, gradient_checkpointing=True),
        "micro_batch_size 1": replace(plan, micro_batch_size=1, gradient_checkpointing=True),
        "LoRA r=64 (configs/grpo.yaml)": replace(plan, peft_rank=64, weight_dtype="bfloat16"),
        "QLoRA r=64 (configs/qlora.yaml)": replace(plan, peft_rank=64, load_in_4bit=True, weight_dtype="bfloat16",
                                                    micro_batch_size=1, gradient_checkpointing=True),
    }
    for n in (2, 4, 8, 16):
        if n <= gpus_available or n == 8:
            candidates[f"FSDP over {n} GPUs (configs/grpo_fsdp.yaml)"] = replace(
                plan, shards=n, gradient_checkpointing=True)
    fits = []
    for name, option in candidates.items():
        if option == plan:
            continue
        if estimate_memory(size, option).total <= capacity:
            if name.startswith("FSDP") and any(f.startswith("FSDP") for f in fits):
                continue  # the smallest GPU count is enough
            fits.append(name)
    return fits


def model_size(config) -> ModelSize:
    """Sizes of a transformers Qwen-VL config; parameter counts from a weightless (meta) model."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    vision = vision_hidden = vision_intermediate = vision_layers = 0
    lm_linear = lora = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual":
            vision = sum(p.numel() for p in module.parameters())
        if isinstance(module, torch.nn.Linear) and "language_model" in name and name.split(".")[-1] in (
                "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            lm_linear += module.weight.numel()
            lora += module.in_features + module.out_features
    text = config.text_config
    vis = config.vision_config
    vision_hidden = getattr(vis, "embed_dim", None) or vis.hidden_size
    vision_intermediate = getattr(vis, "intermediate_size", None) or vision_hidden * getattr(vis, "mlp_ratio", 4)
    vision_layers = getattr(vis, "depth", 0)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return ModelSize(total=total, vision=vision, hidden=text.hidden_size, intermediate=text.intermediate_size,
                     layers=text.num_hidden_layers, heads=text.num_attention_heads,
                     kv_heads=text.num_key_value_heads, head_dim=head_dim, vocab=text.vocab_size,
                     lm_linear=lm_linear, lora_per_rank=lora, vision_hidden=vision_hidden,
                     vision_intermediate=int(vision_intermediate), vision_layers=vision_layers)


def tokens_per_prompt(max_frames: int, max_pixels: int, text_tokens: int = 200, patch: int = 14,
                      merge: int = 2) -> tuple[int, int]:
    """(prompt tokens, merged video tokens) of the largest clip the data settings allow."""
    video = (max_frames // 2) * (max_pixels // (patch * patch * merge * merge))
    return video + text_tokens, video
