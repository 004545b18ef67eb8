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

import json
import logging
from pathlib import Path
from typing import Literal

from vcap.cli.comparison import (TrainClock, config_hashes, fit_recipe, matching_comparison, nan_to_none, plot,
                                  print_table, summarize)

log = logging.getLogger(__name__)
COLUMNS = ("warm start", "SFT-continued", "GRPO")
SHOWN = ("think_f1", "think_attribute_f1", "think_action_f1", "caption_event_f1", "caption_event_recall",
         "caption_event_precision", "qa_accuracy", "reward")


def run_seed(grpo_config: str, sft_config: str, seed: int, output: Path, clock: str = "wall") -> dict[str, dict]:
    grpo_clock = TrainClock()
    warm, grpo = fit_recipe(grpo_config, seed, output, f"seed{seed}/grpo", grpo_clock)
    if not warm:
        raise ValueError(f"{grpo_config} must set trainer.validate_before_fit: true, so the warm start is scored")
    budget = grpo_clock.seconds[clock]
    log.info("seed %d: GRPO spent %.1f %s seconds in %d training steps; SFT gets the same", seed, budget, clock,
             grpo_clock.steps)
    _, sft = fit_recipe(sft_config, seed, output, f"seed{seed}/sft", TrainClock(budget_seconds=budget, clock=clock))
    return {"warm start": nan_to_none(warm), "SFT-continued": nan_to_none(sft), "GRPO": nan_to_none(grpo)}


def finished_seeds(path: Path, settings: dict) -> dict[int, dict]:
    """Seeds that an earlier run of the same comparison (same configs, byte for byte, and clock) finished, from its
    compare.json: a rerun after a crash, or with more seeds, does not repeat them."""
    old = matching_comparison(path, settings)
    return {} if old is None else {int(seed): run for seed, run in zip(old["seeds"], old["per_seed"])}


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
    if not seeds:
        raise SystemExit("--seeds: give at least one seed, e.g. '[0, 1, 2]'")
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
                "config_sha256": config_hashes(configs.items())}
    done = finished_seeds(out / "compare.json", settings)
    per_seed = []
    for seed in seeds:
        if seed in done:
            log.info("seed %d: reusing its finished run from %s", seed, out / "compare.json")
            per_seed.append(done[seed])
        else:
            per_seed.append(run_seed(grpo_config, sft_config, seed, out, clock))
        summary = summarize(per_seed, COLUMNS)  # written after every seed: finished seeds are never lost
        (out / "compare.json").write_text(json.dumps(
            {"seeds": seeds[: len(per_seed)], **settings, "per_seed": per_seed, "summary": summary}, indent=2))
    print_table(summary, seeds, COLUMNS, SHOWN)
    plot(summary, out / "compare.png", COLUMNS, SHOWN[:-1],
         "held-out metrics: warm start vs SFT-continued vs GRPO (matched training time)")
    log.info("comparison written to %s and %s", out / "compare.json", out / "compare.png")
    return summary


def main(args: list[str]) -> None:
    from jsonargparse import CLI

    CLI(compare, args=args)
