"""``PeriodicBenchmark``: run a benchmark on a subset every N training steps, inside ``vcap fit``.

    trainer:
      callbacks:
        - class_path: vcap.bench.callback.PeriodicBenchmark
          init_args: {bench: dream1k, annotations: ..., video_dir: ..., limit: 50, every_n_steps: 200,
                      judge_options: {model: ..., base_url: ...}}

``protocol`` defaults to 'robust' here (tolerant judging for in-training use); 'official' is available.
Each evaluation writes to ``<output_dir>/step_<N>/`` (generations, records.jsonl, results.json) and logs the
flat metrics as ``bench/<bench>/...``. Judge replies are cached across evaluations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from vcap.bench.datamodule import BenchDataModule
from vcap.bench.identity import caption_key
from vcap.provenance import about_run


class PeriodicBenchmark(L.Callback):
    def __init__(self, bench: str, annotations: str, video_dir: str, every_n_steps: int = 500, limit: int | None = 32,
                 output_dir: str | None = None, judge: str = "openai", judge_options: dict[str, Any] | None = None,
                 data_options: dict[str, Any] | None = None, protocol: str = "robust"):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.bench, self.annotations, self.video_dir = bench, annotations, video_dir
        self.every_n_steps, self.limit = every_n_steps, limit
        self.output_dir = Path(output_dir or Path("runs") / "bench" / f"{bench}-periodic")
        self.judge, self.judge_options, self.data_options = judge, judge_options or {}, data_options or {}
        self.protocol = protocol  # robust by default: during training a lenient judge beats leaderboard parity
        self._last_step = -1

    def datamodule(self, step: int, processor: str) -> BenchDataModule:
        # one judge cache for all evaluations: the same caption is never judged twice
        options = {"cache": str(self.output_dir / "judge_cache.sqlite"), **self.judge_options}
        dm = BenchDataModule(bench=self.bench, annotations=self.annotations, video_dir=self.video_dir, limit=self.limit,
                             output_dir=str(self.output_dir / f"step_{step}"), judge=self.judge, judge_options=options,
                             processor=processor, protocol=self.protocol, **self.data_options)
        dm.setup("validate")
        return dm

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        self._last_step = step
        dm = self.datamodule(step, pl_module.hparams.name_or_path)
        # a resumed run that evaluates this step again with other weights makes its captions again
        dm.evaluator.open(caption_key(pl_module, dm), about_run(step=step), on_mismatch="replace")
        was_training = pl_module.model.training
        pl_module.model.eval()
        try:
            with torch.no_grad():
                for b in dm.val_dataloader():
                    if b["inputs"] is None or not dm.evaluator.missing(b["records"]):
                        continue
                    b = {**b, "inputs": {k: v.to(pl_module.device) for k, v in b["inputs"].items()}}
                    dm.evaluator.add(b["records"], pl_module.greedy(b))
        finally:
            pl_module.model.train(was_training)
        try:
            results = dm.evaluator.finish(dm.records, f"{pl_module.hparams.name_or_path} @ step {step}")
        finally:
            dm.evaluator.close()
        metrics = {f"bench/{name}": float(v) for name, v in dm.evaluator.metrics(results).items()}
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=step)
