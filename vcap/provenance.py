"""What made an output: the identity of a model and its settings, and a folder that is reused only for exactly that.

Captions are expensive (a 7B model over a benchmark), so vcap keeps them and makes each only once. A kept caption
may be reused only by a run that would have made the same one: the same model (its name *and* the values of its
weights, so a checkpoint or a LoRA adapter counts as another model), the same generation settings, the same video
settings and the same prompt. ``OutputFolder`` writes that identity into ``made_by.json`` next to the outputs,
refuses (or, where asked, replaces) a folder made by anything else, and holds a lock while a run writes there,
so two runs can never interleave their lines in one file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from vcap.errors import UsageError
from vcap.textfiles import write_json

MADE_BY = "made_by.json"
LOCK = ".vcap.lock"
SAMPLED_VALUES = 4096  # per tensor: enough that any training step (every weight moves) changes the fingerprint


class FolderInUseError(UsageError):
    """Another run writes to the same output folder now."""


class MadeByOtherError(UsageError):
    """The folder holds outputs made by another model or other settings."""


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def weights_fingerprint(named_tensors: Iterable[tuple[str, Any]]) -> str:
    """A hash of every tensor's name, shape, dtype and up to ``SAMPLED_VALUES`` of its values, evenly spaced (all of
    them for smaller tensors). Hashing every value of a 7B model would take minutes; a training step moves nearly
    every weight, so a sample of each tensor tells trained weights from untrained ones. Sharded tensors (FSDP) are
    read through their local shard."""
    import torch

    h = hashlib.sha256()
    for name, tensor in named_tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        flat = local.detach().reshape(-1)
        if flat.numel() > SAMPLED_VALUES:
            index = torch.linspace(0, flat.numel() - 1, SAMPLED_VALUES, device=flat.device).long()
            flat = flat[index]
        values = flat.float().cpu().contiguous() if flat.is_floating_point() else flat.to(torch.int64).cpu()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """The fingerprint of a model's parameters and buffers (adapters included)."""
    return weights_fingerprint([*model.named_parameters(), *model.named_buffers()])


def slug(text: str) -> str:
    """A folder-name form of a model name: 'Qwen/Qwen2-VL-7B-Instruct' -> 'Qwen2-VL-7B-Instruct'."""
    last = Path(str(text).rstrip("/")).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in last)[:60]


def first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """'model: 'a' there, 'b' now' for the first key whose value differs, or None."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {json.dumps(a, default=str)} there, {json.dumps(b, default=str)} now"
    return None


class OutputFolder:
    """A folder of outputs made by one identity. ``open`` locks it (one writer at a time) and checks or writes
    ``made_by.json``; ``made_by.json`` holds ``key`` (what must match for a reuse) and ``about`` (informative:
    the checkpoint path, vcap's version)."""

    def __init__(self, path: str | Path, flag: str = "--data.init_args.output_dir"):
        self.path, self.flag = Path(path), flag
        self._lock = None

    def open(self, key: dict, about: dict | None = None, on_mismatch: str = "stop",
             outputs: tuple[str, ...] = ()) -> None:
        """``on_mismatch``: 'stop' (one line naming the first difference) or 'replace' (``outputs`` are deleted and
        made again). A folder that holds ``outputs`` but no ``made_by.json`` came from an older vcap: it is treated
        as made by something else."""
        if on_mismatch not in ("stop", "replace"):
            raise ValueError(f"on_mismatch must be 'stop' or 'replace', got {on_mismatch!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        record = self.path / MADE_BY
        old = None
        if record.is_file():
            try:
                old = json.loads(record.read_text())
            except ValueError:
                old = {"key": {"unreadable": str(record)}}
        elif any((self.path / name).exists() for name in outputs):
            old = {"key": {"made_by": "unknown (written before vcap recorded what made its outputs)"}}
        if old is not None and old.get("key") != key:
            if on_mismatch == "stop":
                self.release()
                raise MadeByOtherError(
                    f"{self.path} holds outputs made by something else ({first_difference(old.get('key') or {}, key)}); "
                    f"they are never reused for another model or other settings: pass another {self.flag}, or "
                    f"delete {self.path} to make them again")
            for name in outputs:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        write_json(record, {"key": key, "about": about or {}})

    def lock(self) -> None:
        from filelock import FileLock, Timeout

        if self._lock is not None:
            return
        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise FolderInUseError(f"{self.path} is in use by another vcap run (its lock {self.path / LOCK} is "
                                   f"held): wait for that run to end, or pass another {self.flag}") from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def lock_output(path: Path, flag: str):
    """A held lock on one output file (``.<name>.lock`` beside it), or one line naming the run that holds it."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUseError(f"{path} is being written by another vcap run (its lock {lock.lock_file} is held): "
                               f"wait for that run to end, or pass another {flag}") from None
    return lock


def made_by_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.made_by.json")


def write_made_by(output: Path, key: dict, about: dict | None = None) -> Path:
    """``<output>.made_by.json``: what made a single output file."""
    return write_json(made_by_path(output), {"key": key, "about": about or {}})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vcap_version() -> str:
    try:
        from importlib.metadata import version

        return version("vcap")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "unknown"


def about_run(**extra: Any) -> dict:
    """Informative provenance (never part of the key): vcap's version, the command line, and ``extra``."""
    return {"vcap": vcap_version(), "argv": sys.argv[1:], "pid": os.getpid(), **extra}
