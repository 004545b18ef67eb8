"""GRPOModule end to end on the tiny model: a step trains, LoRA touches only adapters, resume continues."""
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig

from vcap.data.datamodule import CaptionDataModule
from vcap.grpo.module import GRPOModule
from vcap.grpo.rollout import chunked_logprobs
from vcap.grpo.engines import sample_completions
from vcap.model.loading import load_policy
from vcap.training.seeding import base_seed, seed_step

REWARDS = {"tests.helpers:LengthReward": 1.0, "format": 1.0}


def make_module(tiny_path, **overrides):
    kw = dict(name_or_path=str(tiny_path), num_generations=2, max_completion_length=6, max_new_tokens=6,
              learning_rate=5e-2, micro_batch_size=3, rewards=REWARDS, beta=0.1, log_completions_every=1,
              freeze_vision=True)
    kw.update(overrides)
    return GRPOModule(**kw)


def make_data(tiny_path, manifest):
    return CaptionDataModule(manifest=str(manifest), processor=str(tiny_path), batch_size=2, val_batch_size=4,
                             num_workers=0, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)


def make_trainer(tmp_path, max_steps, **kw):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, **kw)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_full_finetune_step_changes_language_model_not_frozen_vit(tmp_path, tiny_path, shapes_manifest):
    module = make_module(tiny_path)
    module.configure_model()
    before = snapshot(module)
    make_trainer(tmp_path, 1, enable_checkpointing=False).fit(module, datamodule=make_data(tiny_path, shapes_manifest))
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert any("language_model" in n for n in changed)
    assert not any(".visual." in n for n in changed)
    ref = dict(module.ref_model.named_parameters())  # the frozen reference copy stays at the start point
    assert all(torch.equal(ref[n], before[n]) for n in changed)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "id", "reward", "completion", "failure"} <= set(samples[0])


