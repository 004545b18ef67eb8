"""Reply parsing for the LLM judges: tolerant parsers (robust protocol) and the official scripts' parsers.

The ``official_*`` functions accept and reject exactly the replies the official scoring code accepts and rejects
(Tarsier ``evaluation/metrics/evaluate_dream_gpt.py``, CaReBench ``utils/dream_gpt.py``, AuroraCap
``post_eval/process_vdc_result.py``); a rejected reply raises ``ReplyError`` and, there as here, costs a try.
"""
from __future__ import annotations

import ast
import json
import re

from vcap.judges.base import VERDICTS
from vcap.judges.prompts import ROBUST as PROMPTS, load_prompts  # noqa: F401  (re-exported)

class ReplyError(ValueError):
    """A judge reply that does not hold the expected JSON."""


class ReplyCountError(ReplyError):
    """An entailment reply with the wrong number of entries (CaReBench's loop fails the sample on it at once)."""


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


def parse_choice(reply: str, count: int) -> int:
    """The index of the option a reply's ``choice`` letter names ('B', 'b', 'B.', 'B) ...'); anything else is a
    failed reply, never a wrong answer."""
    choice = parse_json_object(reply).get("choice")
    letter = choice.strip()[:1].upper() if isinstance(choice, str) and choice.strip() else ""
    rest = choice.strip()[1:2] if isinstance(choice, str) else ""
    if not letter.isalpha() or not letter.isascii() or rest.isalnum() or not 0 <= ord(letter) - 65 < count:
        raise ReplyError(f"'choice' must be one of the option letters A-{chr(64 + count)}, got {choice!r}")
    return ord(letter) - 65


def parse_questions(reply: str, count: int) -> list[dict]:
    """The well-formed questions of a reply ({question, options: 2+ distinct strings, answer: one of them}), at most
    ``count``; a reply with none is a failed reply."""
    items = parse_json_object(reply).get("questions")
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        question, options, answer = item.get("question"), item.get("options"), item.get("answer")
        if (isinstance(question, str) and question.strip() and isinstance(options, list) and len(options) >= 2
                and all(isinstance(o, str) and o.strip() for o in options) and len(set(options)) == len(options)
                and answer in options):
            out.append({"question": question.strip(), "options": options, "answer": answer})
    if not out:
        raise ReplyError("reply has no well-formed question ({question, options, answer} with the answer among "
                         "2 or more distinct options)")
    return out[:count]


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


# -- the official scripts' parsers ---------------------------------------------------------------------------
def _strip_fence(text: str) -> str:
    """Official rule: only a reply that *starts* with a json/python fence loses its fences."""
    if text.startswith("```json"):
        return text.replace("```json", "").replace("```", "").strip()
    if text.startswith("```python"):
        return text.replace("```python", "").replace("```", "").strip()
    return text


def official_items(reply: str, key: str) -> list:
    """Extraction reply as the official code reads it: the whole reply is a Python literal with a list under
    ``key`` whose first item (if any) is a string; nothing is truncated, stripped or filtered."""
    try:
        items = ast.literal_eval(_strip_fence(reply))[key]
    except Exception as err:  # the official loop catches everything here and tries again
        raise ReplyError(f"not a Python literal with '{key}': {reply[:120]!r}") from err
    if not isinstance(items, list) or (items and not isinstance(items[0], str)):
        raise ReplyError(f"'{key}' is not a list of strings: {reply[:120]!r}")
    return items


def official_normalize(reply: str, key: str) -> str:
    """The official repair of an entailment reply before ``json.loads`` (whitespace collapse, fences, missing
    outer braces, True/False, ``}{`` joins, trailing commas, ``[Placeholder]``, a leading ``{Events:``)."""
    text = re.sub(r"\s+", " ", re.sub(r"\n+", "\n", reply.strip()))
    text = _strip_fence(text)
    if not text.startswith("{"):
        text = "{" + text
    if not text.endswith("}"):
        text = text + "}"
    text = text.replace("True", "true").replace("False", "false")
    text = text.replace("} {", "}, {").replace("}{", "}, {")
    for close in ("}", "]"):
        for junk in (",\n", ", \n"):
            text = text.replace(junk + close, "\n" + close)
        text = text.replace(", " + close, close).replace("," + close, close)
    text = text.replace("[Placeholder]", "null")
    return text.replace("{" + key.capitalize() + ":", "").strip()


def official_verdicts(reply: str, key: str, sent: int) -> list[str]:
    """Entailment reply as the official code reads it. ``sent`` is the number of items in the request's list
    (0 when the list was empty and the other text was sent in its place: then 0 or 1 entries are accepted and
    the sample scores 1 whatever they say, so [] is returned)."""
    try:
        filled = json.loads(official_normalize(reply, key))[key]
        ok_count = len(filled) == sent or (sent == 0 and len(filled) == 1)
    except Exception as err:
        raise ReplyError(f"not JSON with '{key}' after the official repairs: {reply[:120]!r}") from err
    if not ok_count:
        raise ReplyCountError(f"expected {sent or 1} '{key}' entries, got {len(filled)}")
    try:
        verdicts = [item["relationship"].strip().lower() for item in filled]
    except Exception as err:
        raise ReplyError(f"an entry has no 'relationship' string: {reply[:120]!r}") from err
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise ReplyError(f"unknown relationship {bad[0]!r}; expected one of {VERDICTS}")
    return verdicts if sent else []


def official_grade(reply: str) -> tuple[str, float]:
    """VDC grade reply as the official script reads it: ``ast.literal_eval`` of the whole reply merged into the
    QA dict, ``float(score)``, and ``pred`` kept verbatim (only exactly ``'yes'`` is a hit)."""
    qa: dict = {}
    try:
        qa.update(ast.literal_eval(reply))
        pred, score = qa["pred"], float(qa["score"])
    except Exception as err:  # the official script skips the whole video on any exception
        raise ReplyError(f"not a Python dict with 'pred' and a numeric 'score': {reply[:120]!r}") from err
    return (pred if isinstance(pred, str) else repr(pred)), score
