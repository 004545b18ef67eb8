"""User errors: mistakes the user can fix, shown as one line without a traceback (``--debug`` shows it)."""
from __future__ import annotations

import difflib
import importlib
import inspect
import re


class UsageError(ValueError):
    """A bad option, input path or manifest; the message names the flag or field and how to fix it."""


class ServiceError(RuntimeError):
    """Something outside vcap failed so that the run cannot go on (a judge server down, a full disk, nothing could
    be scored): one line naming what and where, exit status 1."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "fix your input": vcap's own all derive from ``UsageError`` (so this module imports
    nothing of vcap), plus jsonargparse's parse errors (imported lazily: a heavy module)."""
    from jsonargparse import ArgumentError

    return UsageError, ArgumentError


# Extra advice for errors raised by code that does not know the CLI flag names.
HINTS: tuple[tuple[str, str], ...] = (
    ("BenchDataError", "point --data.init_args.annotations and --data.init_args.video_dir at your copy"),
)


def one_line(err: BaseException) -> str:
    """The error as one line: its message with newlines folded, plus a hint naming the flag where we know it."""
    text = " ".join(part.strip() for part in str(err).strip().splitlines() if part.strip())
    text = text.replace(" -> ", "; ")
    for type_name, hint in HINTS:
        if type(err).__name__ == type_name and hint not in text:
            text = f"{text} ({hint})"
    return text


# -- jsonargparse's nested messages -> one line naming the flag ------------------------------------------------
_STRUCTURE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
              "- Expected a <class 'NoneType'>", "- Expected a path but")
_KEY = re.compile(r'Parser key "([\w.]+)":')
_CLASS = re.compile(r"Problem with given class_path '([\w.]+)':")


def init_parameters(cls: type) -> list[str]:
    """Constructor parameters of ``cls``, following ``**kwargs`` into base classes as jsonargparse does."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                  and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def did_you_mean(word: str, choices: list[str], strip: bool = False) -> str:
    """``; did you mean 'x'?`` for the closest choice, or nothing; ``strip`` drops the leading ``--`` of the answer
    (a key in a config file has none)."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean '{close[0].lstrip('-') if strip else close[0]}'?"


def _import(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _subclass_names(base_path: str) -> list[str]:
    base = _import(base_path)
    if base is None:
        return []
    seen, todo = [], [base]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("vcap") and cls.__name__ not in seen:
            seen.append(cls.__name__)
        todo += cls.__subclasses__()
    return sorted(seen)


BASES = {"model": "vcap.methods.policy.CaptionPolicyModule", "data": "vcap.data.datamodule.CaptionDataModule"}


def simplify_parser_message(text: str, options: list[str] | None = None) -> str:
    """The innermost problem of a jsonargparse error, rewritten to name the flag and the valid values."""
    keys = _KEY.findall(text)
    group, param = (keys[0] if keys else None), (keys[-1] if len(keys) > 1 else None)
    classes = _CLASS.findall(text)
    cls = _import(classes[0]) if classes else None
    lines = [line.strip().lstrip("- ").strip() for line in text.splitlines()]
    leaves = [line for line in lines if line and not line.startswith(_STRUCTURE) and not _CLASS.search(line)
              and not re.fullmatch(r'Parser key "[\w.]+":', line)]
    leaf = _KEY.sub("", leaves[0]).strip() if leaves else text.strip()
    prefix = f"--{group}.init_args." if group in BASES and cls is not None else f"--{group}." if group else "--"
    flag = f"{prefix}{param}" if param else f"--{group}" if group else ""

    if m := re.search(r"Option '(\w+)' is not accepted", leaf):
        valid = init_parameters(cls) if cls is not None else []
        where = f" of {cls.__name__}" if cls is not None else ""
        return f"{prefix}{m[1]} is not an option{where}{did_you_mean(m[1], valid)}"
    if m := re.search(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", leaf):
        choices = [c.strip(" '\"") for c in m[1].split(",")]
        return f"{flag}: {m[2]!r} is not one of {', '.join(choices)}{did_you_mean(m[2], choices)}"
    if m := re.search(r"Expected a (.*?)\. Got value: (.*)", leaf):
        kind = re.sub(r"<class '([\w.]+)'>", r"\1", m[1])
        return f"{flag}: expected {kind}, got {m[2]!r}"
    if m := re.search(r"Expected a dot import path string: (\S+)", text):
        valid = _subclass_names(BASES.get(group, ""))
        return (f"--{group} {m[1]}: no such class{did_you_mean(m[1], valid)}"
                + (f" (valid: {', '.join(valid)}, or a full import path)" if valid else ""))
    if m := re.search(r"the following arguments are required: (.*)", leaf):
        flags = [f"--{name.split('.', 1)[-1]}" for name in re.split(r",\s*", m[1].strip())]
        hint = (": start from a recipe, e.g. --config configs/demo.yaml, or name the classes, e.g. "
                "--model GRPOModule --data ShapesDataModule") if {"--model", "--data"} & set(flags) else ""
        return f"missing {' and '.join(flags)}{hint}"
    if m := re.search(r"does not accept option '([\w.]+)'", leaf):  # a key of a config file
        return f"unknown option {m[1]} (in a config file){did_you_mean('--' + m[1], options or [], strip=True)}"
    if m := re.search(r"[Uu]nrecognized arguments: (\S+)", leaf):
        option = m[1].split("=", 1)[0]
        return f"unknown option {option}{did_you_mean(option, options or [])}"
    return f"{flag}: {leaf}" if flag else leaf
