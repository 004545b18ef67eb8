"""``VcapTrainer``: Lightning's Trainer with vcap's report, curves, interrupt handling and atomic checkpoints."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

from vcap.training.callbacks import JsonlPredictionWriter, ValidationReport, VcapProgressBar
from vcap.training.checkpoints import AtomicCheckpointIO, read_info, safe_loading
from vcap.training.interrupts import InterruptCheckpoint
from vcap.training.plots import TrainingCurves
from vcap.training.resume import earlier_validations, keep_metrics, keep_samples


class GlobalStepLoggerConnector(_LoggerConnector):
    """Rows of metrics.csv (and any logger) carry the optimizer step (``global_step``), as the validation table,
    checkpoint names and ``validation.json`` do. Lightning's default is the count of batches before the row's,
    one less than the step a training row reports and the step a validation ran at."""

    def log_metrics(self, metrics, step: int | None = None) -> None:
        if metrics and step is None and "step" not in metrics:
            metrics = {**metrics, "epoch": self.trainer.current_epoch}  # as Lightning adds when it picks the step
            step = self.trainer.global_step
        super().log_metrics(metrics, step)


def _first(callbacks: list, kind: type):
    return next((c for c in callbacks if isinstance(c, kind)), None)


def _can_validate(datamodule: LightningDataModule | None, val_dataloaders: Any) -> bool:
    """False when the data module has no validation records: fit then trains without validation, as it warns."""
    has_validation = getattr(datamodule, "has_validation", None)
    return val_dataloaders is not None or has_validation is None or has_validation()


class VcapTrainer(Trainer):
    """Lightning's Trainer plus a validation report, a progress bar and optional validation before fit.

    Ctrl-C or SIGTERM saves a resumable checkpoint of the last completed step and exits 130 / 143; checkpoints
    are written atomically (a temporary file renamed over the final name).

    Args:
        validate_before_fit: validate the starting model before training, so the report shows it
            beside the trained one (skipped when resuming from a checkpoint, or when the data has no validation
            split). Lightning's sanity check would repeat it, so it is then skipped unless
            ``num_sanity_val_steps`` is set.
        callbacks: Lightning callbacks, e.g. ModelCheckpoint (vcap adds its validation report and progress bar).
    """

    def __init__(self, *args: Any, validate_before_fit: bool = False,
                 callbacks: list[Callback] | Callback | None = None, **kwargs: Any):
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        if not any(isinstance(c, ValidationReport) for c in callbacks):
            callbacks.append(ValidationReport())
        if not any(isinstance(c, TrainingCurves) for c in callbacks):
            callbacks.append(TrainingCurves())
        if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, VcapProgressBar) for c in callbacks):
            callbacks.append(VcapProgressBar())
        self.interrupts = InterruptCheckpoint()
        callbacks.append(self.interrupts)
        plugins = kwargs.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self._logger_connector.__class__ = GlobalStepLoggerConnector  # same state, one method changed
        self.validate_before_fit = validate_before_fit
        self.pre_fit_validation = False
        self.sanity_steps_set = kwargs.get("num_sanity_val_steps") is not None  # by the user: kept as given

    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | Path | None = None,
            weights_only: bool = True) -> None:
        """Train the model (GRPO or SFT, by --model), validating every val_check_interval steps.

        Args:
            ckpt_path: checkpoint to resume from: a path, or 'last' for the newest of this run's checkpoints.
            weights_only: true (default): load the checkpoint with torch.load(weights_only=True), which refuses
                Python objects other than vcap's own (a planted pickle runs no code); false: unpickle anything
                (only for a trusted checkpoint of another program; logged).
        """
        with self.interrupts.watching(), warnings.catch_warnings(), safe_loading():
            if ckpt_path is not None and Path(str(ckpt_path)).exists():
                self.continue_run(read_info(ckpt_path, weights_only is not False))
                # the run's own checkpoint folder is meant to be reused when resuming
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            if not _can_validate(datamodule, val_dataloaders):
                self.limit_val_batches = 0  # no validation split: no val loop (nor Lightning's empty-loader warning)
            elif self.validate_before_fit and ckpt_path is None:
                self.pre_fit_validation = True
                try:
                    self.validate(model, dataloaders=val_dataloaders, datamodule=datamodule, verbose=False)
                finally:
                    self.pre_fit_validation = False
                if not self.sanity_steps_set:  # Lightning's sanity check would run the same validation again
                    self.num_sanity_val_steps = 0
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only is not False)

    def continue_run(self, info) -> None:
        """Resuming into the run folder that wrote the checkpoint: keep its metrics rows, validations and samples
        up to the checkpoint's step, so logs and curves show the whole run."""
        if info.log_dir is None or not self.is_global_zero or not self.loggers:
            return
        log_dir = Path(self.log_dir)
        if not log_dir.is_dir() or log_dir.resolve() != info.log_dir.resolve():
            return
        rows = [row for lg in self.loggers if isinstance(lg, CSVLogger) for row in keep_metrics(lg, info.global_step)]
        keep_samples(log_dir, info.global_step)
        report, curves = _first(self.callbacks, ValidationReport), _first(self.callbacks, TrainingCurves)
        if report is not None:
            report.runs = earlier_validations(log_dir, report.filename, info.global_step)
        if curves is not None:
            curves.seed(rows)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | Path | None = None, verbose: bool = False,
                 datamodule: LightningDataModule | None = None, weights_only: bool = True):
        """Evaluate the model on the validation split, or on a benchmark with --bench NAME.

        Args:
            ckpt_path: checkpoint whose weights are evaluated (default: the model as loaded).
            verbose: also print Lightning's table of logged metrics (vcap's own table is always printed).
            weights_only: true (default): load the checkpoint with torch.load(weights_only=True), which refuses
                Python objects other than vcap's own (a planted pickle runs no code); false: unpickle anything
                (only for a trusted checkpoint of another program; logged).
        """
        safe = weights_only is not False
        if self.pre_fit_validation:  # inside fit: already watched
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, safe)
        with self.interrupts.watching(), safe_loading():
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, safe)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None,
             ckpt_path: str | Path | None = None, verbose: bool = False,
             datamodule: LightningDataModule | None = None, weights_only: bool = True):
        """Same as validate (vcap data modules hold no separate test split).

        Args:
            ckpt_path: checkpoint whose weights are evaluated (default: the model as loaded).
            verbose: also print Lightning's table of logged metrics (vcap's own table is always printed).
            weights_only: true (default): load the checkpoint with torch.load(weights_only=True), which refuses
                Python objects other than vcap's own (a planted pickle runs no code); false: unpickle anything
                (only for a trusted checkpoint of another program; logged).
        """
        with self.interrupts.watching(), safe_loading():
            return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only is not False)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = False,
                ckpt_path: str | Path | None = None, weights_only: bool = True,
                output: str = "predictions.jsonl"):
        """Caption videos (--data.init_args.predict_videos) and write think + answer as JSON lines.

        Args:
            return_predictions: also keep every prediction in memory (off: they are streamed to ``output``).
            ckpt_path: checkpoint whose weights caption the videos (default: the model as loaded).
            weights_only: true (default): load the checkpoint with torch.load(weights_only=True), which refuses
                Python objects other than vcap's own (a planted pickle runs no code); false: unpickle anything
                (only for a trusted checkpoint of another program; logged).
            output: JSONL file for the captions (think + answer), one line per video.
        """
        self.callbacks.append(JsonlPredictionWriter(output))
        with self.interrupts.watching(), safe_loading():
            return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path,
                                   weights_only is not False)
