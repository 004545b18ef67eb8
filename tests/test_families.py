"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL through fit (full and LoRA, with the reference), validate and predict,
each on a tiny random model with the family's real processor classes; behaviour follows the config class."""
import shutil

import lightning as L
import pytest
import torch
from peft import LoraConfig

from vcap.data.datamodule import CaptionDataModule
from vcap.grpo.module import GRPOModule
from vcap.grpo.rollout import chunked_logprobs
from vcap.grpo.engines import sample_completions
from vcap.model.families import QWEN2_5_VL, QWEN2_VL, QWEN3_VL, family_for, family_of
from vcap.model.loading import load_policy, load_processor

FAMILIES = {"vcap-tiny": (QWEN2_VL, "Qwen2VLProcessor"),
            "vcap-tiny-qwen2.5-vl": (QWEN2_5_VL, "Qwen2_5_VLProcessor"),
            "vcap-tiny-qwen3-vl": (QWEN3_VL, "Qwen3VLProcessor")}
REWARDS = {"tests.helpers:LengthReward": 1.0, "format": 1.0}


def make(name, manifest, **kw):
    module = GRPOModule(name_or_path=name, num_generations=2, max_completion_length=6, max_new_tokens=6,
                        learning_rate=5e-2, micro_batch_size=3, rewards=REWARDS, beta=0.1, log_completions_every=0,
                        **kw)
    data = CaptionDataModule(manifest=str(manifest), processor=name, batch_size=2, val_batch_size=4, num_workers=0,
                             nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    return module, data


def trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                     num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, **kw)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_is_read_from_the_config_class(name, vcap_cache, tmp_path):
    family, processor_class = FAMILIES[name]
    processor = load_processor(name)
    assert type(processor).__name__ == processor_class
    assert family_for(name) is family and family_of(load_policy(name).config) is family
    disguised = tmp_path / "Qwen3-VL-7B-not-really"  # the id says Qwen3-VL; the config decides
    shutil.copytree(load_policy.__globals__["resolve_model_path"](name), disguised)
    assert family_for(str(disguised)) is family


def test_unknown_config_class_is_refused_with_the_supported_list():
    class LlavaConfig:
        pass

    with pytest.raises(ValueError, match="Qwen2.5-VL.*Qwen3-VL"):
        family_of(LlavaConfig())


def test_families_timing_inputs(shapes_manifest, vcap_cache):
    shapes = {}
    for name in FAMILIES:
        _, data = make(name, shapes_manifest)
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        shapes[name] = batch
    assert "second_per_grid_ts" in shapes["vcap-tiny-qwen2.5-vl"]["inputs"]
    assert "second_per_grid_ts" not in shapes["vcap-tiny"]["inputs"]
    tokenizer = load_processor("vcap-tiny-qwen3-vl").tokenizer
    prompt = tokenizer.decode(shapes["vcap-tiny-qwen3-vl"]["inputs"]["input_ids"][0])
    assert " seconds>" in prompt  # Qwen3-VL's frame timestamps, from the decoded clip's timing


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_full_finetune_with_reference_then_validate_and_predict(name, tmp_path, shapes_manifest, vcap_cache):
    module, data = make(name, shapes_manifest)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer(tmp_path).fit(module, datamodule=data)
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert any("language_model" in n for n in changed) and not any("visual" in n for n in changed)
    ref = dict(module.ref_model.named_parameters())
    assert all(torch.equal(ref[n], before[n]) for n in changed)  # the reference stays at the start

    val = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    metrics = val.validate(module, datamodule=data, verbose=False)[0]
    assert "val/reward" in metrics and "val/think_f1" in metrics
    data.hparams.predict_videos = [str(shapes_manifest)]
    rows = [r for batch in val.predict(module, datamodule=data) for r in batch]
    assert len(rows) == 12 and all("completion" in r for r in rows)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lora_trains_adapters_and_reference_is_the_base(name, tmp_path, shapes_manifest, vcap_cache):
    module, data = make(name, shapes_manifest, peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    module.configure_model()
    assert module.ref_model is None
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer(tmp_path).fit(module, datamodule=data)
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n and "language_model" in n for n in changed)

    batch = next(iter(data.train_dataloader()))
    rollout = sample_completions(module.model, batch["inputs"], 2, 6, module.eos_token_ids,
                                 module.tokenizer.pad_token_id)
    with torch.no_grad():
        with module.model.disable_adapter():
            ref = chunked_logprobs(module.model, rollout, 4)
        policy = chunked_logprobs(module.model, rollout, 1)  # micro-batches of 1 select each video's rows
        base = chunked_logprobs(load_policy(name).eval(), rollout, 4)
    assert torch.equal(ref, base) and not torch.equal(policy, base)
