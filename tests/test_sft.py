"""SFTModule: the teacher-forced NLL of <think>structure</think><answer>caption</answer> falls when trained."""
import lightning as L
import pytest

from vcap.data.datamodule import CaptionDataModule
from vcap.methods.sft import SFTModule


class LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_sft_loss_falls_on_repeated_batch(tmp_path, tiny_path, shapes_manifest):
    module = SFTModule(name_or_path=str(tiny_path), learning_rate=5e-3, freeze_vision=False, max_target_length=96,
                       rewards={"format": 1.0})
    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=8, num_workers=0,
                             nframes=4, min_pixels=56 * 56, max_pixels=56 * 56, shuffle=False)
    history = LossHistory()
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[history])
    trainer.fit(module, datamodule=data)  # 8 train videos, batch 8: the same batch every step
    first, last = history.losses[0], history.losses[-1]
    assert len(history.losses) == 10
    assert first > 3.0  # a random tiny model: near-uniform over its vocabulary
    # Adam on one repeated batch may bounce for a step or two; the trend must still fall clearly
    early, late = sum(history.losses[:3]) / 3, sum(history.losses[-3:]) / 3
    assert last < 0.8 * first and late < 0.8 * early, history.losses


def test_sft_targets_need_structure_and_caption(tiny_path):
    module = SFTModule(name_or_path=str(tiny_path), rewards={"format": 1.0})
    module.configure_model()
    ids, mask = module.targets([{"id": "a", "caption": "A red circle.",
                                 "structure": [{"subject": "circle", "attributes": ["red"], "actions": []}]}])
    text = module.tokenizer.decode(ids[0][mask[0].bool()])
    assert text.startswith("<think>") and "</think><answer>A red circle.</answer>" in text
    with pytest.raises(KeyError, match="structure"):
        module.targets([{"id": "b", "caption": "x"}])
