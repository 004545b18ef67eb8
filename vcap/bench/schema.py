"""Benchmark annotation records, validated at load time: a bad record fails with ``file:line: field: problem``.

The models name only the fields vcap reads; every other field of the official files is allowed and kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from vcap.textfiles import read_utf8


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DreamContent(_Open):
    type: str
    text: Optional[str] = None
    reference: Optional[str] = None


class DreamMessage(_Open):
    role: str
    content: list[DreamContent]


class DreamExtra(_Open):
    events: Optional[list[str]] = None


class DreamMessagesRecord(_Open):
    """Tarsier2 jsonl (``bytedance/tarsier:data/annotations/DREAM-1k.jsonl``)."""
    messages: list[DreamMessage]
    dataset: str
    idx: Union[int, str]
    vid: Union[int, str]
    extra_info: Optional[DreamExtra] = None


class DreamFlatText(_Open):
    response: str


class DreamFlatRecord(_Open):
    """The older Tarsier jsonl."""
    text: DreamFlatText
    dataset: str
    idx: Union[int, str]
    vid: Union[int, str]
    extra_info: Optional[DreamExtra] = None


class DreamHFRecord(_Open):
    """HF ``omni-research/DREAM-1K`` ``json/metadata.json`` (its card types fields as strings)."""
    idx: Union[int, str]
    video_file: str
    source: str
    description: str
    events: Union[list[str], str, None] = None


class VDCQuestion(_Open):
    question: str
    answer: str


class CareBenchRecord(_Open):
    """HF ``MCG-NJU/CaReBench`` ``json/metadata.json``; ``events`` / ``objects`` lists are optional."""
    video: str
    caption: str
    events: Optional[list[str]] = None
    objects: Optional[list[str]] = None
    category: Optional[str] = None


class RecordError(ValueError):
    pass


def rows(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) for each record of a .jsonl file or of a JSON array / object of records."""
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(data, dict):
        yield from ((f"{path}: record {key!r}", value) for key, value in data.items())
        return
    if not isinstance(data, list):
        raise RecordError(f"{path}:1: expected a JSON array of records")
    # line of each array element: re-scan the text with the decoder, element by element
    decoder, pos, starts = json.JSONDecoder(), text.index("[") + 1, []
    for _ in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        starts.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    yield from ((f"{path}:{line}", value) for line, value in zip(starts, data))


def validate(model: type[BaseModel], value: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise RecordError(f"{where}: {field}: {first['msg']} (got {str(first.get('input'))[:80]!r}; "
                          f"{err.error_count()} problem(s) in this record)") from None
