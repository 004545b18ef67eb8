"""A small name -> class registry with errors that list the valid names (rewards, judges, matchers).

``build`` also accepts ``package.module:ClassName`` so user code can plug in without touching vcap.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def wrap(cls):
            cls.name = name
            self[name] = cls
            return cls
        return wrap

    def resolve(self, name: str) -> Callable:
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"cannot import {self.kind} {name!r}: {err}") from err
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {sorted(self)} (or 'package.module:ClassName')")
        return self[name]

    def build(self, name: str, **options: Any):
        cls = self.resolve(name)
        try:
            return cls(**options)
        except TypeError as err:
            raise ValueError(f"bad options for {self.kind} {name!r}: {err}") from err
