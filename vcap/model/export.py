"""Export that serves: merged weights, processor, chat template and vcap's frame/pixel settings in one dir.

``vcap predict --model.init_args.name_or_path <dir>`` (or any HF loader) then sees the trained model and,
through ``vcap_preprocessing.json``, decodes and resizes videos as in training: the datamodule takes
each setting from the export wherever its own value was left at the default.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
SETTINGS_FILE = "vcap_preprocessing.json"
PREPROCESSING_KEYS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "prompt",
                      "system_prompt")


def export_model(model, processor, path: str | Path, preprocessing: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (LoRA adapters merged into a copy) + ``processor`` + the preprocessing settings."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a PEFT model: serve plain weights, no peft needed to load
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    settings = {k: v for k, v in (preprocessing or {}).items() if k in PREPROCESSING_KEYS}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    log.info("exported the merged model, processor and preprocessing settings to %s", path)
    return path


def read_preprocessing(model_dir: str | Path) -> dict[str, Any]:
    file = Path(model_dir) / SETTINGS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def apply_exported_preprocessing(hparams, datamodule_class, model_dir: str | Path) -> dict[str, Any]:
    """Fill datamodule settings still at their defaults from an export; returns what was applied."""
    settings = read_preprocessing(model_dir)
    if not settings:
        return {}
    defaults = {name: p.default for name, p in inspect.signature(datamodule_class.__init__).parameters.items()}
    applied = {k: v for k, v in settings.items()
               if k in hparams and k in defaults and hparams[k] == defaults[k] and v != defaults[k]}
    for key, value in applied.items():
        hparams[key] = value
    if applied:
        log.info("preprocessing from %s: %s", Path(model_dir) / SETTINGS_FILE, applied)
    return applied
