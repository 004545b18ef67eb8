"""Checks the CLI runs on the parsed config before it builds anything.

Building the model loads judges and embedding models and creates caches; the trainer creates run folders. A
wrong path or a missing GPU must fail before any of that, in seconds, with one line naming the flag to change.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from vcap.errors import UsageError, did_you_mean

# Set by ``--bench`` for the official benchmarks, so that forgetting the model fails instead of scoring a toy.
MODEL_NOT_SET = "<set --model.init_args.name_or_path>"
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
# Manifest fields each reward reads.
REWARD_FIELDS = {"think": ("structure",), "caption": ("events",), "cnscore": ("caption",)}
VALIDATION_FIELDS = {"structure": "validation's think F1", "events": "validation's caption metric"}


class PreflightError(UsageError):
    """Several independent problems, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _class_or_none(cfg: Any) -> type | None:
    try:
        return import_class(cfg.class_path)
    except (AttributeError, ImportError, ValueError):
        return None


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    try:
        value = namespace.get(key, default) if namespace is not None else default
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def accelerator_problem(accelerator: Any) -> str | None:
    import torch

    if not isinstance(accelerator, str):
        return None
    name = accelerator.lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        return (f"trainer.accelerator is {accelerator!r} but this machine has no usable CUDA GPU; pass "
                "--trainer.accelerator cpu to run on the CPU (practical for the tiny demo models only)")
    if name == "mps" and not torch.backends.mps.is_available():
        return "trainer.accelerator is 'mps' but MPS is not available here; pass --trainer.accelerator cpu"
    return None


def _strategy_name(strategy: Any) -> tuple[str, type | None]:
    """``--trainer.strategy`` as the user wrote it ('fsdp', or the class name of a class_path) and its class."""
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(strategy, str):  # the registry's class, not an instance (DeepSpeed's would import deepspeed)
        return strategy, StrategyRegistry[strategy.lower()]["strategy"] if strategy.lower() in StrategyRegistry else None
    if isinstance(strategy, type):
        return strategy.__name__, strategy
    cls = _class_or_none(strategy) if _get(strategy, "class_path") else type(strategy)
    return (cls.__name__ if isinstance(cls, type) else str(strategy)), cls


def strategy_problem(strategy: Any, accelerator: Any) -> str | None:
    """Strategies Lightning or torch refuse on the accelerator given (Lightning finds out only once the model is
    built and a judge cache opened; torch only when the first process group starts)."""
    import torch
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    if strategy is None or (isinstance(strategy, str) and strategy.lower() == "auto"):
        return None
    name, cls = _strategy_name(strategy)
    if isinstance(strategy, str) and cls is None:
        from lightning.pytorch.strategies import StrategyRegistry

        return (f"--trainer.strategy {strategy}: not a strategy name{did_you_mean(strategy.lower(), list(StrategyRegistry))}"
                "; valid: auto, ddp, ddp_spawn, fsdp, deepspeed and the rest of Lightning's StrategyRegistry (a "
                "strategy class with options goes in a config as class_path, as in configs/grpo_fsdp.yaml)")
    acc = accelerator.lower() if isinstance(accelerator, str) else "gpu" if "CUDA" in type(accelerator).__name__ \
        else str(_get(accelerator, "class_path", accelerator))
    gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    flags = f"--trainer.strategy {name} with --trainer.accelerator {acc}"
    if isinstance(cls, type) and issubclass(cls, FSDPStrategy) and acc not in ("gpu", "cuda") and "CUDA" not in acc:
        return (f"{flags}: Lightning's FSDP needs CUDA GPUs and trainer.accelerator set to gpu (auto is refused); "
                "pass --trainer.accelerator gpu on a GPU machine, or --trainer.strategy ddp (or auto) to run on the "
                "CPU")
    if isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy) and not gpu:
        return (f"{flags}: DeepSpeed runs on CUDA GPUs only; pass --trainer.accelerator gpu on a GPU machine, or "
                "--trainer.strategy ddp (or auto) to run on the CPU")
    backend = _get(strategy, "init_args.process_group_backend") if not isinstance(strategy, str) else None
    if isinstance(cls, type) and issubclass(cls, DDPStrategy) and str(backend).lower() == "nccl" and not gpu:
        return (f"{flags}: process_group_backend 'nccl' needs CUDA GPUs; set "
                "--trainer.strategy.init_args.process_group_backend gloo to run on the CPU, or pass "
                "--trainer.accelerator gpu on a GPU machine")
    return None


