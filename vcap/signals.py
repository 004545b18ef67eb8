"""The pending interrupt (Ctrl-C / SIGTERM), shared without heavy imports by the trainer and long waits (judges)."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_requested: int | None = None  # the signal of an interrupt not yet acted on (read by long waits, e.g. the judge)
_polling = 0  # > 0 while a wait that checks ``requested()`` itself runs: the handler must not raise inside it


def request(signum: int | None) -> None:
    global _requested
    _requested = signum


def requested() -> int | None:
    """The pending SIGINT/SIGTERM, for code that waits long and can stop between its waits."""
    return _requested


@contextmanager
def polled() -> Iterator[None]:
    """Within: a signal is only recorded; the code inside checks ``requested()`` and stops itself. An exception
    raised by the handler inside an asyncio event loop can strand a coroutine half-run (its ``finally`` then runs
    at garbage collection, on a closed loop, and prints a traceback)."""
    global _polling
    _polling += 1
    try:
        yield
    finally:
        _polling -= 1


def polling() -> bool:
    return _polling > 0


def in_finalizer(frame) -> bool:
    """Is the interrupted frame a finalizer (``__del__``, a weakref callback), where a raised exception is ignored?"""
    return frame is not None and (frame.f_code.co_name == "__del__"
                                  or frame.f_code.co_filename.endswith(("_weakrefset.py", "weakref.py")))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; a KeyboardInterrupt, so Lightning shuts down as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


