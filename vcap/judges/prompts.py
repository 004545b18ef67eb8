"""Judge prompt templates: our own wording, two sets, and prompt files that can replace any of them.

Two sets exist because the two benchmark protocols want different replies:

* ``robust`` (in-training rewards, ``protocol: robust`` benchmarks): JSON replies with a ``verdicts`` list,
  read by a tolerant parser.
* ``official`` (``protocol: official`` benchmarks): the reply shapes the official scoring scripts parse — a
  Python dict ``{"events": [...]}`` / ``{"objects": [...]}`` from extraction, ``{"events": [{"relationship":
  ...}, ...]}`` from entailment, plain text from the VDC answer step and a Python dict ``{'pred', 'score'}``
  from the VDC grade step.

A template is one user message, or a system message plus a user message. Placeholders are ``str.format``
fields (literal braces are doubled: ``{{``) with optional transforms after a colon, applied left to right:

  ``lower``   lower-case                      ``squote``  replace ``"`` by ``'``
  ``oneline`` newlines become spaces          ``strip``   strip surrounding whitespace
  ``pylist``  a list as Python prints it      ``json``    a list/str as JSON

e.g. ``{text:lower,squote}`` or ``{hypotheses:pylist}``. A list field without a transform is written as JSON.
A prompt file (JSON) is ``{"official": {name: template}, "robust": {name: template}}`` (a flat
``{name: template}`` means the robust set); a template is a string (the user message) or
``{"system": "...", "user": "...", "reply_key": "objects"}``. ``reply_key`` names the key the official
parsers read (default: ``events`` / ``objects`` by kind).
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

TRANSFORMS = ("lower", "squote", "oneline", "strip", "pylist", "json")

ROBUST = {
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
    "answer_choice": (
        "Answer a multiple-choice question about a video using only this description of it. Choose the option the "
        "description supports; when it does not tell, choose the option that says so. Do not guess from what such "
        "videos usually show.\n\nDescription:\n{text}\n\nQuestion: {question}\nOptions:\n{options}\n\n"
        'Reply with JSON only: {{"choice": "<the option\'s letter>"}}'
    ),
    "make_questions": (
        "Write {count} multiple-choice questions about a video that this description of it answers: who or what is "
        "in it, colours, sizes, counts, actions and their directions and order. Each question has 3 or 4 short "
        "options, exactly one of them right by the description; the wrong ones must be plausible for such a video, "
        "so that someone who has not read the description cannot tell which is right.\n\nDescription:\n{text}\n\n"
        'Reply with JSON only: {{"questions": [{{"question": "...", "options": ["...", "..."], '
        '"answer": "<the right option, copied exactly>"}}]}}'
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

# Our wording, with the reply shapes and the input handling (lower-casing, quotes, Python lists) of the
# official scripts. Copy the official strings into a prompt file to reproduce their requests byte for byte.
OFFICIAL = {
    "extract_events": (
        "Here is a description of a video:\nDescription: {text:lower,squote}\n\n"
        "List at most 10 key events of the description. Each event has an action, motion or movement (not a "
        "static fact), is one short sentence of at most 10 words with a subject and a verb, cannot be split "
        "further, and names things instead of using pronouns. Scene cuts and camera motion are not events; "
        "do not repeat events.\n\n"
        "Answer with a Python dictionary with the key \"events\" whose value is a list of strings, and nothing "
        "else, e.g. {{\"events\": [\"a man opens a door.\", ...]}}"
    ),
    "extract_objects": (
        "Here is a description of a video:\nDescription: {text:lower,squote}\n\n"
        "List at most 10 key objects of the description. Each item is one short sentence starting with "
        "\"There is\" or \"There are\" that gives one object with one attribute (colour, size, shape, "
        "material ...), at most 10 words; an object with several attributes becomes several items. Use nouns, "
        "not pronouns. Atmosphere, music, sounds, scene cuts, camera motion and actions are not objects.\n\n"
        "Answer with a Python dictionary with the key \"objects\" whose value is a list of strings, and nothing "
        "else, e.g. {{\"objects\": [\"There is a red car.\", ...]}}"
    ),
    "entail_events": (
        "Below are a video description and a list of events. For every event, decide how the description "
        "relates to it: \"entailment\" (the description entails the event), \"contradiction\" (a detail of "
        "the description contradicts the event) or \"neutral\" (neither).\n\n"
        "Video Description:\n{premise:lower}\n\nEvents: {hypotheses:pylist}\n"
        "Answer with JSON only, one entry per event in order:\n"
        "{{\"events\": [{{\"event\": \"the event\", \"relationship\": \"entailment, neutral or contradiction\", "
        "\"reason\": \"why\"}}, ...]}}\nOutput:"
    ),
    "entail_objects": (
        "Below are a video description and a list of objects. For every object, decide how the description "
        "relates to it: \"entailment\" (the description entails the object), \"contradiction\" (a detail of "
        "the description contradicts the object) or \"neutral\" (neither).\n\n"
        "Video Description:\n{premise:lower}\n\nObjects: {hypotheses:pylist}\n"
        "Answer with JSON only, one entry per object in order:\n"
        "{{\"objects\": [{{\"object\": \"the object\", \"relationship\": \"entailment, neutral or contradiction\", "
        "\"reason\": \"why\"}}, ...]}}\nOutput:"
    ),
    "answer_question": {
        "system": "You answer questions about a video or image using only a detailed description of it. Read the "
                  "description carefully, rely on nothing else, and answer with a short sentence or phrase.",
        "user": "Answer the question from the description.\n\ndetailed description: {text}, question: {question}\n"
                "Give only the short answer, with no explanation.",
    },
    "grade_answer": {
        "system": "You grade answers to questions about videos: compare a predicted answer with the correct "
                  "answer and decide whether they mean the same thing. Synonyms and paraphrases are matches.",
        "user": "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {prediction}\n\n"
                "Say whether the prediction matches (yes/no) and give an integer score from 0 to 5 (5: full "
                "match). Answer with a Python dictionary with keys 'pred' ('yes' or 'no') and 'score' (an "
                "integer), and nothing else, e.g. {{'pred': 'no', 'score': 1}}",
    },
}

FIELDS = {
    "entailment": {"premise", "hypotheses", "count"}, "entail_events": {"premise", "hypotheses", "count"},
    "entail_objects": {"premise", "hypotheses", "count"}, "extract_events": {"text", "max_items"},
    "extract_objects": {"text", "max_items"}, "answer_question": {"text", "question"},
    "answer_choice": {"text", "question", "options", "count"}, "make_questions": {"text", "count"},
    "grade_answer": {"question", "answer", "prediction"}, "rate": {"text", "reference"}, "extract_structure": {"text"},
}
DEFAULT_REPLY_KEYS = {"extract_events": "events", "extract_objects": "objects", "entail_events": "events",
                      "entail_objects": "objects"}


class _Value:
    """A field value whose format spec is a comma-separated list of TRANSFORMS."""

    def __init__(self, value):
        self.value = value

    def __format__(self, spec: str) -> str:
        value = self.value
        for name in filter(None, (s.strip() for s in spec.split(","))):
            if name == "pylist":
                value = repr(list(value))
            elif name == "json":
                value = json.dumps(value, ensure_ascii=False)
            elif isinstance(value, list):
                value = [_apply(name, v) for v in value]
            else:
                value = _apply(name, value)
        if isinstance(value, list):
            return json.dumps(value, ensure_ascii=False)
        return str(value)


def _apply(name: str, text):
    text = str(text)
    return {"lower": text.lower, "squote": lambda: text.replace('"', "'"),
            "oneline": lambda: text.replace("\n", " "), "strip": text.strip}[name]()


@dataclass(frozen=True)
class PromptTemplate:
    user: str
    system: str | None = None
    reply_key: str | None = None

    def messages(self, **values) -> list[dict]:
        wrapped = {k: _Value(v) for k, v in values.items()}
        out = [{"role": "system", "content": self.system.format(**wrapped)}] if self.system is not None else []
        return out + [{"role": "user", "content": self.user.format(**wrapped)}]


def _check(template: str, name: str, where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"{where}: prompt '{name}' is not a valid format string ({err}); write literal braces "
                         "as {{ and }}") from err
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in FIELDS[name]:
            raise ValueError(f"{where}: prompt '{name}' uses {{{field}}}; its fields are {sorted(FIELDS[name])} "
                             "(write literal braces as {{ and }})")
        bad = [s for s in (spec or "").split(",") if s.strip() and s.strip() not in TRANSFORMS]
        if bad or conversion:
            raise ValueError(f"{where}: prompt '{name}' field {{{field}}} has unknown transform(s) "
                             f"{bad or [conversion]}; valid: {list(TRANSFORMS)}")


def make_template(name: str, value, where: str) -> PromptTemplate:
    if isinstance(value, str):
        value = {"user": value}
    if not isinstance(value, dict) or "user" not in value or set(value) - {"system", "user", "reply_key"}:
        raise ValueError(f"{where}: prompt '{name}' must be a string or an object with 'user' and optional "
                         "'system', 'reply_key'")
    for part in ("system", "user"):
        if value.get(part) is not None:
            _check(value[part], name, where)
    return PromptTemplate(value["user"], value.get("system"), value.get("reply_key") or DEFAULT_REPLY_KEYS.get(name))


def load_prompts(prompt_file: str | None) -> dict[str, dict[str, PromptTemplate]]:
    """{'robust': {name: template}, 'official': {name: template}}: built-ins, replaced by the file's entries."""
    sets = {"robust": dict(ROBUST), "official": dict(OFFICIAL)}
    if prompt_file:
        path = Path(prompt_file)
        try:
            custom = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read judge prompt file {path}: {err}") from err
        if not isinstance(custom, dict):
            raise ValueError(f"{path}: expected a JSON object of prompts")
        if not set(custom) & {"robust", "official"}:
            custom = {"robust": custom}
        unknown_sets = set(custom) - set(sets)
        if unknown_sets:
            raise ValueError(f"{path}: unknown prompt sets {sorted(unknown_sets)}; valid: ['official', 'robust']")
        for protocol, entries in custom.items():
            unknown = set(entries) - set(sets[protocol])
            if unknown:
                raise ValueError(f"{path}: unknown {protocol} prompt names {sorted(unknown)}; "
                                 f"valid: {sorted(sets[protocol])}")
            sets[protocol].update(entries)
    return {protocol: {name: make_template(name, value, str(prompt_file or "built-in prompts"))
                       for name, value in entries.items()} for protocol, entries in sets.items()}
