"""Reading the text files users hand us (manifests, benchmark annotations): UTF-8, or one line saying where not."""
from __future__ import annotations

from pathlib import Path

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
