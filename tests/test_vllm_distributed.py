"""``engine: vllm`` with 2 gloo processes on CPU, in the vLLM venv (tests/vllm_distributed_probe.py does the work).

DDP (Lightning's strategy, one vLLM engine per rank): after 3 GRPO steps both ranks hold the weights, and rank 0
logged the metrics, of one process that ran the same 3 global batches with the same per-rank seeds; each rank's
greedy vLLM rollout equals ``hf``. FSDP2: each rank's engine gets the sharded policy's gathered weights, and greedy
vLLM equals greedy ``hf`` on each rank's own prompts before and after an optimizer step.
"""
import json

import pytest

from tests.test_vllm_engine import run_check, vllm_python  # noqa: F401  (the venv fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]  # one worker, as in test_vllm_engine.py


def read_json(path):
    return json.loads(path.read_text())


def metrics(path):
    """Per step, every logged number but the engine's timings (which no two runs share)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(("rollout/", "step/"))} for row in rows]


def test_vllm_ddp_equals_one_process_on_the_joined_batch(vllm_python, tmp_path):  # noqa: F811
    import torch

    run_check(vllm_python, "ddp", tmp_path, probe="vllm_distributed_probe.py")
    run_check(vllm_python, "joined", tmp_path, probe="vllm_distributed_probe.py")
    joined = torch.load(tmp_path / "joined_rank0.pt")
    reports = [read_json(tmp_path / f"ddp_rank{rank}.json") for rank in (0, 1)]
    seeds = [[s for call in r["seeds"] for s in call] for r in reports]  # 3 steps x 2 prompts, then 3 greedy
    assert len(set(seeds[0])) == len(set(seeds[1])) == 3 * 2 + 3
    assert not set(seeds[0]) & set(seeds[1])  # ranks never share a seed
    for rank, report in enumerate(reports):
        assert report["steps"] == 3 and report["pushes"] == [0, 1, 2, 3], report  # one push per step, then greedy
        assert report["greedy_equal"] and report["distinct_texts"] == 3, report
        weights = torch.load(tmp_path / f"ddp_rank{rank}.pt")
        assert set(weights) == set(joined)
        for name, tensor in joined.items():
            torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)
    ddp_logged, joined_logged = metrics(tmp_path / "ddp_metrics.jsonl"), metrics(tmp_path / "joined_metrics.jsonl")
    assert [r["step"] for r in ddp_logged] == [1, 2, 3] and len(joined_logged) == 3
    for ours, one in zip(ddp_logged, joined_logged):
        assert set(ours) == set(one) and "train/kl" in ours
        for key, value in one.items():
            assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_vllm_fsdp_pushes_gathered_weights(vllm_python, tmp_path):  # noqa: F811
    run_check(vllm_python, "fsdp", tmp_path, probe="vllm_distributed_probe.py")
    reports = [read_json(tmp_path / f"fsdp_rank{rank}.json") for rank in (0, 1)]
    for report in reports:
        before, after = report["rounds"]
        assert before["equal"] and after["equal"], report  # vLLM followed the sharded policy, both times
        assert before["tokens"] != after["tokens"]  # and the step changed what it says
    assert reports[0]["rounds"][0]["tokens"] != reports[1]["rounds"][0]["tokens"]  # each rank its own prompts