def test_lora_only_adapters_change_and_reference_is_the_base_model(tmp_path, tiny_path, shapes_manifest):
    module = make_module(tiny_path, peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    module.configure_model()
    assert module.ref_model is None  # no second copy with PEFT
    before = snapshot(module)
    data = make_data(tiny_path, shapes_manifest)
    make_trainer(tmp_path, 1, enable_checkpointing=False).fit(module, datamodule=data)
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert not any("visual" in n for n in changed)

    batch = next(iter(data.train_dataloader()))
    rollout = sample_completions(module.model, batch["inputs"], 2, 6, module.eos_token_ids,
                                 module.tokenizer.pad_token_id)
    with torch.no_grad(), module.model.disable_adapter():
        ref = chunked_logprobs(module.model, rollout, 4)
    with torch.no_grad():
        policy = chunked_logprobs(module.model, rollout, 4)
        base = chunked_logprobs(load_policy(str(tiny_path)).eval(), rollout, 4)
    assert torch.equal(ref, base)
    assert not torch.equal(policy, base)  # the adapters did move the policy


def test_resume_restores_step_optimizer_and_rng(tmp_path, tiny_path, shapes_manifest):
    ckpt_dir = tmp_path / "ckpt"
    first = make_module(tiny_path)
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=-1)
    make_trainer(tmp_path, 2, callbacks=[ckpt]).fit(first, datamodule=make_data(tiny_path, shapes_manifest))
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and saved["vcap_run"] == {"seed": base_seed(), "skipped_videos": 0}
    assert not any(k.startswith("ref_model.") for k in saved["state_dict"])  # the reference is rebuilt, not stored

    resumed = make_module(tiny_path)
    trainer = make_trainer(tmp_path, 3, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    step_rng = {}
    original = resumed.training_step

    def spy(batch, batch_idx):
        step_rng["state"] = torch.get_rng_state().clone()
        return original(batch, batch_idx)

    resumed.training_step = spy
    torch.manual_seed(123)  # whatever the process drew before: the step's randomness depends on the step alone
    trainer.fit(resumed, datamodule=make_data(tiny_path, shapes_manifest), ckpt_path="last")
    assert trainer.global_step == 3
    seed_step(base_seed(), 2, 0)  # what step 3 (after 2 optimizer steps) starts from in the uninterrupted run
    assert torch.equal(step_rng["state"], torch.get_rng_state())
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {3}  # 2 restored + 1 new, not a fresh optimizer


def test_mid_epoch_resume_continues_with_the_same_batches(tmp_path, tiny_path, shapes_manifest):
    def run(max_steps, ckpt_path=None, callbacks=()):
        module = make_module(tiny_path, beta=0.0)
        seen = []
        step = module.training_step

        def recording_step(batch, batch_idx):
            seen.append([r["id"] for r in batch["records"]])
            return step(batch, batch_idx)
        module.training_step = recording_step
        trainer = make_trainer(tmp_path, max_steps, callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
        trainer.fit(module, datamodule=make_data(tiny_path, shapes_manifest), ckpt_path=ckpt_path)
        return seen

    straight = run(3)  # 8 train videos, batch 2: steps 1-3 are batches 1-3 of epoch 0
    ckpt = ModelCheckpoint(dirpath=tmp_path / "mid", save_last=True, every_n_train_steps=1)
    assert run(2, callbacks=[ckpt]) == straight[:2]
    resumed = run(3, ckpt_path=str(tmp_path / "mid/last.ckpt"), callbacks=[ModelCheckpoint(dirpath=tmp_path / "mid")])
    assert resumed == straight[2:3]


@pytest.mark.parametrize("loss_type, iterations", [("dapo", 2), ("dr_grpo", 1)])
def test_other_losses_and_multiple_iterations_run(tmp_path, tiny_path, shapes_manifest, loss_type, iterations):
    module = make_module(tiny_path, loss_type=loss_type, num_iterations=iterations, beta=0.0)
    trainer = make_trainer(tmp_path, 2, enable_checkpointing=False)
    trainer.fit(module, datamodule=make_data(tiny_path, shapes_manifest))
    assert module.ref_model is None and trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_bad_settings_fail_at_construction(tiny_path):
    with pytest.raises(ValueError, match="valid"):
        make_module(tiny_path, loss_type="ppo")
    with pytest.raises(ValueError, match="num_generations"):
        make_module(tiny_path, num_generations=1)
    with pytest.raises(ValueError, match="QLoRA|PEFT"):
        load_policy(str(tiny_path), load_in_4bit=True)


@pytest.mark.parametrize("peft", [None, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)])
def test_shared_prefix_step_equals_repeated_step(tmp_path, tiny_path, shapes_manifest, peft):
    """The whole step (rollout, old and reference passes, mu=2 updates) moves the weights the same either way.

    Plain SGD: Adam's first step is lr * sign(g), which would turn float noise on a near-zero gradient into 2 lr.
    """
    def step(shared_prefix):
        torch.manual_seed(0)
        module = make_module(tiny_path, shared_prefix=shared_prefix, num_iterations=2, micro_batch_size=3, peft=peft,
                             max_grad_norm=0.0)
        module.configure_model()

        def sgd():
            opt = torch.optim.SGD([p for p in module.model.parameters() if p.requires_grad], lr=1.0)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)}
        module.configure_optimizers = sgd
        before = snapshot(module)
        make_trainer(tmp_path, 1, enable_checkpointing=False).fit(module, datamodule=make_data(tiny_path, shapes_manifest))
        return {n: (p.detach() - before[n], before[n]) for n, p in module.model.named_parameters() if p.requires_grad}

    shared, repeated = step(True), step(False)
    assert any(d.abs().max() > 0 for d, _ in repeated.values())
    for name, (delta, weight) in repeated.items():
        err, scale = (shared[name][0] - delta).abs().max(), delta.abs().max()
        rounding = 2 * torch.finfo(torch.float32).eps * weight.abs().max()  # the weights' own fp32 resolution
        assert err <= 2e-5 * scale + rounding, f"{name}: {err:.3g} vs {scale:.3g}"  # fp32 noise of two summations
