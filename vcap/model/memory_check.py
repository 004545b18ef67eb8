"""The start-up memory check: build the plan from a module, its trainer and datamodule; log; stop if too big."""
from __future__ import annotations

import logging

import torch

from vcap.model.memory import GiB, TrainingPlan, estimate_memory, model_size, options_that_fit, tokens_per_prompt

log = logging.getLogger(__name__)
SHARDING_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy")
HEADROOM = 0.92  # CUDA context, allocator fragmentation, NCCL buffers


class MemoryEstimateError(RuntimeError):
    pass


def plan_for(module) -> TrainingPlan:
    hp = module.hparams
    trainer = module.trainer
    shards = trainer.world_size if type(trainer.strategy).__name__ in SHARDING_STRATEGIES else 1
    data = getattr(trainer, "datamodule", None)
    dh = getattr(data, "hparams", {}) or {}
    frames = dh.get("nframes") or dh.get("max_frames") or 32
    prompts = dh.get("batch_size", 1)
    config_patch = getattr(module, "_vision_patch", 14)
    prompt_tokens, video_tokens = tokens_per_prompt(frames, dh.get("max_pixels", 151200), patch=config_patch)
    return TrainingPlan(
        weight_dtype=hp.dtype, peft_rank=getattr(module.peft_config, "r", None),
        load_in_4bit=hp.load_in_4bit, freeze_vision=hp.freeze_vision, beta=hp.get("beta", 0.0), shards=shards,
        gradient_checkpointing=hp.gradient_checkpointing, micro_batch_size=hp.get("micro_batch_size", prompts),
        prompt_tokens=prompt_tokens, completion_tokens=hp.get("max_completion_length", hp.max_new_tokens),
        rollout_sequences=prompts * hp.get("num_generations", 1), video_tokens=video_tokens,
        merge_lora=getattr(getattr(module, "rollout_engine", None), "merge_lora", False) is not False)


def device_capacity(module) -> float | None:
    device = module.trainer.strategy.root_device
    if device.type != "cuda":
        return None
    return float(torch.cuda.get_device_properties(device).total_memory)


def check_memory(module, strict: bool = True) -> None:
    """Log the estimate; raise MemoryEstimateError naming options that fit when it exceeds the GPU."""
    from transformers import AutoConfig

    from vcap.model.loading import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(module.hparams.name_or_path))
        module._vision_patch = getattr(config.vision_config, "patch_size", 14)
        size = model_size(config)
    except Exception as err:  # the loader reports a missing model properly right after
        log.debug("no memory estimate: %s", err)
        return
    plan = plan_for(module)
    estimate = estimate_memory(size, plan)
    log.info("memory estimate for %s: %s", module.hparams.name_or_path, estimate.describe())
    capacity = device_capacity(module)
    if capacity is None or estimate.total <= HEADROOM * capacity:
        return
    fits = options_that_fit(size, plan, HEADROOM * capacity)
    message = (f"the estimated {estimate.total / GiB:.1f} GiB per GPU ({estimate.describe()}) exceeds "
               f"{HEADROOM:.0%} of this GPU's {capacity / GiB:.0f} GiB. Options that would fit: "
               f"{'; '.join(fits) if fits else 'none of LoRA, QLoRA, FSDP over up to 16 GPUs, micro_batch_size 1'}. "
               "Set model.init_args.memory_check: false to run anyway.")
    if strict:
        raise MemoryEstimateError(message)
    log.warning(message)
