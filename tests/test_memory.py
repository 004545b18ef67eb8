"""The memory estimate against hand-computed numbers, its options list, and the start-up check."""
import pytest

from vcap.model.memory import (GiB, ModelSize, TrainingPlan, estimate_memory, model_size, options_that_fit,
                               tokens_per_prompt)
from vcap.model.memory_check import MemoryEstimateError, check_memory

# a 1B-parameter model with round numbers: 100M of them in the ViT, 600M in LM projections
SIZE = ModelSize(total=10**9, vision=10**8, hidden=1000, intermediate=4000, layers=10, heads=10, kv_heads=2,
                 head_dim=100, vocab=10_000, lm_linear=6 * 10**8, lora_per_rank=10**6)


def test_full_finetune_fp32_masters_hand_numbers():
    plan = TrainingPlan(weight_dtype="float32", beta=0.04, shards=1, gradient_checkpointing=False, micro_batch_size=1,
                        prompt_tokens=900, completion_tokens=100, rollout_sequences=4)
    parts = estimate_memory(SIZE, plan).parts
    assert parts["weights"] == 4e9  # 1e9 x 4 B
    assert parts["grads"] == 9e8 * 4  # the ViT is frozen: 900M trainable
    assert parts["optimizer"] == 9e8 * 8
    assert parts["reference"] == 4e9
    assert parts["activations"] == 1000 * (8 * 1000 + 4 * 4000) * 2 * 10  # 1000 tokens, 10 layers, bf16
    assert parts["logits"] == 100 * 10_000 * 10
    assert parts["kv_cache"] == 4 * 1000 * 10 * 2 * 2 * 100 * 2
    assert parts["decode_buffers"] == 4 * 10_000 * 12  # fp32 logits, scores, Exp(1) draws per row
    assert parts["rollout_lora_copy"] == 0  # full fine-tuning decodes from the weights themselves


def test_sharding_lora_qlora_and_checkpointing_hand_numbers():
    fsdp = estimate_memory(SIZE, TrainingPlan(weight_dtype="float32", shards=8)).parts
    assert fsdp["weights"] == 4e9 / 8 and fsdp["optimizer"] == 9e8 * 8 / 8 and fsdp["reference"] == 4e9 / 8
    lora = estimate_memory(SIZE, TrainingPlan(weight_dtype="bfloat16", peft_rank=64)).parts
    assert lora["weights"] == 2e9 and lora["grads"] == 64e6 * 4 and lora["optimizer"] == 64e6 * 8
    assert lora["reference"] == 0  # adapters off, no second copy
    assert lora["rollout_lora_copy"] == 6e8 * 2  # merged copies of the adapted bf16 linears
    no_merge = estimate_memory(SIZE, TrainingPlan(weight_dtype="bfloat16", peft_rank=64, merge_lora=False)).parts
    assert no_merge["rollout_lora_copy"] == 0
    qlora = estimate_memory(SIZE, TrainingPlan(peft_rank=64, load_in_4bit=True)).parts
    assert qlora["weights"] == pytest.approx(6e8 * (0.5 + 1 / 64) + 4e8 * 2)
    assert qlora["rollout_lora_copy"] == 0  # 4-bit bases keep the adapters
    ckpt = estimate_memory(SIZE, TrainingPlan(gradient_checkpointing=True, micro_batch_size=1, prompt_tokens=900,
                                              completion_tokens=100)).parts
    assert ckpt["activations"] == 1000 * 1000 * 2 * 10 + 1000 * (8 * 1000 + 4 * 4000) * 2
    assert estimate_memory(SIZE, TrainingPlan(beta=0.0)).parts["reference"] == 0
    with pytest.raises(ValueError, match="LoRA"):
        estimate_memory(SIZE, TrainingPlan(load_in_4bit=True))


def test_options_that_fit_name_the_cheaper_setups():
    plan = TrainingPlan(weight_dtype="float32", micro_batch_size=1, prompt_tokens=900, completion_tokens=100,
                        rollout_sequences=4)
    full = estimate_memory(SIZE, plan).total
    # 4 + 3.6 + 7.2 + 4 GB + activations, logits, KV, decode buffers
    assert full == pytest.approx(18.8e9 + 6.8e7 + 1e7 + 3.2e7 + 4.8e5)
    fits = options_that_fit(SIZE, plan, capacity=8 * GiB)
    assert "LoRA r=64 (configs/grpo.yaml)" in fits and "QLoRA r=64 (configs/qlora.yaml)" in fits
    assert [f for f in fits if f.startswith("FSDP")] == ["FSDP over 4 GPUs (configs/grpo_fsdp.yaml)"]
    assert "micro_batch_size 1" not in fits  # already 1
    assert tokens_per_prompt(32, 151200) == (16 * 192 + 200, 16 * 192)  # 151200 px = 192 merged 28x28 tokens


def test_model_size_reads_the_config_without_weights(tiny_path):
    from transformers import AutoConfig

    from vcap.model.loading import load_policy

    size = model_size(AutoConfig.from_pretrained(tiny_path))
    model = load_policy(str(tiny_path))
    assert size.total == sum(p.numel() for p in model.parameters())
    assert size.vision == sum(p.numel() for p in model.model.visual.parameters())
    assert size.hidden == 64 and size.layers == 2 and size.lora_per_rank > 0


def test_startup_check_stops_with_options_when_the_gpu_is_too_small(tiny_path, monkeypatch, caplog):
    from types import SimpleNamespace

    import vcap.model.memory_check as memory_check
    from vcap.grpo.module import GRPOModule

    module = GRPOModule(name_or_path=str(tiny_path), dtype="float32", micro_batch_size=2)
    trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(), datamodule=None)
    monkeypatch.setattr(GRPOModule, "trainer", property(lambda self: trainer))
    monkeypatch.setattr(memory_check, "device_capacity", lambda module: 1 * 2**20)  # a 1 MiB "GPU"
    with pytest.raises(MemoryEstimateError, match="Options that would fit"):
        check_memory(module)
    caplog.set_level("INFO", logger="vcap")
    monkeypatch.setattr(memory_check, "device_capacity", lambda module: 80 * GiB)
    check_memory(module)
    assert "memory estimate" in caplog.text and "weights" in caplog.text
