"""``--ckpt_path``: the options given now win over the checkpoint's saved ones, except those that fix the model.

Lightning's CLI replaces the model options of the command line with a checkpoint's saved hyperparameters; vcap does
not: a resumed run (and a validate/test/predict of a checkpoint) uses the config files and flags given now. A few
options cannot change, because the checkpoint's weights and optimizer state belong to them: they are compared here,
before anything loads, and a difference stops the run with one line per option.

- fit (resume): the model class, ``name_or_path``, ``peft`` (on/off and the adapter's shape) and ``freeze_vision``
  (which weights train: the optimizer state holds exactly those).
- validate / test / predict: ``name_or_path`` and ``peft`` (the weights must fit the model; the class may differ:
  every module validates the same way).

Everything else (learning rate, judge and its URL, limits, logging, ...) changes; the optimizer's learning rate and
weight decay restored from the checkpoint are set to the current values (``use_current_optimizer_options``).
"""
from __future__ import annotations

from typing import Any

FIT_FROZEN = ("_class_path", "name_or_path", "peft", "freeze_vision")
EVAL_FROZEN = ("name_or_path", "peft")
# The parts of a PEFT config that define the adapter weights and what they compute; the others (dropout, the
# initialisation, runtime and bookkeeping fields) may change between runs.
ADAPTER_KEYS = ("r", "lora_alpha", "alpha", "target_modules", "exclude_modules", "modules_to_save",
                "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora",
                "bias", "lora_bias", "target_parameters", "trainable_token_indices")
MISSING = object()


def frozen_keys(subcommand: str) -> tuple[str, ...]:
    return FIT_FROZEN if subcommand == "fit" else EVAL_FROZEN


def flag(key: str) -> str:
    return "--model" if key == "_class_path" else f"--model.init_args.{key}"


def _peft(value: Any) -> tuple[str, dict] | None:
    """(class name, init args) of a PEFT config as the CLI stores it ({class_path, init_args}) or as an object."""
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value.get("class_path", "")).rpartition(".")[2], dict(value.get("init_args") or {})
    to_dict = getattr(value, "to_dict", None)
    return type(value).__name__, dict(to_dict() if callable(to_dict) else vars(value))


def _plain(value: Any) -> Any:
    """Enum members, paths and collections compared as the plain values the CLI stores (order aside)."""
    if isinstance(value, (list, tuple, set)):
        return sorted(str(_plain(v)) for v in value)
    if hasattr(value, "__fspath__"):
        return str(value)
    return getattr(value, "value", value)


def peft_differences(saved: Any, current: Any) -> list[str]:
    """The adapter-defining keys (or 'on/off', 'class') in which two PEFT configs differ."""
    old, new = _peft(saved), _peft(current)
    if old is None or new is None:
        return [] if old is new else ["on/off"]
    if old[0] != new[0]:
        return ["class"]
    return [k for k in ADAPTER_KEYS if k in old[1] and k in new[1] and _plain(old[1][k]) != _plain(new[1][k])]


def _same(key: str, saved: Any, current: Any) -> bool:
    if key == "peft":
        return not peft_differences(saved, current)
    if key == "_class_path":  # a short name and a full class path name the same class
        return str(saved).rpartition(".")[2] == str(current).rpartition(".")[2]
    return _plain(saved) == _plain(current)


def frozen_changes(saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) of every frozen key that differs. A key the checkpoint does not hold
    (an older checkpoint, a module built in Python without the CLI's class path) is not compared."""
    changes = []
    for key in keys:
        old, new = saved.get(key, MISSING), current.get(key, MISSING)
        if old is MISSING or new is MISSING or _same(key, old, new):
            continue
        changes.append((key, old, new))
    return changes


def show(key: str, value: Any, other: Any = None) -> str:
    """A value as the message shows it: repr for text, null for None, ``LoraConfig(r=64, ...)`` for PEFT."""
    if isinstance(value, bool):
        return str(value).lower()
    if key != "peft" or value is None:
        return "null" if value is None else repr(value) if isinstance(value, str) else str(value)
    name, args = _peft(value)
    differing = [k for k in peft_differences(value, other) if k in ADAPTER_KEYS]
    shown = differing or [k for k in ("r", "lora_alpha", "target_modules") if k in args]
    return f"{name}({', '.join(f'{k}={_plain(args.get(k))!r}' for k in shown)})"


def fix_hint(key: str, saved: Any) -> str:
    """How to give the checkpoint's value on the command line, where one flag does it."""
    if key == "peft":
        return f" ({flag(key)} null)" if saved is None else " (the same peft options, e.g. --config configs/lora.yaml)"
    if isinstance(saved, (str, bool, int, float)):
        text = str(saved).lower() if isinstance(saved, bool) else str(saved)
        return f" ({flag(key)} {text})"
    return ""


def change_problems(ckpt_path: Any, subcommand: str, saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per frozen option that differs between the checkpoint and the config given now."""
    if subcommand == "fit":
        why, other = "a resumed run keeps its model", "or drop --ckpt_path to start a new run"
    else:
        why, other = "the checkpoint's weights belong to that model", "or pass the checkpoint's own model options"
    return [f"--ckpt_path {ckpt_path}: {flag(key)} is {show(key, new, old)} now but {show(key, old, new)} in the "
            f"checkpoint; {why}: pass the checkpoint's value{fix_hint(key, old)}, {other}"
            for key, old, new in frozen_changes(saved, current, frozen_keys(subcommand))]


def model_options(model_config: Any) -> dict[str, Any]:
    """The parsed ``model`` option as the checkpoint stores it: ``{_class_path, **init_args}`` in plain data."""
    config = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config or {})
    return {"_class_path": config.get("class_path"), **(config.get("init_args") or {})}


def use_current_optimizer_options(optimizers: list, schedulers: list, learning_rate: float,
                                  weight_decay: float) -> None:
    """After a resume: the learning rate and weight decay given now, not the checkpoint's. Each param group's lr
    becomes ``learning_rate`` times the schedule's current factor (the LambdaLR warm-up), as an uninterrupted run
    with this learning rate would have it; bit-identical when nothing changed."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = learning_rate
            group["weight_decay"] = weight_decay
    for scheduler in schedulers:
        groups = scheduler.optimizer.param_groups
        scheduler.base_lrs = [learning_rate] * len(groups)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is None:  # not vcap's LambdaLR: the next step() applies the new base
            continue
        for group, factor in zip(groups, lambdas):
            group["lr"] = learning_rate * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]