def model_problem(name_or_path: Any) -> str | None:
    """Is ``name_or_path`` loadable: an embedded name, a saved model folder, or a hub id we have or can fetch?"""
    from vcap.model.loading import ASSETS, EMBEDDED, missing_local_model
    from vcap.model.tiny import TINY_NAME

    flag = "--model.init_args.name_or_path"
    if not isinstance(name_or_path, str) or not name_or_path:
        return None
    if name_or_path == MODEL_NOT_SET:
        return (f"this benchmark needs the model to evaluate: pass {flag} (a hub id such as "
                "Qwen/Qwen2-VL-7B-Instruct, a local model folder, or vcap-tiny-sft for the toy demo model)")
    if name_or_path == TINY_NAME:
        return None
    if name_or_path in EMBEDDED:
        if not (ASSETS / name_or_path / "config.json").exists():
            return (f"embedded model {name_or_path!r} is missing from {ASSETS}; rebuild it with "
                    f"`vcap fit --config configs/demo/sft.yaml --model.init_args.export_dir {ASSETS / name_or_path}`")
        return None
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            return (f"{flag} {local} has no config.json: give the folder written by save_pretrained or "
                    "`hf download --local-dir`")
        return None
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        return (f"{flag} {name_or_path}: no such folder; give a saved model folder, a hub id such as "
                f"Qwen/Qwen2-VL-7B-Instruct, or an embedded name ({', '.join(sorted(EMBEDDED))})")
    missing = missing_local_model(name_or_path)  # 'runs/sft-stage1' when runs/ is a folder here: a path, not a hub id
    if missing:
        return f"{flag} {missing}"
    return hub_model_problem(name_or_path, flag)


def hub_model_problem(repo_id: str, flag: str) -> str | None:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    fetch = f"`hf download {repo_id}` (then copy the Hugging Face cache here if this machine has no network)"
    if constants.HF_HUB_OFFLINE:
        return (f"model {repo_id!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): "
                f"get it with {fetch}, or point {flag} at a local model folder")
    try:
        hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        return f"model {repo_id!r} is gated: accept its licence on huggingface.co, then run `hf auth login`"
    except RepositoryNotFoundError:
        return (f"no model {repo_id!r} on the Hugging Face hub: check the spelling of {flag} "
                "(private models need `hf auth login`)")
    except Exception as err:  # no network, proxy, timeout: the user can fix it the same way
        return f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}); get it with {fetch}"
    return None


def ckpt_problem(ckpt_path: Any) -> str | None:
    from vcap.training.checkpoints import checkpoint_problem

    if not isinstance(ckpt_path, (str, Path)) or str(ckpt_path) in CKPT_KEYWORDS:
        return None
    if Path(ckpt_path).is_file():
        return checkpoint_problem(ckpt_path)  # cut short by a full disk or a kill while written
    if Path(ckpt_path).is_dir():
        return None  # a sharded (FSDP / DeepSpeed) checkpoint folder
    return f"--ckpt_path {ckpt_path}: no such checkpoint file (or use 'last' / 'best' to resume a fit)"


def required_fields(model_cfg: Any, subcommand: str) -> dict[str, dict[str, str]]:
    """Manifest fields each data stage must have for this recipe: stage -> {field: who needs it}."""
    from vcap.methods.policy import DEFAULT_REWARDS, CaptionPolicyModule
    from vcap.methods.sft import SFTModule

    try:
        cls = import_class(model_cfg.class_path)
    except (AttributeError, ImportError, ValueError):
        return {}
    if not (isinstance(cls, type) and issubclass(cls, CaptionPolicyModule)):
        return {}
    if subcommand in ("validate", "test"):
        return {"validate": dict(VALIDATION_FIELDS)}
    if subcommand != "fit":
        return {}
    if issubclass(cls, SFTModule):
        train = {"structure": "the SFT target", "caption": "the SFT target"}
    else:
        rewards = _get(model_cfg.init_args, "rewards", DEFAULT_REWARDS)
        train = {f: f"the {name} reward" for name in rewards for f in REWARD_FIELDS.get(name, ())}
    return {"fit": train, "validate": dict(VALIDATION_FIELDS)}


