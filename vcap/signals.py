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




@contextmanager
def raising_on_signals() -> Iterator[None]:
    """For commands without a trainer (``vcap annotate``): Ctrl-C and SIGTERM raise ``Interrupted`` at once, or
    within a quarter second inside a judge wait (which polls ``requested()``); the caller says what was kept."""
    request(None)

    def handler(signum: int, frame) -> None:
        request(signum)
        if not polling() and not in_finalizer(frame):
            raise Interrupted(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: Python's own handling stays
        yield
        return
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        request(None)
