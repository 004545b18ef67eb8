"""Export that serves: a LoRA fit exports merged weights + processor + preprocessing; reloading the export
gives the same greedy captions, and a datamodule pointed at it preprocesses as in training."""
import json

import lightning as L
import torch
from peft import LoraConfig

from vcap.data.datamodule import CaptionDataModule
from vcap.grpo.module import GRPOModule
from vcap.grpo.engines import sample_completions
from vcap.model.loading import load_policy, load_processor
from vcap.prompts import DEFAULT_PROMPT


def test_lora_export_reloads_to_the_same_greedy_captions(tmp_path, tiny_path, shapes_manifest):
    export = tmp_path / "export"
    module = GRPOModule(name_or_path=str(tiny_path), num_generations=2, max_completion_length=6, max_new_tokens=10,
                        learning_rate=5e-2, micro_batch_size=4, beta=0.1, log_completions_every=0,
                        rewards={"tests.helpers:LengthReward": 1.0}, export_dir=str(export),
                        peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=2, val_batch_size=4,
                             num_workers=0, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path).fit(module, datamodule=data)

    assert {"config.json", "model.safetensors", "chat_template.jinja", "vcap_preprocessing.json"} <= \
        {p.name for p in export.iterdir()}
    settings = json.loads((export / "vcap_preprocessing.json").read_text())
    assert settings["nframes"] == 4 and settings["max_pixels"] == 56 * 56 and settings["prompt"] == DEFAULT_PROMPT
    served = load_policy(str(export)).eval()
    assert not any("lora_" in n for n, _ in served.named_parameters())  # merged: plain weights, no peft

    # a datamodule left at its defaults picks up the training preprocessing from the export
    fresh = CaptionDataModule(manifest=str(shapes_manifest), processor=str(export), val_batch_size=4, num_workers=0)
    fresh.setup("validate")
    assert fresh.hparams.nframes == 4 and fresh.sampling.nframes == 4 and fresh.hparams.max_pixels == 56 * 56
    batch = next(iter(fresh.val_dataloader()))
    reference = next(iter(data.val_dataloader()))
    assert torch.equal(batch["inputs"]["pixel_values_videos"], reference["inputs"]["pixel_values_videos"])
    assert torch.equal(batch["inputs"]["input_ids"], reference["inputs"]["input_ids"])
    assert load_processor(str(export)).chat_template == module.processor.chat_template

    def greedy_ids(model):
        return sample_completions(model, batch["inputs"], 1, 10, module.eos_token_ids, module.tokenizer.pad_token_id,
                                  do_sample=False).completion_ids

    in_memory = greedy_ids(module.model)
    assert torch.equal(greedy_ids(served), in_memory)  # the same greedy tokens through the reloaded export
    with torch.no_grad():  # and the export carries the trained adapters: its logits differ from the base model's
        ids = batch["inputs"]
        assert not torch.allclose(served(**ids).logits, load_policy(str(tiny_path)).eval()(**ids).logits)
    module.model = served
    assert module.greedy(batch) == [module.clean(module.decode(in_memory))[i] for i in range(4)]
