"""Parse a structured-thinking completion: ``<think>[subjects JSON]</think><answer>caption</answer>``.

Parsing never raises: every failure becomes ``reason`` so rewards can score 0 and log why.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

STRICT_FORMAT = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Subject:
    name: str
    attributes: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"subject": self.name, "attributes": list(self.attributes), "actions": list(self.actions)}


@dataclass
class ParsedCompletion:
    text: str
    strict_format: bool  # the whole text is exactly <think>…</think><answer>…</answer>
    think: str | None
    answer: str | None
    subjects: list[Subject] | None  # None when the think block is not valid structured JSON
    reason: str | None  # why something failed to parse; None when everything parsed


def normalize(text: str) -> str:
    """Lower-case, punctuation-free, single-spaced text: the unit of exact matching."""
    return " ".join(_WORD.findall(text.lower()))


def _loads_lenient(raw: str):
    """json.loads after removing code fences and trailing commas, then on the outermost [...] / {...} span."""
    text = _FENCE.sub("", raw.strip())
    text = _TRAILING_COMMA.sub(r"\1", text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise ValueError("no JSON array or object in think block")
    start = min(starts)
    end = max(text.rfind("]"), text.rfind("}"))
    if end <= start:
        raise ValueError("unterminated JSON in think block")
    return json.loads(text[start:end + 1])


def _as_str_list(value, field_name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{field_name}' must be a list of strings")
    return [v for v in value if v.strip()]


def subjects_from_json(data) -> list[Subject]:
    """Accept a list of subject dicts, a single dict, or {"subjects": [...]}; raise ValueError otherwise."""
    if isinstance(data, dict):
        data = data.get("subjects", [data])
    if not isinstance(data, list):
        raise ValueError("think JSON must be a list of subjects")
    subjects = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"subject #{i} is not an object")
        name = item.get("subject", item.get("name"))
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"subject #{i} has no 'subject' name")
        subjects.append(Subject(name.strip(), _as_str_list(item.get("attributes"), "attributes"),
                                _as_str_list(item.get("actions"), "actions")))
    return subjects


def parse_completion(text: str) -> ParsedCompletion:
    strict = STRICT_FORMAT.match(text)
    think_m = strict or THINK_BLOCK.search(text)
    answer_m = ANSWER_BLOCK.search(text)
    think = think_m.group(1) if think_m else None
    answer = (strict.group(2) if strict else answer_m.group(1) if answer_m else None)
    answer = answer.strip() if answer is not None else None
    reason = None
    subjects = None
    if think is None:
        reason = "no <think>…</think> block"
    else:
        try:
            subjects = subjects_from_json(_loads_lenient(think))
        except (ValueError, json.JSONDecodeError) as err:
            reason = f"think block is not structured JSON: {err}"
    if answer is None and reason is None:
        reason = "no <answer>…</answer> block"
    elif reason is None and not strict:
        reason = "text outside the <think>/<answer> blocks"
    return ParsedCompletion(text, bool(strict), think, answer, subjects, reason)


def format_target(subjects: list[Subject], caption: str) -> str:
    """The completion a perfect model writes; used for SFT targets."""
    think = json.dumps([s.to_json() for s in subjects], ensure_ascii=False)
    return f"<think>{think}</think><answer>{caption}</answer>"
