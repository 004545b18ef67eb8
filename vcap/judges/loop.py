"""One asyncio event loop per process, in a daemon thread, for the judges' HTTP clients.

Each ``OpenAIJudge`` makes its client (connection pool, TLS context) once, on this loop, and every call reuses it.
A new client and a new loop per call cost about 20 ms of CPU with the GIL held (measured on 2 cores), taken from the
training thread whose log-prob passes run while the judge answers (``overlap_rewards``); kept connections also skip
a TCP handshake per request. After a fork (a DataLoader worker) the child gets a loop of its own.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def _forget_in_child() -> None:
    """A forked child has no loop thread, and the lock may have been held by another thread at the fork."""
    global _lock, _loop, _thread, _pid
    _lock, _loop, _thread, _pid = threading.Lock(), None, None, None


os.register_at_fork(after_in_child=_forget_in_child)


def background_loop() -> asyncio.AbstractEventLoop:
    """This process's judge loop, started on first use."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="vcap-judge-loop", daemon=True)
            _thread.start()
            _pid = os.getpid()
        return _loop


def close_on_loop(client: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Closes an async client on the loop it was made on (its connections belong to that loop), if that loop still
    runs in this process; used when a judge is collected, so runs that build many judges keep no open sockets."""
    if loop is _loop and _pid == os.getpid() and loop.is_running():
        asyncio.run_coroutine_threadsafe(client.close(), loop)


def run_on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Runs ``coroutine`` on the judge loop and returns its result (or raises its error) in the calling thread.
    A caller already on that loop would wait for itself forever: it is refused."""
    loop = background_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("run_on_loop called from the judge loop itself")
    job = asyncio.run_coroutine_threadsafe(_guarded(coroutine), loop)
    try:
        raised, value = job.result()
    except BaseException:  # the caller stops waiting (a KeyboardInterrupt outside polled()): so do its requests
        job.cancel()
        raise
    if raised:
        raise value
    return value


async def _guarded(coroutine: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """(False, result), or (True, error) for a BaseException such as ``vcap.signals.Interrupted``: a task re-raises
    KeyboardInterrupt and SystemExit into the loop itself, which would stop the loop and leave the caller waiting."""
    try:
        return False, await coroutine
    except (Exception, asyncio.CancelledError):  # errors reach the caller through the future as they are;
        raise                                    # a cancelled job stays cancelled
    except BaseException as err:
        return True, err
