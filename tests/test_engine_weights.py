"""One GRPO step on one device for the engine x weights pairs no other test trains: ``hf`` with full
fine-tuning, LoRA and QLoRA, ``vcap`` with QLoRA (README, "Scale: what runs where"). Each step must move the
trainable weights and only them."""
import lightning as L
import pytest
import torch
from peft import LoraConfig

from vcap.data.datamodule import CaptionDataModule
from vcap.grpo.module import GRPOModule


@pytest.mark.parametrize("engine, weights", [("hf", "full"), ("hf", "lora"), ("hf", "qlora"), ("vcap", "qlora")])
def test_one_grpo_step_trains_only_the_trainable_weights(tmp_path, tiny_path, shapes_manifest, engine, weights):
    peft = None if weights == "full" else LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)
    module = GRPOModule(name_or_path=str(tiny_path), num_generations=2, max_completion_length=6, max_new_tokens=6,
                        learning_rate=5e-2, micro_batch_size=4, beta=0.1, log_completions_every=0, rollout=engine,
                        rewards={"tests.helpers:LengthReward": 1.0}, peft=peft, load_in_4bit=weights == "qlora")
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=2, num_workers=0,
                             nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path).fit(module, datamodule=data)
    params = dict(module.model.named_parameters())
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert changed and changed <= trainable
    if weights != "full":
        assert all("lora_" in n for n in changed)


def test_qlora_under_a_sharding_strategy_is_refused_in_one_line():
    from vcap.training.distributed import check_strategy_support
    from vcap.errors import UsageError

    for strategy in ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy"):
        with pytest.raises(UsageError, match=rf"^model.init_args.load_in_4bit \(QLoRA\) cannot be sharded by {strategy}"):
            check_strategy_support(strategy, load_in_4bit=True)
        check_strategy_support(strategy, load_in_4bit=False)
    check_strategy_support("DDPStrategy", load_in_4bit=True)
