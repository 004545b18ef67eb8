"""Dotted flags into vcap's mapping options: ``--model.init_args.reward_options.caption.judge_options.base_url URL``.

jsonargparse reads ``reward_options.caption.judge_options.base_url`` as a new key of ``reward_options`` and replaces
the whole mapping with it: every other reward option, and the judge itself, silently fall back to defaults. Such
flags are taken out of the arguments before parsing and set as one leaf of the parsed mapping afterwards.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

MAPPING_OPTIONS = ("model.init_args.reward_options", "model.init_args.generation_kwargs",
                   "data.init_args.judge_options")


def split_leaf_flags(args: list[str]) -> tuple[list[str], list[tuple[str, list[str], Any]]]:
    """(the other arguments, [(mapping option, path inside it, value)]) from ``--<option>.<path> VALUE`` flags."""
    rest, leaves, i = [], [], 0
    while i < len(args):
        arg = args[i]
        option = next((o for o in MAPPING_OPTIONS if arg.startswith(f"--{o}.")), None)
        if option is None:
            rest.append(arg)
            i += 1
            continue
        name, has_value, value = arg.partition("=")
        if not has_value:
            if i + 1 >= len(args):
                rest.append(arg)  # the parser says what is missing
                break
            value, i = args[i + 1], i + 1
        leaves.append((option, name[len(option) + 3:].split("."), yaml.safe_load(value)))
        i += 1
    return rest, leaves


def apply_leaves(config: Any, leaves: list[tuple[str, list[str], Any]]) -> None:
    """Set each leaf inside the parsed mapping (a copy: defaults are shared objects)."""
    for option, path, value in leaves:
        try:
            mapping = copy.deepcopy(config.get(option)) or {}
        except KeyError:
            continue  # e.g. a data class without judge_options: the parser has already refused the flag
        node = mapping
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
        config[option] = mapping
