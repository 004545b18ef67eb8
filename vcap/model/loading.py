"""Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL policy and its processor from a hub id, a local dir or an embedded name."""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch

from vcap.errors import UsageError
from vcap.model.tiny import GEOMETRIES, ensure_tiny
from vcap.model.tiny_families import TINY_FAMILY_NAMES, ensure_tiny_family

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED = {
    "vcap-tiny": "random-weight tiny Qwen2-VL for tests, built on first use",
    "vcap-tiny-sft": "vcap-tiny after the demo SFT warm start (configs/demo/sft.yaml), shipped in vcap/assets",
    "vcap-demo": "random-weight small Qwen2-VL (hidden 128, head_dim 32), built on first use",
    "vcap-tiny-qwen2.5-vl": "random-weight tiny Qwen2.5-VL (real processor classes), built on first use",
    "vcap-tiny-qwen3-vl": "random-weight tiny Qwen3-VL (real processor classes), built on first use",
}
# LoRA goes on the language model's linear layers only; the ViT stays as it is by default.
LANGUAGE_MODEL_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# model folders a shipped recipe reads but only another one writes: name_or_path -> the command that writes it
RECIPE_EXPORTS = {
    "runs/sft-stage1": ("vcap fit --config configs/demo/sft.yaml --model.init_args.export_dir runs/sft-stage1",
                        "stage 1 of the demo warm start; configs/demo/sft_human.yaml, stage 2, starts from it"),
}


class ModelNotFoundError(UsageError, RuntimeError):
    """A model that is neither a local folder, an embedded tiny model nor in the hub cache (offline)."""


def missing_local_model(name_or_path: str) -> str | None:
    """``'<path> does not exist ...; <what writes it>'`` when ``name_or_path`` means a local folder that is not
    there, else None (it exists, or it reads as a hub id). One ``/`` looks like a hub id (``Qwen/Qwen2-VL-7B``), but
    a name whose first part is a folder here (``runs/`` of ``runs/sft-stage1``), or that a shipped recipe exports
    (``RECIPE_EXPORTS``), is a path in this working directory: advice to ``hf download`` it would mislead."""
    local = Path(name_or_path).expanduser()
    if not name_or_path or local.exists():
        return None
    first = name_or_path.split("/", 1)[0]
    explicit = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    under_folder = "/" in name_or_path and bool(first) and Path(first).is_dir()
    made_by = RECIPE_EXPORTS.get(os.path.normpath(name_or_path))
    if not (explicit or under_folder or made_by):
        return None
    why = f" ({first}/ is a folder here, so this is a local path, not a hub id)" if under_folder and not explicit else ""
    if made_by:
        how = f"`{made_by[0]}` writes it ({made_by[1]})"
    else:
        how = (f"a run with --model.init_args.export_dir {name_or_path} writes it; or give a saved model folder "
               f"(config.json, weights, processor files), a hub id, or an embedded name: {sorted(EMBEDDED)}")
    return f"{name_or_path} does not exist{why}; {how}"


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path in GEOMETRIES:
        return str(ensure_tiny(name_or_path))
    if name_or_path in TINY_FAMILY_NAMES:
        return str(ensure_tiny_family(name_or_path))
    if name_or_path in EMBEDDED:
        path = ASSETS / name_or_path
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"embedded model {name_or_path!r} is missing from {path}; rebuild it with "
                                     "`vcap fit --config configs/demo/sft.yaml` (see README)")
        return str(path)
    return name_or_path


def _not_found(name_or_path: str, err: Exception) -> ModelNotFoundError:
    local = Path(name_or_path).expanduser()
    missing = missing_local_model(name_or_path)
    if missing:  # a local folder that is not there: the loader's own error (about the hub) is beside the point
        return ModelNotFoundError(f"cannot load model: the local folder {missing}")
    if local.exists():
        hint = f"the local directory {local} exists but could not be loaded; it needs config.json, weights and processor files"
    else:
        hint = ("set --model.init_args.name_or_path to a local directory (with config.json, weights and processor files) "
                "or a Hugging Face hub id such as Qwen/Qwen2-VL-7B-Instruct. Offline machines need the files first: "
                f"`hf download {name_or_path}` on a machine with network, then copy the cache or the "
                f"directory over. Embedded names: {sorted(EMBEDDED)}")
    return ModelNotFoundError(f"cannot load model {name_or_path!r}: {type(err).__name__}: {err}\n  -> {hint}")


def load_processor(name_or_path: str):
    from transformers import AutoProcessor

    path = resolve_model_path(name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _not_found(name_or_path, err) from err
    processor.tokenizer.padding_side = "left"  # batched generation needs prompts aligned on the right
    return processor


def find_vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual":
            return module
    return None


def load_policy(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = "sdpa",
                gradient_checkpointing: bool = False, freeze_vision: bool = True, peft=None,
                load_in_4bit: bool = False):
    """The trainable policy. ``peft`` is a ``peft.PeftConfig`` (e.g. LoraConfig) or None for full fine-tuning."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    if load_in_4bit and peft is None:
        raise ValueError("load_in_4bit (QLoRA) needs a PEFT config: add model.peft with class_path: peft.LoraConfig")
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[dtype])
    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _not_found(name_or_path, err) from err
    if load_in_4bit:
        keep_4bit_layout_for_training(model)
    if freeze_vision:
        tower = find_vision_tower(model)
        if tower is None:
            log.warning("freeze_vision: no 'visual' module found in %s", type(model).__name__)
        else:
            tower.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if peft is not None:
        from peft import get_peft_model

        peft = as_peft_config(peft)
        if getattr(peft, "target_modules", None) is None:  # a copy: the user's config (the hparams) stays as given
            peft = copy.copy(peft)
            peft.target_modules = LANGUAGE_MODEL_LINEARS
        if gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, peft)
    return model


def as_peft_config(peft):
    """A ``peft.PeftConfig`` from what a user or a checkpoint gives: the object itself, or its
    ``{class_path, init_args}`` mapping (what LightningCLI stores in the hyper-parameters); None stays None."""
    from peft import PeftConfig

    if peft is None or isinstance(peft, PeftConfig):
        return peft
    if isinstance(peft, dict) and isinstance(peft.get("class_path"), str):
        import importlib

        module, _, name = peft["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module or "peft"), name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"model.peft: cannot import {peft['class_path']!r} ({err}); use e.g. "
                             "class_path: peft.LoraConfig") from err
        init_args = dict(peft.get("init_args") or {})
        if not (isinstance(cls, type) and issubclass(cls, PeftConfig)):
            raise ValueError(f"model.peft: {peft['class_path']!r} is not a PEFT config; use e.g. peft.LoraConfig")
        return cls(**{k: v for k, v in init_args.items() if k not in ("peft_type",)})
    raise ValueError(f"model.peft must be a PEFT config such as `class_path: peft.LoraConfig` with its init_args, "
                     f"not {type(peft).__name__} {peft!r}"[:300])


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def keep_4bit_layout_for_training(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer's weights for its AVX512-BF16 CPU inference kernel the first time
    the layer runs in eval mode without gradients; later training forwards then take that inference path and fail
    ("a view of a leaf Variable that requires grad is being used in an in-place operation"). GRPO alternates
    rollouts (eval) and updates (train), so the repacking is turned off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
