"""The judges' persistent event loop (vcap.judges.loop): one client per judge reused by every call, and an interrupt
raised on the loop reaches the caller while the loop keeps serving (a KeyboardInterrupt raised inside a task would
otherwise stop the loop and leave the caller waiting forever)."""
import json
import pickle
import signal
import threading

import pytest

from tests.judge_server import ScriptedServer
from vcap.judges import build_judge
from vcap.judges.loop import background_loop, run_on_loop
from vcap.signals import Interrupted


def test_an_interrupt_on_the_loop_reaches_the_caller_and_the_loop_lives_on():
    async def value():
        return 7

    async def interrupted():
        raise Interrupted(signal.SIGINT)

    async def broken():
        raise ValueError("no")

    assert run_on_loop(value()) == 7
    caught = []

    def call():  # in a thread, so that a loop stopped by the interrupt fails this test instead of hanging it
        try:
            run_on_loop(interrupted())
        except Interrupted as err:
            caught.append(err)
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(10)
    assert not caller.is_alive() and len(caught) == 1
    with pytest.raises(ValueError, match="no"):
        run_on_loop(broken())
    assert run_on_loop(value()) == 7  # the same loop, still running
    assert background_loop() is background_loop()


def test_one_client_per_judge_reused_across_calls_and_threads(tmp_path):
    reply = json.dumps({"verdicts": ["entailment"]})
    with ScriptedServer(lambda body: ("reply", reply)) as server:
        judge = build_judge("openai", model="m", base_url=server.url, cache=None, max_retries=0)
        first = judge.complete([([{"role": "user", "content": "a"}], {})])
        client = judge._async_client[2]
        results = []
        worker = threading.Thread(target=lambda: results.append(judge.complete([([{"role": "user", "content": "b"}],
                                                                                  {})])))
        worker.start()
        worker.join()
        assert first == [reply] and results == [[reply]]
        assert judge._async_client[2] is client and len(server.requests) == 2
        copy = pickle.loads(pickle.dumps(judge))  # DDP spawn: the copy makes a client of its own
        assert copy._async_client is None
        assert copy.complete([([{"role": "user", "content": "c"}], {})]) == [reply]
        assert copy._async_client[2] is not client


def test_a_caller_that_stops_waiting_cancels_its_requests():
    """Ctrl-C outside polled() (library use): the caller's KeyboardInterrupt also cancels its job on the loop, which
    would otherwise go on sending requests and writing the cache after the caller has gone."""
    import asyncio

    finished, cancelled = threading.Event(), threading.Event()

    async def slow():
        try:
            await asyncio.sleep(3)
            finished.set()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # a real SIGINT at the main thread: it wakes the blocked wait, as Ctrl-C does (interrupt_main would not)
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_on_loop(slow())
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert cancelled.wait(5) and not finished.is_set()
