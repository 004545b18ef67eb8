"""Ctrl-C, SIGTERM and a failing judge during ``fit``: stop within seconds, save a resumable checkpoint, exit 130/143.

A signal arriving while the step computes (rollout, judge, log-probs, backward) raises ``Interrupted`` at once:
no weight has changed yet, so the checkpoint holds the last completed step. From the first optimizer step of a
batch until the batch is counted as done (weights, optimizer, schedule and Lightning's counters move together)
the signal only marks the stop, taken at the next safe point: the next batch, a validation, the epoch's end.
The same save happens when a judge stops the run (``ServiceError``), so the work done is never lost.

The checkpoint is written as Lightning writes one at the end of a batch (``on_train_batch_end``), whatever the
moment of the interrupt, so a resume continues exactly after the last completed step; a validation cut short is
not run again. ``validate`` and ``predict`` also stop at once and exit 130/143; what they finished is kept
(benchmarks: ``generations.jsonl``; the shapes validation: ``validation.json`` of the batches done).
"""
from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L

from vcap import signals
from vcap.training.checkpoints import CheckpointWriteError
from vcap.errors import ServiceError

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
Interrupted = signals.Interrupted


class InterruptCheckpoint(L.Callback):
    """Installed by ``VcapTrainer`` for every run; ``watching()`` owns the signal handlers."""

    def __init__(self):
        self.signum: int | None = None
        self.in_update = False  # between the first optimizer step of a batch and the batch's end
        self.saved: Path | None = None

    # -- signals -----------------------------------------------------------------------------------------------
    @contextmanager
    def watching(self) -> Iterator[None]:
        """Our handlers while the trainer runs (Lightning composes its own SIGTERM handler with ours)."""
        self.signum, self.in_update = None, False
        signals.request(None)
        try:
            previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        except ValueError:  # not the main thread (e.g. a notebook worker): Lightning's own handling stays
            yield
            return
        try:
            yield
        except SystemExit as exit_:  # Lightning exits 1 after a KeyboardInterrupt, 0 after its SIGTERM stop
            if self.signum is None:
                raise
            raise SystemExit(128 + self.signum) from exit_
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        signals.request(self.signum)
        if self.in_update:
            if first:
                log.warning("%s received: stopping after this step's update", signal.Signals(signum).name)
            return
        if signals.in_finalizer(frame):  # Python drops exceptions raised there; the next safe point or judge wait raises
            return
        if signals.polling():  # a judge wait: it sees the request within a quarter second and raises itself
            return
        raise signals.Interrupted(self.signum)

    def _stop_if_asked(self) -> None:
        self.in_update = False
        if self.signum is not None:
            raise signals.Interrupted(self.signum)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.training:
            self.in_update = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop_if_asked()
        for logger in trainer.loggers:  # the rows of finished steps reach the disk before a kill -9 can lose them
            logger.save()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop_if_asked()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_if_asked()

    # -- the save ----------------------------------------------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        wanted = isinstance(exception, (KeyboardInterrupt, ServiceError)) or self.signum is not None
        if not wanted or isinstance(exception, CheckpointWriteError) or not trainer.state.fn == "fit":
            return
        if trainer.global_step == 0:
            self._say(trainer, "nothing to save: no training step was completed")
            return
        path = self.checkpoint_path(trainer)
        self.saving = True
        try:
            for cb in trainer.checkpoint_callbacks:  # its next save_last overwrites this file, not last-v1.ckpt
                if getattr(cb, "dirpath", None) and Path(cb.dirpath) == path.parent:
                    cb.last_model_path = str(path)
            trainer.save_checkpoint(path)
        finally:
            self.saving = False
        self.saved = path
        self._say(trainer, f"saved {path} (step {trainer.global_step}); the same command with --ckpt_path last "
                           "continues from there")

    saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.saving:
            checkpoint["vcap_interrupted"] = True
            as_saved_at_batch_end(checkpoint)

    @staticmethod
    def checkpoint_path(trainer) -> Path:
        callback = trainer.checkpoint_callback
        log_dir = trainer.loggers[0].log_dir if trainer.loggers else trainer.default_root_dir  # no collective here
        folder = getattr(callback, "dirpath", None) or Path(log_dir) / "checkpoints"
        return Path(folder) / "last.ckpt"

    def _say(self, trainer, text: str) -> None:
        if trainer.is_global_zero:
            what = signal.Signals(self.signum).name if self.signum else "stopped"
            print(f"vcap: {what} at step {trainer.global_step}: {text}", file=sys.stderr, flush=True)


def as_saved_at_batch_end(checkpoint: dict) -> None:
    """Rewrite the loop counters of a checkpoint taken after an interrupt so that they read as Lightning's own
    checkpoint at the end of the last completed batch, which it knows how to resume from: the interrupted batch
    (started, not processed) is forgotten, and an interrupted validation is not resumed mid-way."""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return
    batches = fit["epoch_loop.batch_progress"]
    total, current = batches["total"], batches["current"]
    done, done_epoch = total["processed"], current["processed"]
    state = fit.setdefault("epoch_loop.state_dict", {})
    if done_epoch >= 1:  # resume as after on_train_batch_end: Lightning counts the batch as completed on restart
        total.update(ready=done, started=done, processed=done, completed=done - 1)
        current.update(ready=done_epoch, started=done_epoch, processed=done_epoch, completed=done_epoch - 1)
        state["_batches_that_stepped"] = done - 1
    else:  # at the very start of an epoch: nothing of it done
        total.update(ready=done, started=done, processed=done, completed=done)
        current.update(ready=0, started=0, processed=0, completed=0)
        state["_batches_that_stepped"] = done
    for key in ("total", "current"):
        val = fit.get("epoch_loop.val_loop.batch_progress", {}).get(key)
        if val:
            val.update(ready=val["completed"], started=val["completed"], processed=val["completed"])
