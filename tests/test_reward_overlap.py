"""Rewards sent at once and joined later (issue 27 item 1): ``RewardSet.submit`` scores every reward in a thread of
its own while the caller computes; ``result()`` equals the sequential ``__call__`` exactly, each judge request is
sent once, and the judge waits overlap."""
import json
import threading
import time

import pytest
import torch

from tests.judge_server import ScriptedServer
from tests.test_qa_reward import QA, completion
from vcap.rewards import RewardSet
from vcap.rewards.base import Reward, RewardOutput


def slow_judge(latency, log=None):
    """Entails every statement with 'left' in it; answers every choice with 'A'; ``latency`` seconds a request."""
    def script(body):
        if log is not None:
            log.append(time.perf_counter())
        time.sleep(latency)
        text = body["messages"][-1]["content"]
        if "Statements (JSON list)" in text:
            items = json.loads(text.split("Statements (JSON list):\n")[1].split("\n\n")[0])
            return ("reply", json.dumps({"verdicts": ["entailment" if "left" in s else "neutral" for s in items]}))
        return ("reply", json.dumps({"choice": "A"}))
    return script


def reward_set(url, **extra):
    judge = {"model": "judge", "base_url": url, "cache": None, "max_retries": 0, "concurrency": 16}
    return RewardSet({"format": 0.5, "caption": 1.0, "qa": 2.0},
                     {"caption": {"judge": "openai", "judge_options": judge, "mode": "linear"},
                      "qa": {"judge": "openai", "judge_options": judge, "asks": 2}, **extra})


def batch():
    records = [{"id": f"r{k}", "caption": "x", "events": ["the red circle moves left", "the square grows"], "qa": QA,
                "structure": []} for k in range(2)]
    texts = ["A red circle moves left.", "A square grows.", "Nothing.", "A red circle moves left. A square grows."]
    return [completion(t) for t in texts], [records[k // 2] for k in range(4)]


def test_submitted_rewards_equal_the_sequential_ones_and_ask_each_request_once():
    parsed, records = batch()
    with ScriptedServer(slow_judge(0.0)) as server:
        sequential = reward_set(server.url)(parsed, records)
        asked = len(server.requests)
        pending = reward_set(server.url).submit(parsed, records)
        overlapped = pending.result()
        assert len(server.requests) == 2 * asked  # the second run asked exactly as many: no reward scored twice
    assert torch.equal(overlapped.scores, sequential.scores) and overlapped.scores.abs().sum() > 0
    assert overlapped.components.keys() == sequential.components.keys()
    for name, values in sequential.components.items():
        assert torch.equal(values.nan_to_num(-1), overlapped.components[name].nan_to_num(-1)), name
    assert overlapped.failures == sequential.failures
    assert list(overlapped.scores_by) == ["format", "caption", "qa"]  # the order of the weights, whoever ended first


def test_the_judges_answer_while_the_caller_computes():
    parsed, records = batch()
    latency = 0.4
    arrivals = []
    with ScriptedServer(slow_judge(latency, arrivals)) as server:
        rewards = reward_set(server.url)
        start = time.perf_counter()
        sequential = rewards(parsed, records)
        sequential_seconds = time.perf_counter() - start
        arrivals.clear()
        start = time.perf_counter()
        pending = rewards.submit(parsed, records)
        submitted = time.perf_counter() - start
        time.sleep(2 * latency)  # the caller's own work (the log-prob passes)
        overlapped = pending.result()
    assert submitted < latency / 2  # submit does not wait for the judge
    assert arrivals and arrivals[0] - start < latency  # requests left before the caller's work ended
    assert pending.wait_seconds < sequential_seconds - latency  # most of the judge time was hidden
    assert torch.equal(overlapped.scores, sequential.scores)


class Boom(Reward):
    def score(self, parsed, samples):
        raise RuntimeError("scorer crashed")


class AsyncConstant(Reward):
    async def score(self, parsed, samples):
        return RewardOutput(torch.full((len(parsed),), 0.25))


def test_an_error_in_a_submitted_reward_is_raised_at_the_join_and_async_rewards_run():
    parsed, records = batch()
    rewards = RewardSet({"format": 1.0})
    rewards.rewards = {"format": rewards.rewards["format"], "boom": Boom()}
    rewards.weights = {"format": 1.0, "boom": 1.0}
    pending = rewards.submit(parsed, records)
    with pytest.raises(RuntimeError, match="scorer crashed"):
        pending.result()
    rewards.rewards = {"constant": AsyncConstant()}
    rewards.weights = {"constant": 2.0}
    assert rewards.submit(parsed, records).result().scores.tolist() == [0.5] * 4
    assert rewards(parsed, records).scores.tolist() == [0.5] * 4
    assert threading.active_count() < 20  # the worker threads end with their rewards
