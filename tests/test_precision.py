"""Precision that trains: one GRPO step at lr 1e-6 moves fp32 master weights exactly as AdamW predicts
(bf16 compute via Lightning's bf16-mixed); the same step on pure-bf16 weights loses the update."""
import lightning as L
import pytest
import torch

from vcap.data.datamodule import CaptionDataModule
from vcap.grpo.module import GRPOModule
from vcap.model.precision import check_trainable_precision, rounding_gap

LR = 1e-6
EPS = 1e-8


class GradientCapture(GRPOModule):
    """Records each trainable weight and its gradient right before the optimizer step."""

    def configure_optimizers(self):
        config = super().configure_optimizers()
        self.before_step = {}

        def capture(optimizer, args, kwargs):
            self.before_step = {n: (p.detach().clone(), p.grad.detach().clone())
                                for n, p in self.model.named_parameters() if p.grad is not None}
        config["optimizer"].register_step_pre_hook(capture)
        return config


def one_step(tmp_path, tiny_path, manifest, dtype: str, precision: str, **kw):
    module = GradientCapture(name_or_path=str(tiny_path), dtype=dtype, num_generations=2, max_completion_length=6,
                             max_new_tokens=6, learning_rate=LR, micro_batch_size=4, beta=0.0, max_grad_norm=0.0,
                             rewards={"tests.helpers:LengthReward": 1.0}, log_completions_every=0, **kw)
    data = CaptionDataModule(manifest=str(manifest), processor=str(tiny_path), batch_size=2, num_workers=0, nframes=4,
                             min_pixels=56 * 56, max_pixels=56 * 56)
    L.Trainer(accelerator="cpu", max_steps=1, precision=precision, logger=False, enable_progress_bar=False,
              enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
              default_root_dir=tmp_path).fit(module, datamodule=data)
    after = dict(module.model.named_parameters())
    return module.before_step, after


def test_rounding_gap_hand_numbers():
    assert rounding_gap(0.02, torch.bfloat16) == 2.0 ** -13  # 0.02 is in [2^-6, 2^-5): 2^(-6-7)
    assert rounding_gap(1.0, torch.float32) == 2.0 ** -23
    w = torch.tensor(0.02, dtype=torch.bfloat16)
    assert torch.equal(w - LR, w)  # the update is lost to rounding


def test_fp32_master_weights_take_the_adamw_step_under_bf16_mixed(tmp_path, tiny_path, shapes_manifest):
    before, after = one_step(tmp_path, tiny_path, shapes_manifest, "float32", "bf16-mixed")
    checked = 0
    for name, (w0, g) in before.items():
        assert w0.dtype == torch.float32
        expected = w0 - LR * g / (g.abs() + EPS)  # AdamW step 1: m̂ = g, v̂ = g², no weight decay
        torch.testing.assert_close(after[name].detach(), expected, rtol=2e-7, atol=1e-9, msg=name)
        moved = g.abs() > 1e-6  # there the update is ~lr in size
        assert torch.all(after[name].detach()[moved] != w0[moved]), name
        checked += int(moved.sum())
    assert checked > 10_000  # the step really touched the language model


def test_pure_bf16_step_loses_the_update(tmp_path, tiny_path, shapes_manifest):
    with pytest.raises(ValueError, match="bf16-mixed"):
        one_step(tmp_path, tiny_path, shapes_manifest, "bfloat16", "bf16-true")
    before, after = one_step(tmp_path, tiny_path, shapes_manifest, "bfloat16", "bf16-true",
                             allow_low_precision_training=True)
    moved = changed = 0
    for name, (w0, g) in before.items():
        live = (g.float().abs() > 1e-6) & (w0.float().abs() > 0.004)  # gap there >= 2^-15 ≈ 3e-5 >> lr
        moved += int(live.sum())
        changed += int((after[name].detach()[live] != w0[live]).sum())
    assert moved > 10_000 and changed == 0  # every one of these updates rounded away


def test_check_refuses_low_precision_trainables_but_not_frozen_ones():
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    with pytest.raises(ValueError, match="allow_low_precision_training"):
        check_trainable_precision(model, 1e-6, allow=False)
    check_trainable_precision(model, 1e-6, allow=True)  # warns instead
    model.requires_grad_(False)
    check_trainable_precision(model, 1e-6, allow=False)  # frozen bf16 weights (a QLoRA/LoRA base) are fine
