"""TRL's GRPOTrainer on the same random-weight model, one image with the same visual-token count (TRL takes images,
not videos), G completions of fixed length, beta != 0. Used by ``grpo_step.py --peer trl``; needs ``pip install trl``.

Seconds per optimizer step are measured by a callback around ``training_step`` (rollout, reference and policy
passes and the optimizer step are all inside it with TRL's default steps_per_generation).
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch


def peer_dataset(rows: list[dict]):
    """The rows as a ``datasets.Dataset`` under a fixed fingerprint: hashing the Arrow table to make one fails with
    datasets 5.2 and pyarrow >= 24 (``PicklingError: Can't pickle <class 'MonthDayNano'>``), and nothing here
    is cached, so the fingerprint needs no content hash."""
    from datasets import Dataset, DatasetInfo, Features, Image, List, Value
    from datasets.table import InMemoryTable

    features = Features({"prompt": List({"role": Value("string"), "content": Value("string")}), "image": Image()})
    columns = features.encode_batch({name: [row[name] for row in rows] for name in features})
    table = InMemoryTable.from_pydict(columns, schema=features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features), fingerprint="vcap-trl-peer")


def run_trl(model, tokenizer, args) -> dict:
    import trl
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from vcap.model.tiny import build_processor
    from vcap.prompts import DEFAULT_PROMPT

    side = int(round((args.visual_tokens_measured * 28 * 28) ** 0.5))  # one image, same merged-token count
    processor = build_processor(tokenizer, pixels=side * side)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    rows = [{"prompt": [{"role": "user", "content": DEFAULT_PROMPT}], "image": image}] * (args.warmup + args.steps)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    config = GRPOConfig(
        output_dir="/tmp/vcap-trl-peer", per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.completion_length, beta=0.04,
        learning_rate=1e-9, max_steps=args.warmup + args.steps, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=not torch.cuda.is_available(), bf16=args.dtype == "bf16", gradient_checkpointing=args.gradient_checkpointing,
        generation_kwargs={"min_new_tokens": args.completion_length}, temperature=1.0, top_k=0, dataloader_num_workers=0,
        disable_tqdm=True)
    if not hasattr(model, "disable_adapter"):  # TRL loads its reference copy from the policy's path
        path = f"{config.output_dir}/policy"
        model.save_pretrained(path)
        model.config._name_or_path = path
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
                          args=config, train_dataset=peer_dataset(rows), processing_class=processor,
                          callbacks=[StepTimer()])
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout carries only the JSON
        trainer.train()
    measured = times[args.warmup:]
    return {"trl_version": trl.__version__, "image_side": side, "visual_tokens": (side // 28) ** 2,
            "step_seconds": round(float(np.mean(measured)), 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
