"""Ranges of the numeric options, checked before anything loads (the CLI's preflight) and by the constructors.

A value out of range used to surface as a traceback after the model had loaded and a run folder existed
(``max_completion_length: 0``, ``temperature: 0``), or not at all (``beta: -1`` trained silently). Each rule names
the flag, the value and what it must be.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

Rule = tuple[Callable[[Any], bool], str]


def _at_least(low: float, why: str = "") -> Rule:
    return (lambda v: v >= low), f"must be at least {low:g}" + (f" ({why})" if why else "")


def _positive(why: str = "") -> Rule:
    return (lambda v: v > 0), "must be greater than 0" + (f" ({why})" if why else "")


MODEL_RULES: dict[str, Rule] = {
    "learning_rate": _positive("AdamW's peak learning rate"),
    "weight_decay": _at_least(0),
    "warmup_steps": _at_least(0, "0: no warm-up"),
    "max_new_tokens": _at_least(1, "the generation budget of validation and predict"),
    "num_generations": _at_least(2, "GRPO compares completions within a group"),
    "beta": _at_least(0, "the KL coefficient; 0 turns the KL term and the reference model off"),
    "epsilon": _at_least(0),
    "epsilon_high": _at_least(0, "null uses epsilon"),
    "max_completion_length": _at_least(1, "the new-token budget of each completion"),
    "temperature": _positive("rollouts sample at this temperature and log-probs are divided by it; "
                             "below 1 is less random"),
    "top_p": ((lambda v: 0 < v <= 1), "must be in (0, 1] (1 disables nucleus sampling)"),
    "num_iterations": _at_least(1),
    "micro_batch_size": _at_least(1),
    "max_grad_norm": _at_least(0, "0 disables clipping"),
    "log_completions_every": _at_least(0, "0 disables it"),
    "max_target_length": _at_least(1),
}
DATA_RULES: dict[str, Rule] = {
    "batch_size": _at_least(1),
    "val_batch_size": _at_least(1),
    "num_workers": _at_least(0),
    "fps": _positive("frames sampled per second; or set nframes"),
    "nframes": _at_least(1),
    "min_frames": _at_least(1),
    "max_frames": _at_least(1),
    "min_pixels": _at_least(1),
    "max_pixels": _at_least(1),
}


def _problems(values: Mapping[str, Any], rules: dict[str, Rule], prefix: str) -> list[str]:
    out = []
    for name, (ok, requirement) in rules.items():
        value = values.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, null (a default applies) or not a number (the parser names the type)
        if not ok(value):
            out.append(f"{prefix}{name} {value:g}: {requirement}")
    return out


def model_option_problems(values: Mapping[str, Any]) -> list[str]:
    return _problems(values, MODEL_RULES, "--model.init_args.")


def data_option_problems(values: Mapping[str, Any]) -> list[str]:
    return _problems(values, DATA_RULES, "--data.init_args.")
