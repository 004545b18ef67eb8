"""What ``vcap compare``'s two comparisons share: fitting a recipe in-process with a clock on its training steps, the
mean ± std over seeds, the table and the chart."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import lightning as L

from vcap.provenance import file_sha256

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class TrainClock(L.Callback):
    """Wall and CPU seconds spent inside training steps; with ``budget_seconds`` it stops fit once the ``clock``
    ('wall' or 'cpu', this process's CPU time over all its threads) has spent them."""

    def __init__(self, budget_seconds: float | None = None, clock: str = "wall"):
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; valid: {list(CLOCKS)}")
        self.budget_seconds = budget_seconds
        self.clock = clock
        self.seconds = {"wall": 0.0, "cpu": 0.0}
        self.steps = 0
        self._start: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = {name: read() for name, read in CLOCKS.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for name, read in CLOCKS.items():
            self.seconds[name] += read() - self._start[name]
        self.steps += 1
        if self.budget_seconds is not None and self.seconds[self.clock] >= self.budget_seconds:
            trainer.should_stop = True


def validates_before_fit(configs: list[str]) -> bool:
    """Whether the stacked configs (later ones win) set ``trainer.validate_before_fit: true``: checked before any
    training, since the warm start's column comes from that validation."""
    import yaml

    value = False
    for path in configs:
        trainer = (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}
        value = trainer.get("validate_before_fit", value)
    return value is True


def fit_recipe(config: str | list[str], seed: int, output: Path, name: str, clock: TrainClock,
               about: dict | None = None) -> tuple[dict, dict]:
    """Fit one recipe in-process (several config files stack, later ones win); returns (metrics before training or
    {}, metrics after) on its val set. ``about``, if given, receives the judges behind the held-out metrics."""
    from vcap.training.callbacks import ValidationReport
    from vcap.cli.parser import VcapCLI
    from vcap.training.trainer import VcapTrainer
    from vcap.data.datamodule import CaptionDataModule
    from vcap.methods.policy import CaptionPolicyModule

    configs = [config] if isinstance(config, str) else config
    args = [arg for path in configs for arg in ("--config", path)] + ["--seed_everything", str(seed),
            "--trainer.logger.init_args.save_dir", str(output), "--trainer.logger.init_args.name", name]
    cli = VcapCLI(CaptionPolicyModule, CaptionDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  trainer_class=VcapTrainer, args=args, run=False)
    trainer = cli.trainer
    trainer.callbacks.append(clock)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    if about is not None:
        described = cli.model.describe()
        about.update({k: described.get(k) for k in ("caption_metric_judge", "qa_metric_judge")})
    report = next(c for c in trainer.callbacks if isinstance(c, ValidationReport))
    before = next((r["metrics"] for r in report.runs if r["label"] == "start"), {})
    last = report.runs[-1] if report.runs else None
    if last is None or last["global_step"] != trainer.global_step:  # stopped between validations
        trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        last = report.runs[-1]
    return before, {**last["metrics"], "train_seconds": clock.seconds["wall"], "train_cpu_seconds": clock.seconds["cpu"],
                    "train_steps": clock.steps}


def matching_comparison(path: Path, settings: dict) -> dict | None:
    """An earlier comparison's compare.json, if there is one; it must have been made with exactly ``settings``
    (configs byte for byte, clock or recipes), or nothing of it is reused."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    differs = [k for k in settings if old.get(k) != settings[k]]
    if differs:
        raise SystemExit(f"--output: {path} holds a comparison with other {', '.join(differs)}; pass another "
                         "--output, or delete that compare.json to start over")
    return old


def config_hashes(paths) -> dict[str, str]:
    return {name: file_sha256(Path(path)) for name, path in paths}


def nan_to_none(metrics: dict) -> dict:
    """NaN (nothing scored) as None, so compare.json is plain JSON (``null``, shown n/a)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def summarize(per_seed: list[dict[str, dict]], columns: tuple[str, ...] | None = None
              ) -> dict[str, dict[str, dict[str, float]]]:
    """column -> metric -> {mean, std, values} over seeds (std 0 for a single seed). A metric that is NaN or null in
    some seed (nothing scored) has mean and std None, shown as n/a: never a number made of the other seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for column in columns or tuple(per_seed[0]):
        keys = sorted(set.intersection(*(set(run[column]) for run in per_seed)))
        out[column] = {}
        for key in keys:
            values = [float(run[column][key]) if run[column][key] is not None else math.nan for run in per_seed]
            if any(math.isnan(v) for v in values):  # nothing scored in some seed: n/a (JSON null), never a number
                out[column][key] = {"mean": None, "std": None, "values": [None if math.isnan(v) else v
                                                                          for v in values]}
                continue
            out[column][key] = {"mean": statistics.fmean(values),
                                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


def print_table(summary: dict, seeds: list[int], columns: tuple[str, ...], shown: tuple[str, ...],
                title: str = "held-out comparison") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title}, seeds {seeds} (mean ± std)")
    table.add_column("metric")
    for column in columns:
        table.add_column(column, justify="right")
    keys = [k for k in shown if any(k in summary[c] for c in columns)]
    keys += ["train_seconds", "train_cpu_seconds", "train_steps"]
    for key in keys:
        cells = []
        for column in columns:
            cell = summary[column].get(key)
            cells.append("-" if cell is None else "n/a" if cell["mean"] is None
                         else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
        table.add_row(key, *cells)
    Console().print(table)


def plot(summary: dict, path: Path, columns: tuple[str, ...], shown: tuple[str, ...], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in shown if all(summary[c].get(k, {}).get("mean") is not None for c in columns)]
    fig, ax = plt.subplots(figsize=(max(10, 1.6 * len(keys) * len(columns) / 3), 4))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        xs = [k + i * width for k in range(len(keys))]
        ax.bar(xs, [summary[column][k]["mean"] for k in keys], width, yerr=[summary[column][k]["std"] for k in keys],
               capsize=3, label=column)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, rotation=15, fontsize=8)
    ax.set(title=title, ylabel="score")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
