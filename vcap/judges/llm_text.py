"""Prompt texts and reply parsing shared by the LLM judges (our own wording; override with a prompt file)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from vcap.judges.base import VERDICTS

PROMPTS = {
    "entailment": (
        "You compare a video description with a list of statements about the same video.\n"
        "For each statement decide whether the description supports it:\n"
        "- entailment: the description states or clearly implies it;\n"
        "- contradiction: the description states something incompatible with it;\n"
        "- neutral: the description does not say.\n\n"
        "Description:\n{premise}\n\nStatements (JSON list):\n{hypotheses}\n\n"
        'Reply with JSON only: {{"verdicts": ["entailment" | "neutral" | "contradiction", ...]}} '
        "with exactly {count} verdicts, in the order of the statements."
    ),
    "extract_events": (
        "List the key events of this video description: each a short sentence (10 words or fewer) with a subject "
        "and an action or motion, one action per sentence, pronouns replaced by the nouns they stand for. Static "
        "details, scene cuts and camera motion are not events. At most {max_items} events.\n\n"
        "Description:\n{text}\n\nReply with JSON only: {{\"events\": [\"...\", ...]}}"
    ),
    "extract_objects": (
        "List the key objects of this video description, at most {max_items}. Describe each with its attributes "
        "in 10 words or fewer, one attribute per item, phrased as \"There is/are ...\". Atmosphere, music, "
        "sounds, scene cuts, camera motion and actions are not objects.\n\nDescription:\n{text}\n\n"
        "Reply with JSON only: {{\"objects\": [\"...\", ...]}}"
    ),
    "answer_question": (
        "Answer a question about a video using only this description of it. If the description does not say, "
        "answer that it does not say. Give a short phrase.\n\nDescription:\n{text}\n\nQuestion: {question}\n\n"
        "Reply with JSON only: {{\"answer\": \"...\"}}"
    ),
    "grade_answer": (
        "Grade a predicted answer to a question about a video against the correct answer. Synonyms and "
        "paraphrases count as matches.\n\nQuestion: {question}\nCorrect answer: {answer}\n"
        "Predicted answer: {prediction}\n\n"
        'Reply with JSON only: {{"pred": "yes" | "no", "score": <integer 0-5>}}'
    ),
    "rate": (
        "Rate a generated video caption against a reference description of the same video.\n"
        "completeness: how much of the reference's content (subjects, attributes, actions, their order) the "
        "caption covers, 0 (nothing) to 10 (everything).\n"
        "naturalness: how fluent, coherent and non-repetitive the caption reads, 0 to 10.\n\n"
        "Reference:\n{reference}\n\nCaption:\n{text}\n\n"
        'Reply with JSON only: {{"completeness": <0-10>, "naturalness": <0-10>}}'
    ),
    "extract_structure": (
        "From this video description, list every key subject with its attributes and its actions in the order "
        "they happen. Use short phrases.\n\nDescription:\n{text}\n\n"
        'Reply with JSON only: {{"subjects": [{{"subject": "...", "attributes": ["..."], "actions": ["..."]}}]}}'
    ),
}


def load_prompts(prompt_file: str | None) -> dict[str, str]:
    """Built-in prompts, with any of them replaced by a JSON file {"entailment": "...", ...}."""
    prompts = dict(PROMPTS)
    if prompt_file:
        path = Path(prompt_file)
        try:
            custom = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read judge prompt file {path}: {err}") from err
        unknown = set(custom) - set(PROMPTS)
        if unknown:
            raise ValueError(f"{path}: unknown prompt names {sorted(unknown)}; valid: {sorted(PROMPTS)}")
        prompts.update(custom)
    return prompts


class ReplyError(ValueError):
    """A judge reply that does not hold the expected JSON."""


_FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def parse_json_object(reply: str) -> dict:
    """The first JSON object in a reply: tolerates code fences, prose around it, trailing commas,
    Python literals (True/None, single quotes)."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ReplyError(f"no JSON object in reply: {reply[:120]!r}")
    body = _TRAILING_COMMA.sub(r"\1", text[start:end + 1])
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError) as err:
            raise ReplyError(f"malformed JSON in reply: {reply[:120]!r}") from err
    if not isinstance(value, dict):
        raise ReplyError(f"reply JSON is not an object: {reply[:120]!r}")
    return value


def parse_verdicts(reply: str, count: int) -> list[str]:
    data = parse_json_object(reply)
    verdicts = data.get("verdicts", data.get("events"))
    if not isinstance(verdicts, list):
        raise ReplyError("reply has no 'verdicts' list")
    out = []
    for v in verdicts:
        label = (v.get("relationship", "") if isinstance(v, dict) else str(v)).strip().lower()
        if label not in VERDICTS:
            raise ReplyError(f"unknown verdict {label!r}; expected one of {VERDICTS}")
        out.append(label)
    if len(out) != count:
        raise ReplyError(f"expected {count} verdicts, got {len(out)}")
    return out


def parse_items(reply: str, key: str = "events") -> list[str]:
    items = parse_json_object(reply).get(key)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ReplyError(f"reply has no '{key}' list of strings")
    return [i.strip() for i in items if i.strip()]


def parse_rating(reply: str) -> tuple[float, float]:
    """(completeness, naturalness), each in [0, 10]."""
    data = parse_json_object(reply)
    out = []
    for key in ("completeness", "naturalness"):
        try:
            value = float(data[key])
        except (KeyError, TypeError, ValueError) as err:
            raise ReplyError(f"reply has no numeric '{key}'") from err
        if not 0 <= value <= 10:
            raise ReplyError(f"'{key}' = {value} is outside 0-10")
        out.append(value)
    return out[0], out[1]


def parse_answer(reply: str) -> str:
    answer = parse_json_object(reply).get("answer")
    if not isinstance(answer, str):
        raise ReplyError("reply has no 'answer' string")
    return answer.strip()


def parse_grade(reply: str) -> tuple[str, float]:
    """("yes" | "no", score in [0, 5])."""
    data = parse_json_object(reply)
    pred = str(data.get("pred", "")).strip().lower()
    if pred not in ("yes", "no"):
        raise ReplyError(f"'pred' must be yes or no, got {pred!r}")
    try:
        score = float(data["score"])
    except (KeyError, TypeError, ValueError) as err:
        raise ReplyError("reply has no numeric 'score'") from err
    if not 0 <= score <= 5:
        raise ReplyError(f"score {score} is outside 0-5")
    return pred, score