def data_problem(data_cfg: Any, model_cfg: Any, subcommand: str) -> str | None:
    """Build the data module (cheap: it only stores options) and let it read and validate its inputs."""
    from vcap.errors import one_line, user_error_types

    if data_cfg is None or not _get(data_cfg, "class_path"):
        return None
    try:
        cls = import_class(data_cfg.class_path)
        init = data_cfg.init_args.as_dict() if hasattr(data_cfg.init_args, "as_dict") else dict(data_cfg.init_args)
        datamodule = cls(**init)
        if hasattr(datamodule, "check_inputs"):
            datamodule.check_inputs(subcommand, required_fields(model_cfg, subcommand))
    except (*user_error_types(), ValueError, FileNotFoundError) as err:
        return one_line(err)
    return None


def _as_dict(namespace: Any) -> dict:
    if namespace is None:
        return {}
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace)


def option_problems(model_cfg: Any, data_cfg: Any) -> list[str]:
    """Numeric options out of range (vcap.options), for vcap's own model and data classes."""
    from vcap.data.datamodule import CaptionDataModule
    from vcap.options import data_option_problems, model_option_problems
    from vcap.methods.policy import CaptionPolicyModule

    problems = []
    for cfg, base, check in ((model_cfg, CaptionPolicyModule, model_option_problems),
                             (data_cfg, CaptionDataModule, data_option_problems)):
        cls = _class_or_none(cfg)
        if isinstance(cls, type) and issubclass(cls, base):
            problems += check(_as_dict(_get(cfg, "init_args")))
    return problems


def judge_urls(cfg: Any) -> dict[str, str]:
    """base_url -> the config key that sets it, for every ``openai`` judge the run will call."""
    import inspect

    from vcap.judges.openai_judge import OpenAIJudge

    default = inspect.signature(OpenAIJudge).parameters["base_url"].default
    found: dict[str, str] = {}
    model_args = _as_dict(_get(cfg, "model.init_args"))
    for name, opts in (model_args.get("reward_options") or {}).items():
        if isinstance(opts, dict) and opts.get("judge") == "openai":
            url = (opts.get("judge_options") or {}).get("base_url", default)
            found.setdefault(url, f"model.init_args.reward_options.{name}.judge_options.base_url")
    data_args = _as_dict(_get(cfg, "data.init_args"))
    if data_args.get("judge") == "openai" and _get(cfg, "data.init_args.bench"):
        url = (data_args.get("judge_options") or {}).get("base_url", default)
        found.setdefault(url, "--data.init_args.judge_options (its base_url)")
    return found


def judge_problems(subcommand: str, cfg: Any) -> list[str]:
    """A judge server that does not answer fails here, in seconds, not at the first judged batch."""
    from vcap.judges.openai_judge import reachability_problem

    if subcommand not in ("fit", "validate", "test"):
        return []
    problems = []
    for url, key in judge_urls(cfg).items():
        problem = reachability_problem(url)
        if problem:
            problems.append(f"{problem}: start the server, or point {key} at one that runs")
    return problems


def preflight(subcommand: str, cfg: Any) -> None:
    """Raise ``PreflightError`` listing every problem found, one line each.

    Data modules that generate their inputs (``builds_inputs``, e.g. the synthetic shapes) are checked only
    once everything else is right, so a typo elsewhere never costs a dataset build.
    """
    model_cfg = _get(cfg, "model")
    data_cfg = _get(cfg, "data")
    problems = option_problems(model_cfg, data_cfg)
    accelerator = _get(cfg, "trainer.accelerator")
    problems += [p for p in (accelerator_problem(accelerator),
                             strategy_problem(_get(cfg, "trainer.strategy"), accelerator),
                             model_problem(_get(model_cfg, "init_args.name_or_path") if model_cfg else None),
                             ckpt_problem(_get(cfg, "ckpt_path"))) if p]
    builds = getattr(_class_or_none(data_cfg), "builds_inputs", False)
    other_rank = os.environ.get("LOCAL_RANK", "0") != "0"  # rank 0 builds generated inputs, as prepare_data does
    if not builds or (not problems and not other_rank):
        problem = data_problem(data_cfg, model_cfg, subcommand)
        problems += [problem] if problem else []
    if not problems:  # network calls only once everything else is right
        problems += judge_problems(subcommand, cfg)
    if problems:
        raise PreflightError(problems)
