"""``vcap compare``: the paper's comparison on the same held-out videos — warm start, more SFT, GRPO.

For each seed: GRPO trains with ``grpo_config`` (its pre-fit validation scores the warm start); SFT
then continues from the same warm start on the same training videos with ``sft_config`` until it has
spent as many seconds in training steps as GRPO did (data loading and validation are not counted for
either). All three are validated on the same held-out set and printed side by side; with several
seeds the table shows mean ± std. Results go to ``<output>/compare.json`` and ``compare.png``.

With ``recipes`` it compares reward recipes instead (``vcap.cli.recipe_compare``): GRPO from the same warm start,
``grpo_config`` with each recipe stacked on it, the same steps each, side by side.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Literal

import lightning as L

log = logging.getLogger(__name__)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
COLUMNS = ("warm start", "SFT-continued", "GRPO")
SHOWN = ("think_f1", "think_attribute_f1", "think_action_f1", "caption_event_f1", "caption_event_recall",
         "caption_event_precision", "qa_accuracy", "reward")


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


def _fit(config: str | list[str], seed: int, output: Path, name: str, clock: TrainClock) -> tuple[dict, dict]:
    """Fit one recipe in-process (several config files stack, later ones win); returns (metrics before training or
    {}, metrics after) on its val set."""
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
    report = next(c for c in trainer.callbacks if isinstance(c, ValidationReport))
    before = next((r["metrics"] for r in report.runs if r["label"] == "start"), {})
    last = report.runs[-1] if report.runs else None
    if last is None or last["global_step"] != trainer.global_step:  # stopped between validations
        trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        last = report.runs[-1]
    return before, {**last["metrics"], "train_seconds": clock.seconds["wall"], "train_cpu_seconds": clock.seconds["cpu"],
                    "train_steps": clock.steps}


def run_seed(grpo_config: str, sft_config: str, seed: int, output: Path, clock: str = "wall") -> dict[str, dict]:
    grpo_clock = TrainClock()
    warm, grpo = _fit(grpo_config, seed, output, f"seed{seed}/grpo", grpo_clock)
    if not warm:
        raise ValueError(f"{grpo_config} must set trainer.validate_before_fit: true, so the warm start is scored")
    budget = grpo_clock.seconds[clock]
    log.info("seed %d: GRPO spent %.1f %s seconds in %d training steps; SFT gets the same", seed, budget, clock,
             grpo_clock.steps)
    _, sft = _fit(sft_config, seed, output, f"seed{seed}/sft", TrainClock(budget_seconds=budget, clock=clock))
    return {"warm start": warm, "SFT-continued": sft, "GRPO": grpo}


def summarize(per_seed: list[dict[str, dict]], columns: tuple[str, ...] = COLUMNS
              ) -> dict[str, dict[str, dict[str, float]]]:
    """column -> metric -> {mean, std, values} over seeds (std 0 for a single seed). A metric that is NaN or null in
    some seed (nothing scored) has mean and std None, shown as n/a: never a number made of the other seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for column in columns:
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


def print_table(summary: dict, seeds: list[int], columns: tuple[str, ...] = COLUMNS, shown: tuple[str, ...] = SHOWN,
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


def plot(summary: dict, path: Path, columns: tuple[str, ...] = COLUMNS, shown: tuple[str, ...] = SHOWN[:-1],
         title: str = "held-out metrics: warm start vs SFT-continued vs GRPO (matched training time)") -> None:
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


def finished_seeds(path: Path, settings: dict) -> dict[int, dict]:
    """Seeds that an earlier run of the same comparison (same configs, byte for byte, and clock) finished, from its
    compare.json: a rerun after a crash, or with more seeds, does not repeat them."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    differs = [k for k in settings if old.get(k) != settings[k]]
    if differs:
        raise SystemExit(f"--output: {path} holds a comparison with other {', '.join(differs)}; pass another "
                         "--output, or delete that compare.json to start over")
    return {int(seed): run for seed, run in zip(old["seeds"], old["per_seed"])}


def compare(grpo_config: str = "configs/demo.yaml", sft_config: str = "configs/demo/sft_continue.yaml",
            recipes: list[str] | None = None, seeds: list[int] | None = None, output: str | None = None,
            clock: Literal["wall", "cpu"] = "wall") -> dict:
    """Run the comparison and print the table.

    Args:
        grpo_config: the GRPO recipe (must validate before fit, so the warm start is scored).
        sft_config: the SFT recipe continuing from the same warm start on the same training videos.
        recipes: reward recipes to compare instead of SFT vs GRPO: YAML files each stacked on grpo_config (e.g.
            configs/demo/rewards/*.yaml), trained the same steps from the same warm start and shown side by side,
            columns named by file name. sft_config and clock are not used then.
        seeds: one full comparison per seed (default [0]); several seeds give mean ± std.
        output: folder for the runs, compare.json and compare.png (default runs/demo-compare, with recipes
            runs/reward-compare); runs already in its compare.json (same configs and clock) are reused, not run
            again.
        clock: what "the same training time" means: 'wall' seconds, or 'cpu' seconds of this process (all its
            threads). CPU seconds are less sensitive to other programs loading the machine during one of the two
            runs, not immune: waiting torch threads spin, so a crowded run still spends more of them per step.
    """
    seeds = [0] if seeds is None else seeds
    if recipes is not None:
        from vcap.cli.recipe_compare import compare_recipes

        if not recipes:
            raise SystemExit("--recipes: give at least one recipe file, e.g. '[configs/demo/rewards/escore.yaml]'")
        return compare_recipes(grpo_config, recipes, seeds, output or "runs/reward-compare")
    output = output or "runs/demo-compare"
    configs = {"grpo_config": grpo_config, "sft_config": sft_config}
    for name, path in configs.items():
        if not Path(path).is_file():
            raise SystemExit(f"--{name}: no such config file {path!r}")
    out = Path(output)
    settings = {"clock": clock, **configs,
                "config_sha256": {name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for name, p in configs.items()}}
    done = finished_seeds(out / "compare.json", settings)
    per_seed = []
    for seed in seeds:
        if seed in done:
            log.info("seed %d: reusing its finished run from %s", seed, out / "compare.json")
            per_seed.append(done[seed])
        else:
            per_seed.append(run_seed(grpo_config, sft_config, seed, out, clock))
        summary = summarize(per_seed)  # written after every seed: finished seeds are never lost
        (out / "compare.json").write_text(json.dumps(
            {"seeds": seeds[: len(per_seed)], **settings, "per_seed": per_seed, "summary": summary}, indent=2))
    print_table(summary, seeds)
    plot(summary, out / "compare.png")
    log.info("comparison written to %s and %s", out / "compare.json", out / "compare.png")
    return summary


def main(args: list[str]) -> None:
    from jsonargparse import CLI

    CLI(compare, args=args)
