"""One real GRPO training step (Lightning fit, ``GRPOModule.training_step``) on a fixed rollout, recorded.

The completions, rewards and prompts are fixed per prompt index, so the same global batch can be split over
ranks: tests/test_grpo_step_reference.py runs it in-process against an independent reference, and
tests/test_distributed_reference.py runs it on 2 gloo ranks with torchrun::

    python -m torch.distributed.run --nproc-per-node 2 -m tests.step_probe CONFIG.json OUT_DIR

with CONFIG.json ``{"runs": [{"options": {...}, "rank_prompts": [[...], [...]]}, ...]}``.

Recorded per optimizer step: each rank's own accumulated gradient (before the all-reduce), the gradient that
reaches clipping, the gradient the optimizer applies, and the weights before the first and after the last step.
The optimizer is plain SGD so that a step is exactly ``w - lr * g``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from tests.video_batches import left_padded, processed_prompt
from vcap.grpo.module import GRPOModule
from vcap.grpo.rollout import Rollout
from vcap.rewards import Reward, RewardOutput

MODEL = "vcap-tiny-sft"
G, WIDTH = 3, 6
# (prompt, frames, side): videos and prompts of different sizes, so padding and video rows differ per prompt
PROMPTS = [("Describe.", 4, 56), ("Describe the video in great detail.", 2, 84), ("Caption it", 2, 56),
           ("What happens in this clip?", 4, 84)]
# completion lengths per prompt (the EOS is the last kept token; WIDTH means no EOS)
LENGTHS = [[6, 2, 4], [3, 6, 5], [1, 4, 6], [5, 5, 2]]
# rewards per prompt; None marks a sample whose reward failed (excluded from its group)
REWARDS = [[1.0, 0.0, 0.5], [0.2, 0.9, None], [0.0, 1.0, 1.0], [0.7, 0.1, 0.3]]


def prompt_batch(processor, indices: list[int]) -> dict[str, torch.Tensor]:
    """The prompts ``indices``, left-padded into one batch; each video depends only on its index."""
    return left_padded(processor, [
        processed_prompt(processor, PROMPTS[i][0],
                         np.random.default_rng(100 + i).integers(0, 255, (PROMPTS[i][1], PROMPTS[i][2],
                                                                          PROMPTS[i][2], 3), dtype=np.uint8))
        for i in indices])


def completions(indices: list[int], eos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(indices) * G, WIDTH) ids and masks, group by group; token ids depend only on the prompt index."""
    ids, masks = [], []
    for i in indices:
        gen = torch.Generator().manual_seed(1000 + i)
        for length in LENGTHS[i]:
            row = torch.randint(20, 300, (WIDTH,), generator=gen)
            if length < WIDTH:
                row[length - 1] = eos
                row[length:] = pad
            ids.append(row)
            masks.append((torch.arange(WIDTH) < length).long())
    return torch.stack(ids), torch.stack(masks)


def records(indices: list[int]) -> list[dict]:
    return [{"id": f"p{i}", "video": f"p{i}.mp4"} for i in indices]


class TableReward(Reward):
    """The fixed rewards above, looked up by record id and the sample's position in its group."""

    def score(self, parsed, samples):
        seen: dict[str, int] = {}
        scores, excluded = [], []
        for sample in samples:
            k = seen.get(sample["id"], 0)
            seen[sample["id"]] = k + 1
            value = REWARDS[int(sample["id"][1:])][k]
            scores.append(0.0 if value is None else value)
            excluded.append(value is None)
        return RewardOutput(torch.tensor(scores), excluded=torch.tensor(excluded))


def rollout_stats(indices: list[int]) -> dict[str, float]:
    """What the stand-in engine reports for these prompts: numbers that differ between ranks holding other prompts,
    so that merging them by max, sum or mean gives three different results."""
    tokens = sum(sum(LENGTHS[i]) for i in indices)
    return {"seconds": tokens / 100, "tokens_per_s": float(tokens), "decode_steps": float(len(indices)),
            "cuda_graph": float(indices[0] == 0)}


