"""Callbacks: the validation report (rich table + JSON), the JSONL prediction writer and the progress bar."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar
from rich.console import Console
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

from vcap.textfiles import write_json

log = logging.getLogger(__name__)


class ValidationReport(L.Callback):
    """After each validation run: a rich table of ``val/*`` metrics, one column per run, plus JSON.

    The first column of a ``fit`` is the starting point (with ``validate_before_fit``), so the warm
    start and the trained policy print side by side. JSON goes to ``<log_dir>/validation.json``.
    """

    def __init__(self, filename: str = "validation.json", prefix: str = "val/"):
        self.filename, self.prefix = filename, prefix
        self.runs: list[dict] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k[len(self.prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)}
        if not metrics:  # a benchmark (--bench) prints its own table and writes results.json: no empty table here
            return
        if getattr(trainer, "pre_fit_validation", False):
            label = "start"
        elif trainer.state.fn == "fit":
            label = f"step {trainer.global_step}"
        else:
            label = str(trainer.state.fn.value if hasattr(trainer.state.fn, "value") else trainer.state.fn)
        about = pl_module.describe() if hasattr(pl_module, "describe") else {}
        self.runs.append({"label": label, "global_step": trainer.global_step, "time": time.time(), "metrics": metrics,
                          **about})
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            self.write(log_dir)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A validate run stopped by Ctrl-C / SIGTERM keeps what it finished: the metrics of the batches done."""
        if trainer.state.fn not in ("validate", "test") or not isinstance(exception, KeyboardInterrupt):
            return
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.test_loop
        done, total = loop.batch_progress.current.completed, sum(loop.max_batches)
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        what = f"{str(exception) or 'interrupted'} in {fn}"
        evaluator = getattr(pl_module, "bench_evaluator", None)
        if evaluator is not None:  # generations are appended as they are made
            print(f"vcap: {what}: {len(evaluator.generations)} captions kept in {evaluator.out / 'generations.jsonl'}; "
                  "the same command continues from them", file=sys.stderr, flush=True)
            return
        partial = getattr(pl_module, "partial_validation_metrics", None)
        if not done or partial is None:
            return
        about = pl_module.describe() if hasattr(pl_module, "describe") else {}
        self.runs.append({"label": f"{fn} (interrupted: {done} of {total} batches)",
                          "global_step": trainer.global_step, "time": time.time(), "interrupted": True,
                          "batches": [done, total], "metrics": partial(), **about})
        log_dir = Path(trainer.loggers[0].log_dir if trainer.loggers else trainer.default_root_dir)  # no collective
        self.write(log_dir)
        print(f"vcap: {what}: the metrics of the {done} of {total} batches done are in {log_dir / self.filename}",
              file=sys.stderr, flush=True)

    def write(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = write_json(log_dir / self.filename, {"runs": self.runs, "latest": self.runs[-1]["metrics"]})
        table = Table(title=f"validation ({path})")
        table.add_column("metric")
        for run in self.runs[-4:]:
            table.add_column(run["label"], justify="right")
        for key in sorted({k for run in self.runs for k in run["metrics"]}):
            table.add_row(key, *(_cell(run["metrics"].get(key)) for run in self.runs[-4:]))
        Console().print(table)


def _cell(value: float | None) -> str:
    """A table cell: '-' where the run did not log the metric, 'n/a' where nothing could be scored (NaN)."""
    if value is None:
        return "-"
    return "n/a" if value != value else f"{value:.4f}"


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each predicted batch to ``output`` as JSON lines (one per video); ``<output>.made_by.json`` names
    the model, its weights' fingerprint and the settings, and a lock keeps a second run from writing there too."""

    def __init__(self, output: str = "predictions.jsonl"):
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.lock = None

    def on_predict_start(self, trainer, pl_module) -> None:
        from vcap.bench.identity import caption_key
        from vcap.provenance import about_run, lock_output, write_made_by

        self.output.parent.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            self.lock = self.lock or lock_output(self.output, "--output")
            self.output.write_text("")
            checkpoint = str(trainer.ckpt_path) if trainer.ckpt_path else None
            write_made_by(self.output, caption_key(pl_module, trainer.datamodule), about_run(checkpoint=checkpoint))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self.output, "a") as f:
            for row in prediction:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer, pl_module) -> None:
        Console().print(f"predictions written to [bold]{self.output}[/bold]")


class RateColumn(ProgressColumn):
    """Batches per second, or seconds per batch when a batch takes longer than a second. Rich's speed needs two
    updates within its window; before that (a one-batch validation, the first batch after a resume) the rate is the
    batches done since the bar appeared over its elapsed time, and '-' while there are none."""

    def __init__(self, style):
        self.style = style
        super().__init__()

    def render(self, task) -> Text:
        rate = task.speed
        done = task.completed - task.fields.get("resumed_at", 0)
        if rate is None and done > 0 and task.elapsed:
            rate = done / task.elapsed
        if not rate:
            return Text("-", style=self.style)
        return Text(f"{rate:.2f}it/s" if rate >= 1 else f"{1 / rate:.2f}s/it", style=self.style)


class VcapProgressBar(RichProgressBar):
    """Rich progress bar that says "Epoch 0" (not "Epoch 0/-2") when training is bounded by max_steps, counts a
    resumed epoch's batches out of the epoch's total, and shows a rate from the first batch (``RateColumn``)."""

    def configure_columns(self, trainer) -> list:
        columns = super().configure_columns(trainer)
        return [RateColumn(self.theme.processing_speed) if type(c).__name__ == "ProcessingSpeedColumn" else c
                for c in columns]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """A mid-epoch resume calls no epoch start: Lightning would make the bar after the first batch, its total
        the steps left after it (``6/1``, ``3/0``). Here it starts before that batch, at the batches of the epoch
        done before the resume, out of those plus the steps left."""
        if self.is_disabled or self.train_progress_bar_id is not None or self.progress is None:
            return
        total = trainer.num_training_batches
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, batch_idx + trainer.max_steps - trainer.global_step)
        description = self._get_train_description(trainer.current_epoch)
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        self.train_progress_bar_id = self.progress.add_task(description, total=total, completed=batch_idx,
                                                            resumed_at=batch_idx)
        self.refresh()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None:  # the next epoch starts at 0
            self.progress.update(self.train_progress_bar_id, resumed_at=0)

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run folder's version number is not a metric
        return metrics
