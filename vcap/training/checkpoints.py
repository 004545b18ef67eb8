"""Checkpoint files: written atomically, read with one clear line when they are not whole.

Lightning serialises a checkpoint to memory and then writes it over its final name, so a full disk (or a kill)
in the middle leaves a truncated ``epoch=0-step=2.ckpt`` that looks like any other. ``AtomicCheckpointIO``,
vcap's default, writes ``.<name>.tmp`` next to it, flushes it to the disk and renames it over the final name:
a checkpoint file either is whole or does not exist. A write that fails stops the run with one line; the
checkpoints written before it are untouched.

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain data load, and of other Python
objects only the few types vcap's own checkpoints hold (``SAFE_TYPES``); anything else (a pickle planted under a run
folder, whose loading would run its code) is refused in one line naming the file. ``--weights_only false`` is the
user's explicit, logged choice for a checkpoint of another program that they trust.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vcap.errors import ServiceError, UsageError

log = logging.getLogger(__name__)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive


class CheckpointWriteError(ServiceError):
    """A checkpoint could not be written (disk full, no permission): the message names the file and the reason."""


class CheckpointReadError(UsageError):
    """A checkpoint file that is not whole (truncated by a full disk or a kill while an older version wrote it)."""


class CheckpointRefusedError(CheckpointReadError):
    """A checkpoint holding Python objects that ``weights_only=True`` does not load: loading them could run code."""


# The non-tensor types of vcap's own checkpoints. Through the CLI, hyperparameters are plain data (the config as
# written); a module or data module built in Python keeps what it was given: pathlib paths and a peft LoraConfig
# (its runtime config and PeftType enum inside). Found by loading real checkpoints with weights_only=True.
SAFE_TYPES = ("pathlib.PosixPath", "peft.tuners.lora.config.LoraConfig", "peft.tuners.lora.config.LoraRuntimeConfig",
              "peft.utils.peft_types.PeftType")


def safe_types() -> list[type]:
    """``SAFE_TYPES`` as classes (peft imported only when a checkpoint is read)."""
    found = []
    for name in SAFE_TYPES:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another peft version: its configs are refused like anything else
            log.debug("safe checkpoint type %s not importable", name)
    return found


@contextlib.contextmanager
def safe_loading():
    """``torch.load(weights_only=True)`` inside accepts ``SAFE_TYPES`` besides tensors and plain data."""
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: the allow-list is process-wide
        torch.serialization.add_safe_globals(safe_types())
        yield
        return
    with torch.serialization.safe_globals(safe_types()):
        yield


def refused(path: str | Path, err: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = found[1] if found else (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    return (f"--ckpt_path {path}: refused to load: it holds Python objects that are not plain data ({what}); vcap "
            "loads checkpoints with weights_only=True, which runs no code from the file: delete it unless you wrote "
            "it, or, for a checkpoint of another program you trust, pass --weights_only false")


def warn_unsafe(path: str | Path) -> None:
    log.warning("--weights_only false: %s is unpickled with full Python, so any code it holds runs", path)


def load(source: str | Path, path: str | Path | None = None, weights_only: bool = True, **kwargs: Any) -> Any:
    """``torch.load`` of a checkpoint file with the safe loader (``path``: the name the user gave, for messages)."""
    if not weights_only:
        warn_unsafe(path or source)
        return torch.load(source, weights_only=False, **kwargs)
    try:
        with safe_loading():
            return torch.load(source, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointRefusedError(refused(path or source, err)) from None


def _is_local(path: str | Path) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local files atomically and turns a failed read or write into one line.
    Remote paths (s3://, gs://) keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not _is_local(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        tmp = path.with_name(f".{path.name}.tmp")
        writer = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                writer = _ErrorKeepingWriter(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())  # on the disk before the rename makes it the checkpoint
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            # torch's zip writer turns a failed write into "RuntimeError: unexpected pos"; the OSError says why
            cause = writer.error if writer is not None and writer.error is not None else err
            if not isinstance(cause, OSError):
                raise
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {cause.strerror or cause} (errno {cause.errno}); nothing was "
                "written under that name and earlier checkpoints are intact: free space (or fix the folder's "
                "permissions), then resume with --ckpt_path last") from None
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
        """Lightning's load with ``weights_only=True`` and ``SAFE_TYPES`` (None means True here); only an
        explicit ``False`` unpickles arbitrary objects, and says so."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        if weights_only is False:
            warn_unsafe(path)
        try:
            with safe_loading():
                return super().load_checkpoint(path, weights_only=weights_only is not False, **kwargs)
        except pickle.UnpicklingError as err:
            raise CheckpointRefusedError(refused(path, err)) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
            if "PytorchStreamReader" not in str(err) and not isinstance(err, (EOFError, zipfile.BadZipFile)):
                raise
            raise CheckpointReadError(unreadable(path, err)) from None


class _ErrorKeepingWriter:
    """The file torch.save writes to, keeping the first OSError of a write (torch replaces it by its own error)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def unreadable(path: str | Path, reason: BaseException | str) -> str:
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return (f"--ckpt_path {path}: not a whole checkpoint ({text[:160]}); it was cut short while being written "
            "(a full disk or a kill): resume from an earlier checkpoint of the run, or delete this file and pass "
            "--ckpt_path last")


def checkpoint_problem(path: str | Path) -> str | None:
    """Cheap check that a local checkpoint file is whole: a zip archive's central directory is written last, so a
    truncated file has none. Folders (sharded checkpoints) and pre-zip torch files are left to the loader."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        return None if head[:1] == b"\x80" else unreadable(path, "not a torch checkpoint")
    try:
        with zipfile.ZipFile(path):
            return None
    except zipfile.BadZipFile as err:
        return unreadable(path, err)


@dataclass
class CheckpointInfo:
    path: Path
    global_step: int
    log_dir: Path | None  # the run folder that wrote it (vcap stores it; else inferred from <run>/checkpoints/)
    hparams: dict[str, Any] = field(default_factory=dict)  # the model's saved hyperparameters (the config of its run)


def read_info(path: str | Path, weights_only: bool = True) -> CheckpointInfo:
    """Step, run folder and model hyperparameters of a checkpoint, without reading its tensors (memory-mapped);
    with the safe loader, so a file holding other objects is refused before anything else reads it."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointReadError(problem)
    try:  # a sharded checkpoint folder (FSDP) keeps the non-tensor state in meta.pt
        source = path / "meta.pt" if path.is_dir() else path
        state = load(source, path, weights_only, map_location="cpu", mmap=not path.is_dir())
    except CheckpointRefusedError:
        raise
    except Exception as err:  # a checkpoint of another program or torch version: let Lightning's loader say more
        log.debug("could not read %s ahead of Lightning: %s", path, err)
        return CheckpointInfo(path, 0, _inferred_log_dir(path))
    stored = state.get("vcap_log_dir")
    hparams = state.get("hyper_parameters")
    return CheckpointInfo(path, int(state.get("global_step", 0)), Path(stored) if stored else _inferred_log_dir(path),
                          dict(hparams) if isinstance(hparams, dict) else {})


def _inferred_log_dir(path: Path) -> Path | None:
    return path.parent.parent if path.parent.name == "checkpoints" else None