class FixedRollout:
    """Stands in for the rollout engine: returns the fixed completions of the batch's prompts."""

    def __init__(self):
        self.indices: list[int] = []
        self.temperatures: list[float] = []
        self.calls: list[dict] = []  # what the module asked for, to check against its settings
        self.report_stats = True  # False: like a user's engine that keeps no last_stats

    def generate(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id, temperature,
                 top_p, video_features=None, **context):
        self.temperatures.append(temperature)
        self.calls.append(dict(model=model, inputs=inputs, num_generations=num_generations,
                               max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                               top_p=top_p, video_features=video_features, **context))
        ids, mask = completions(self.indices, eos_token_ids[0], pad_token_id)
        if self.report_stats:  # what an engine reports of its rollout, logged as rollout/<key>
            self.last_stats = rollout_stats(self.indices)
        return Rollout(inputs, num_generations, ids, mask, video_features)


def trainable_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


class StepProbeModule(GRPOModule):
    """GRPOModule with SGD and recording hooks around the gradient sync and clipping (their code unchanged)."""

    def configure_model(self) -> None:
        super().configure_model()
        self.rollout_engine = FixedRollout()
        self.rollout_engine.report_stats = getattr(self, "engine_stats", True)
        self.local_grads, self.clip_input_grads, self.applied_grads = [], [], []

    def configure_optimizers(self):
        opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=self.hparams.learning_rate)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)}

    def training_step(self, batch, batch_idx):
        self.rollout_engine.indices = [int(r["id"][1:]) for r in batch["records"]]
        return super().training_step(batch, batch_idx)

    def sync_and_clip_gradients(self, optimizer) -> None:
        self.local_grads.append(trainable_grads(self.model))
        super().sync_and_clip_gradients(optimizer)
        self.applied_grads.append(trainable_grads(self.model))

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_input_grads.append(trainable_grads(self.model))
        super().clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                               gradient_clip_algorithm=gradient_clip_algorithm)


def run_step(options: dict, indices: list[int], root: Path, devices: int = 1, skipped: list[dict] = ()) -> dict:
    """Fit one training step on prompts ``indices`` (none: a batch whose videos were all ``skipped``);
    ``options`` are GRPOModule arguments. Returns the records."""
    from peft import LoraConfig

    options = dict(options)
    if options.pop("lora", False):
        options["peft"] = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
    options.setdefault("log_completions_every", 0)
    engine_stats = options.pop("engine_stats", True)
    module = StepProbeModule(name_or_path=MODEL, num_generations=G, max_completion_length=8,
                             rewards={"tests.step_probe:TableReward": 1.0}, **options)
    module.engine_stats = engine_stats  # read by configure_model, which fit calls again
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    processor = module.processor
    batch = {"inputs": prompt_batch(processor, indices) if indices else None, "records": records(indices),
             "skipped": list(skipped)}
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        use_distributed_sampler=False, default_root_dir=root)
    trainer.fit(module, train_dataloaders=loader)
    after = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    call = module.rollout_engine.calls[0] if indices else {}
    expected_call = dict(model=module.model, num_generations=G, max_new_tokens=8, eos_token_ids=module.eos_token_ids,
                         pad_token_id=processor.tokenizer.pad_token_id, top_p=module.hparams.top_p,
                         processor=module.processor, weights_version=0)
    rollout_call_ok = {}
    if call:
        rollout_call_ok = {k: call[k] is v if k in ("model", "processor") else call[k] == v
                           for k, v in expected_call.items()}
        rollout_call_ok["inputs"] = all(torch.equal(call["inputs"][k], v) for k, v in batch["inputs"].items())
        rollout_call_ok["video_features"] = call["video_features"] is not None  # the frozen tower encoded once
    reference = module.ref_model
    return {"rollout_call_ok": rollout_call_ok, "has_reference_copy": reference is not None,
            "reference_frozen": reference is None or not any(p.requires_grad for p in reference.parameters()),
            "before": before, "after": after, "local": module.local_grads, "clip_input": module.clip_input_grads,
            "applied": module.applied_grads, "temperatures": module.rollout_engine.temperatures,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "progress_bar": {k: float(v) for k, v in trainer.progress_bar_metrics.items()},
            "logged": {k: float(v) for k, v in trainer.logged_metrics.items()}}


def main(config_path: str, out_dir: str) -> None:
    """torchrun entry: for each run of the config, each rank fits its own prompts and saves its records."""
    config = json.loads(Path(config_path).read_text())
    rank = int(os.environ["RANK"])
    for k, run in enumerate(config["runs"]):
        torch.manual_seed(0)
        recorded = run_step(run["options"], run["rank_prompts"][rank], Path(out_dir) / str(k), devices=2)
        torch.save(recorded, Path(out_dir) / f"run{k}-rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
