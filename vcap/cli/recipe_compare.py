"""``vcap compare --recipes``: reward recipes side by side on the same held-out videos.

Each recipe is a YAML stacked on ``grpo_config`` (``vcap fit --config grpo_config --config recipe``): every run starts
from the same warm start, trains the same steps on the same videos, and is validated on the same held-out set by the
same metrics (think F1, event F1, QA accuracy, caption words), whichever reward it trains with. The warm start's
column is the first recipe's pre-fit validation. With several seeds the table shows mean ± std. Results go to
``<output>/compare.json`` (written after every run, so a crash or Ctrl-C loses at most the run in progress; a rerun of
the same comparison reuses what finished) and ``compare.png``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from vcap.cli.comparison import (TrainClock, config_hashes, fit_recipe, matching_comparison, nan_to_none, plot,
                                  print_table, summarize, validates_before_fit)

log = logging.getLogger(__name__)
WARM = "warm start"
SHOWN = ("think_f1", "caption_event_f1", "caption_event_recall", "caption_event_precision", "qa_accuracy",
         "qa_unanswerable", "caption_words", "judge_failures", "caption_failed", "qa_failed")
PLOTTED = ("think_f1", "caption_event_f1", "caption_event_recall", "caption_event_precision", "qa_accuracy")


def recipe_names(recipes: list[str]) -> list[str]:
    """Column names: each recipe file's stem (``configs/demo/rewards/qa.yaml`` -> ``qa``), which must differ."""
    names = [Path(r).stem for r in recipes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"--recipes: two recipes share the file name {twice[0]!r}; the table names columns by file "
                         "name, so rename one")
    if WARM in names:
        raise SystemExit(f"--recipes: a recipe may not be called {WARM!r}")
    return names


def load_runs(path: Path, settings: dict) -> tuple[dict[int, dict[str, dict]], dict[str, dict]]:
    """(seed -> column -> metrics, recipe -> judges behind its held-out metrics) that an earlier run of the same
    comparison finished (same configs byte for byte)."""
    old = matching_comparison(path, settings)
    if old is None:
        return {}, {}
    return {int(seed): columns for seed, columns in old["runs"].items()}, old.get("metric_judges", {})


def check_same_metric_judges(metric_judges: dict[str, dict]) -> None:
    """Columns are comparable only if one judge scored them all (the QA metric takes the QA reward's judge when a
    recipe has that reward, else the caption metric's)."""
    (first, judges), *rest = metric_judges.items()
    for name, other in rest:
        if other != judges:
            raise SystemExit(f"--recipes: {first} and {name} are scored by different held-out metric judges ({judges} "
                             f"against {other}), so their columns would not compare: give every recipe the same "
                             "caption and qa judge")


def compare_recipes(grpo_config: str, recipes: list[str], seeds: list[int], output: str) -> dict:
    """Train every recipe for every seed (or reuse its finished run), then print the table and draw the chart."""
    for path in [grpo_config, *recipes]:
        if not Path(path).is_file():
            raise SystemExit(f"--{'grpo_config' if path == grpo_config else 'recipes'}: no such config file {path!r}")
    names = recipe_names(recipes)
    for recipe in recipes:
        if not validates_before_fit([grpo_config, recipe]):
            raise SystemExit(f"--grpo_config: {grpo_config} with {recipe} must set trainer.validate_before_fit: true, "
                             "so the warm start is scored")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"mode": "recipes", "grpo_config": grpo_config, "recipes": recipes,
                "config_sha256": config_hashes((p, p) for p in [grpo_config, *recipes])}
    runs, metric_judges = load_runs(out / "compare.json", settings)
    columns = (WARM, *names)

    def write() -> dict:
        complete = [runs[s] for s in seeds if s in runs and all(c in runs[s] for c in columns)]
        summary = summarize(complete, columns) if complete else {}
        (out / "compare.json").write_text(json.dumps(
            {**settings, "seeds": seeds, "complete_seeds": [s for s in seeds if runs.get(s, {}).keys() >= set(columns)],
             "runs": {str(s): r for s, r in sorted(runs.items())}, "metric_judges": metric_judges,
             "summary": summary}, indent=2))
        return summary

    for seed in seeds:
        seed_runs = runs.setdefault(seed, {})
        for recipe, name in zip(recipes, names):
            if name in seed_runs:
                log.info("seed %d, %s: reusing its finished run from %s", seed, name, out / "compare.json")
                continue
            about: dict = {}
            warm, after = fit_recipe([grpo_config, recipe], seed, out, f"seed{seed}/{name}", TrainClock(), about)
            metric_judges.setdefault(name, about)
            check_same_metric_judges(metric_judges)
            # the warm start's rewards are each recipe's own, so not comparable: its metrics are
            seed_runs.setdefault(WARM, nan_to_none({k: v for k, v in warm.items() if not k.startswith("reward")}))
            seed_runs[name] = nan_to_none(after)
            write()
    summary = write()
    title = f"reward recipes on {Path(grpo_config).name}"
    print_table(summary, seeds, columns, SHOWN, title=title)
    plot(summary, out / "compare.png", columns, PLOTTED, title=f"held-out metrics by reward recipe (mean ± std over "
                                                              f"seeds {seeds})")
    log.info("comparison written to %s and %s", out / "compare.json", out / "compare.png")
    return summary
