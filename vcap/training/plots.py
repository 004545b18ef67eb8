"""``TrainingCurves``: one PNG at the end of ``fit`` with the training reward and the held-out metrics.

Left: the training reward and each reward's mean per step (faint: raw, solid: moving average).
Right: the held-out metrics at every validation run, the warm start included, so GRPO's effect is
something you look at, not read off a CSV.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)

# what the right panel shows when present (validation keys without the "val/" prefix)
HELD_OUT_KEYS = ("think_f1", "think_attribute_f1", "think_action_f1", "caption_event_f1", "caption_event_recall",
                 "caption_event_precision")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` points (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


class TrainingCurves(L.Callback):
    """Collects ``train/reward*`` per step and ``val/*`` per validation; writes ``<log_dir>/<filename>``.

    Args:
        filename: PNG name inside the run's log directory.
        smoothing: moving-average window (steps) for the training curves.
    """

    def __init__(self, filename: str = "training_curves.png", smoothing: int = 10):
        self.filename, self.smoothing = filename, smoothing
        self.train: dict[str, list[tuple[int, float]]] = {}
        self.val: list[tuple[int, dict[str, float]]] = []

    def seed(self, rows: list[dict]) -> None:
        """The earlier part of a resumed run, from its metrics.csv rows (``step`` is the global step)."""
        for row in rows:
            step = int(float(row["step"]))
            val = {k[4:]: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
            if val:
                self.val.append((step, val))
            for key, value in row.items():
                name = key[len("train/"):] if key.startswith("train/") else None
                if value not in ("", None) and (name == "reward" or (name and name.startswith("reward/")
                                                                       and name.count("/") == 1)):
                    self.train.setdefault(name, []).append((step, float(value)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for key, value in trainer.callback_metrics.items():
            name = key[len("train/"):] if key.startswith("train/") else None
            if name == "reward" or (name and name.startswith("reward/") and name.count("/") == 1):
                series = self.train.setdefault(name, [])
                if not series or series[-1][0] != trainer.global_step:
                    series.append((trainer.global_step, float(value)))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            self.val.append((trainer.global_step, metrics))

    def on_fit_end(self, trainer, pl_module) -> None:
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename  # log_dir syncs ranks: all ask
        if not trainer.is_global_zero or not (self.train or self.val):
            return
        self.write(path)
        log.info("training curves written to %s", path)

    def on_exception(self, trainer, pl_module, exception) -> None:
        """An interrupted or stopped fit still leaves its curves."""
        if trainer.state.fn == "fit" and trainer.is_global_zero and (self.train or self.val):
            # the logger's own folder: trainer.log_dir is a collective, and other ranks may be gone by now
            path = Path(trainer.loggers[0].log_dir if trainer.loggers else trainer.default_root_dir) / self.filename
            try:
                self.write(path)
            except Exception as err:  # a plotting problem must not hide why the run stopped
                log.warning("could not write %s: %s", path, err)

    def write(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, series in sorted(self.train.items(), key=lambda kv: (kv[0] != "reward", kv[0])):
            steps, values = zip(*series)
            label = "total" if name == "reward" else name.split("/", 1)[1]
            line, = left.plot(steps, moving_average(list(values), self.smoothing), label=label,
                              linewidth=2.2 if name == "reward" else 1.4)
            left.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        left.set(title=f"training reward (moving average over {self.smoothing} steps)", xlabel="step",
                 ylabel="mean reward per completion")
        left.grid(alpha=0.3)
        if self.train:
            left.legend(loc="best", fontsize=8)
        keys = [k for k in HELD_OUT_KEYS if any(k in m for _, m in self.val)]
        for key in keys:
            points = [(step, m[key]) for step, m in self.val if key in m]
            right.plot(*zip(*points), marker="o", label=key)
            step, value = points[-1]
            right.annotate(f"{value:.3f}", (step, value), textcoords="offset points", xytext=(4, 2), fontsize=7)
        right.set(title="held-out metrics at each validation (step 0: the starting model)", xlabel="step",
                  ylabel="score")
        right.grid(alpha=0.3)
        if keys:
            right.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
