"""Text files: reading what users hand us (manifests, benchmark annotations: UTF-8, or one line saying where
not) and writing what we hand back (strict JSON, written atomically)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vcap.errors import UsageError


class NotUtf8Error(UsageError):
    """A text input that is not UTF-8; the message names the file, line and column of the first bad byte."""


def read_utf8(path: str | Path) -> str:
    """The file's text; a UTF-8 byte-order mark is dropped (json.loads refuses it)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise NotUtf8Error(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                           "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def json_safe(value: Any) -> Any:
    """``value`` with every float NaN/inf as None: strict JSON readers (jq, JavaScript) refuse bare ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write through a temporary file in the same folder and rename it over ``path``: a kill or a full disk
    leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Strict JSON (NaN as null), indented, written atomically."""
    return write_text_atomic(path, json.dumps(json_safe(value), indent=2, allow_nan=False))
