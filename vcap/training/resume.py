"""``--ckpt_path last`` and what a resumed run keeps of the run it continues.

``last`` is the checkpoint of the highest global step in the folder of the newest ``last*.ckpt`` among the run
folders of the configured logger (``<save_dir>/<name>/version_*/checkpoints/``) and every ``ModelCheckpoint`` folder
set in the config: after a kill, ``last.ckpt`` can lag the newest ``epoch=...-step=N.ckpt``, and resuming from it
would compute step N again and write it beside the first as ``-v1``. The logger's
version is then set to the folder that wrote it, so the run continues there: one folder, one ``metrics.csv``, one
``validation.json`` and one set of curves. None found is one line naming the folders searched.

Lightning's CSVLogger deletes ``metrics.csv`` when it reuses a version folder; the rows of steps up to the
checkpoint's are kept here (later ones are computed again), as are the validation runs and sample completions.
"""
from __future__ import annotations

import csv
import glob
import json
import re
import warnings
from pathlib import Path
from typing import Any

from vcap.training.checkpoints import CheckpointInfo, read_info
from vcap.errors import UsageError

LAST_GLOB = "last*.ckpt"


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    try:
        value = namespace.get(key, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def _class_name(item: Any) -> str:
    return str(_get(item, "class_path", "")).rpartition(".")[2]


def _loggers(trainer_cfg: Any) -> list[Any]:
    loggers = _get(trainer_cfg, "logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return [item for item in (loggers if isinstance(loggers, list) else [loggers]) if _get(item, "init_args")]


def _logger_root(item: Any) -> Path | None:
    """``<save_dir>/<name>``, where a logger keeps its ``version_N`` folders (None: not a file logger)."""
    save_dir = _get(item, "init_args.save_dir")
    if save_dir is None:
        return None
    name = _get(item, "init_args.name", "lightning_logs" if _class_name(item) == "CSVLogger" else "")
    return Path(save_dir) / name if name else Path(save_dir)


def _checkpoint_dirs(trainer_cfg: Any) -> list[Path]:
    callbacks = _get(trainer_cfg, "callbacks", [])
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return [Path(d) for c in callbacks if _class_name(c) == "ModelCheckpoint" and (d := _get(c, "init_args.dirpath"))]


def searched_folders(trainer_cfg: Any) -> list[Path]:
    """Where ``last`` is looked for, as globs' parents: the logger's run folders and configured dirpaths."""
    roots = [root / "*" / "checkpoints" for item in _loggers(trainer_cfg) if (root := _logger_root(item))]
    if not _loggers(trainer_cfg):  # no logger: Lightning writes under default_root_dir
        roots.append(Path(_get(trainer_cfg, "default_root_dir", ".")) / "checkpoints")
    return roots + _checkpoint_dirs(trainer_cfg)


def newest_last_checkpoint(trainer_cfg: Any) -> Path:
    # a file, or a folder for sharded (FSDP) checkpoints
    found = [Path(p) for folder in searched_folders(trainer_cfg) for p in glob.glob(str(folder / LAST_GLOB))]
    if not found:
        where = ", ".join(str(folder / "last.ckpt") for folder in searched_folders(trainer_cfg))
        raise UsageError(f"--ckpt_path last: no checkpoint of this run found (looked for {where}); drop --ckpt_path "
                         "to start fresh, or pass a checkpoint file")
    return max(found, key=lambda p: p.stat().st_mtime)


def newest_by_step(last: Path, weights_only: bool = True) -> CheckpointInfo:
    """The checkpoint of the highest global step in ``last``'s folder (``last`` on a tie), read by the safe loader;
    only those of the same run (a ``dirpath`` shared by several runs holds others)."""
    newest = read_info(last, weights_only)
    for path in sorted(last.parent.glob("*.ckpt")):
        if path.name == last.name:
            continue
        info = read_info(path, weights_only)
        if info.global_step > newest.global_step and info.log_dir == newest.log_dir:
            newest = info
    return newest


def resolve_last(cfg: Any, weights_only: bool = True) -> CheckpointInfo:
    """Point ``cfg.ckpt_path`` at the run's newest checkpoint and the logger at the folder that wrote it."""
    info = newest_by_step(newest_last_checkpoint(_get(cfg, "trainer")), weights_only)
    cfg.ckpt_path = str(info.path.resolve())
    continue_in(cfg, info)
    return info


def continue_in(cfg: Any, info: CheckpointInfo) -> None:
    """Set the version of the first logger whose root holds the checkpoint's run folder to that folder."""
    if info.log_dir is None:
        return
    for item in _loggers(_get(cfg, "trainer")):
        root = _logger_root(item)
        if root is not None and info.log_dir.parent.resolve() == root.resolve():
            match = re.fullmatch(r"version_(\d+)", info.log_dir.name)
            item.init_args.version = int(match[1]) if match else info.log_dir.name
            return


# -- what the resumed run keeps ----------------------------------------------------------------------------------
def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def keep_metrics(logger: Any, global_step: int) -> list[dict]:
    """Rows of the logger's ``metrics.csv`` up to ``global_step`` survive the CSVLogger reusing the folder; later
    rows are dropped (the resumed run logs them again). Returns the rows kept."""
    path = Path(logger.log_dir) / "metrics.csv"
    rows, header = [], []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) <= global_step]
    with warnings.catch_warnings():  # "exists and is not empty ... will be deleted": exactly what is undone here
        warnings.filterwarnings("ignore", message=".*exists and is not empty")
        experiment = logger.experiment
    if rows:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        experiment.metrics_keys = sorted(header)  # later saves append under this header (or widen it)
    return rows


def keep_samples(log_dir: Path, global_step: int) -> None:
    """``samples.jsonl`` lines of steps after the checkpoint are written again by the resumed run."""
    path = log_dir / "samples.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and _json_step(line) <= global_step]
    path.write_text("".join(line + "\n" for line in kept))


def _json_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0.0


def earlier_validations(log_dir: Path, filename: str, global_step: int) -> list[dict]:
    """Validation runs of ``validation.json`` up to the checkpoint's step."""
    path = log_dir / filename
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (ValueError, AttributeError):
        return []
    return [r for r in runs if r.get("global_step", 0) <= global_step]
