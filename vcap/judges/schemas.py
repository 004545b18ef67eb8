"""JSON schemas of the robust prompts' replies, sent as ``response_format`` where the server supports it
(robust protocol only: the official protocol's requests stay byte-exact). A constrained decoder then cannot
write prose around the JSON, a wrong label or a wrong number of verdicts, so fewer replies need a re-ask."""
from __future__ import annotations

from vcap.judges.base import VERDICTS


def _object(properties: dict, name: str) -> dict:
    return {"name": name, "schema": {"type": "object", "properties": properties, "required": list(properties),
                                     "additionalProperties": False}}


def _strings(max_items: int | None = None) -> dict:
    out = {"type": "array", "items": {"type": "string"}}
    return {**out, "maxItems": max_items} if max_items else out


def reply_schema(name: str, count: int | None = None, max_items: int | None = None) -> dict | None:
    """{'name', 'schema'} for a robust prompt's reply, or None where no schema applies."""
    if name == "entailment":
        verdicts = {"type": "array", "items": {"type": "string", "enum": list(VERDICTS)}}
        if count is not None:
            verdicts.update(minItems=count, maxItems=count)
        return _object({"verdicts": verdicts}, "verdicts")
    if name in ("extract_events", "extract_objects"):
        key = name.split("_")[1]
        return _object({key: _strings(max_items)}, key)
    if name == "answer_question":
        return _object({"answer": {"type": "string"}}, "answer")
    if name == "answer_choice":
        return _object({"choice": {"type": "string", "enum": [chr(65 + k) for k in range(count or 26)]}}, "choice")
    if name == "make_questions":
        question = {"type": "object", "properties": {"question": {"type": "string"}, "options": _strings(4),
                                                     "answer": {"type": "string"}},
                    "required": ["question", "options", "answer"], "additionalProperties": False}
        items = {"type": "array", "items": question}
        return _object({"questions": {**items, "maxItems": count} if count else items}, "questions")
    if name == "grade_answer":
        return _object({"pred": {"type": "string", "enum": ["yes", "no"]},
                        "score": {"type": "integer", "minimum": 0, "maximum": 5}}, "grade")
    if name == "rate":
        number = {"type": "number", "minimum": 0, "maximum": 10}
        return _object({"completeness": number, "naturalness": number}, "rating")
    if name == "extract_structure":
        subject = {"type": "object", "properties": {"subject": {"type": "string"}, "attributes": _strings(),
                                                    "actions": _strings()},
                   "required": ["subject", "attributes", "actions"], "additionalProperties": False}
        return _object({"subjects": {"type": "array", "items": subject}}, "structure")
    return None
