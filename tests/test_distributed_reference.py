"""Data parallelism against one process: 2 gloo ranks on different halves of a batch take the step one process
takes on the whole batch (the gradient that reaches clipping, the clipped gradient and the weights).

The ranks hold different prompts, completions of different lengths (so different token counts) and gradients
whose norm is several times ``max_grad_norm``, so averaging, normalising and clipping mistakes all show.
The gradient averaging itself is also checked in-process against a stand-in second rank, which mutation
testing can see (it does not follow subprocesses).
"""
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reference import assert_close, global_norm
from tests.step_probe import rollout_stats, run_step
from vcap.training import distributed

ROOT = Path(__file__).resolve().parent.parent


class TwoRanks:
    """Stands in for torch.distributed with a second rank whose every gradient entry is 2 g + 1 (g: ours)."""

    ReduceOp = torch.distributed.ReduceOp

    def __init__(self):
        self.calls = []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self):
        return 2

    def all_reduce(self, tensor, op):
        self.calls.append(tensor.numel())
        other = 2 * tensor + 1
        if op == self.ReduceOp.SUM:
            tensor.add_(other)
        elif op == self.ReduceOp.AVG:
            tensor.add_(other).div_(2)
        else:
            raise AssertionError(f"unexpected reduce op {op}")


@pytest.mark.parametrize("bucket_elements", [7, 16, 1000])
def test_all_reduce_averages_every_gradient_in_buckets(monkeypatch, bucket_elements):
    fake = TwoRanks()
    monkeypatch.setattr(distributed, "dist", fake)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape, dtype in
              [((3, 4), torch.float32), ((5,), torch.float64), ((2, 2), torch.float32), ((9,), torch.float32),
               ((4,), torch.float32)]]
    for p in params[:4]:  # the last one got no gradient on this rank (e.g. it skipped its batch)
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    ours = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    distributed.all_reduce_gradients(params, bucket_elements=bucket_elements)
    for p, g in zip(params, ours):
        assert p.grad.dtype == p.dtype
        assert torch.allclose(p.grad, (g + 2 * g + 1) / 2, atol=1e-6)  # the mean of the two ranks
    total = sum(p.numel() for p in params)
    assert sum(fake.calls) == total  # every element reduced exactly once
    if bucket_elements == 1000:
        assert fake.calls == [12 + 4 + 9 + 4, 5]  # one bucket per dtype
    elif bucket_elements == 16:  # 12 + 4 fill a bucket exactly; 9 + 4 the next
        assert fake.calls == [16, 13, 5]
    else:  # at most 7 elements a bucket, a larger tensor alone; fp32 first (the first parameter's), then fp64
        assert fake.calls == [12, 4, 9, 4, 5]


def test_all_reduce_is_a_no_op_without_a_process_group():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    distributed.all_reduce_gradients([p])
    assert p.grad.tolist() == [1.0, 1.0, 1.0]
    assert not distributed.is_distributed()


def test_ddp_reducer_is_switched_off_only_for_ddp_modules():
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.require_backward_grad_sync = True
    wrapped = FakeDDP()
    assert distributed.take_over_ddp_gradient_sync(wrapped) is True
    assert wrapped.require_backward_grad_sync is False
    assert distributed.take_over_ddp_gradient_sync(torch.nn.Linear(2, 2)) is False


def test_share_of_global_counts_is_the_sum_over_ranks_over_the_world_size(monkeypatch):
    counts = torch.tensor([3.0, 10.0], dtype=torch.float64)
    assert torch.equal(distributed.share_of_global_counts(counts), counts)  # one process: its own counts
    monkeypatch.setattr(distributed, "dist", TwoRanks())
    shared = distributed.share_of_global_counts(counts)
    assert shared.tolist() == [(3 + 7) / 2, (10 + 21) / 2]  # the other rank holds 2 c + 1: [7, 21]
    assert counts.tolist() == [3.0, 10.0]  # the caller's tensor is left alone


class FakeFSDPModule:
    """Stands in for torch's FSDPModule: records the gathering around generation."""


class Sharded(torch.nn.Module, FakeFSDPModule):
    def __init__(self):
        super().__init__()
        self.calls = []

    def _get_fsdp_state(self):
        calls = self.calls

        class State:
            def _lazy_init(self):
                calls.append("init")
        return State()

    def unshard(self):
        self.calls.append("unshard")

    def reshard(self):
        self.calls.append("reshard")


def test_generation_under_fsdp2_gathers_the_root_parameters_and_releases_them(monkeypatch):
    import torch.distributed.fsdp as fsdp

    monkeypatch.setattr(fsdp, "FSDPModule", FakeFSDPModule)
    model = Sharded()
    with distributed.full_parameters_for_generation(model):
        model.calls.append("generate")
    assert model.calls == ["init", "unshard", "generate", "reshard"]
    with pytest.raises(RuntimeError):
        with distributed.full_parameters_for_generation(model):
            raise RuntimeError("generation failed")
    assert model.calls[-1] == "reshard"  # released even when generation raises
    plain = torch.nn.Linear(2, 2)
    with distributed.full_parameters_for_generation(plain):
        pass  # not sharded: nothing to gather


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp_path: Path, runs: list[dict]) -> list[list[dict]]:
    """Each run's records on rank 0 and rank 1 (one torchrun launch for all runs)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"runs": runs}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "tests.step_probe", str(config), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"2-rank step failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [[torch.load(tmp_path / f"run{k}-rank{r}.pt", weights_only=False) for r in (0, 1)] for k in range(len(runs))]


RUNS = [
    # dapo normalises by tokens: the halves hold 21 and 23 kept tokens; mu = 2 reuses the old log-probs; KL on
    {"options": dict(loss_type="dapo", beta=0.1, temperature=0.7, num_iterations=2, micro_batch_size=2,
                     max_grad_norm=0.2, epsilon_high=0.28, learning_rate=1.0),
     "rank_prompts": [[0, 1], [2, 3]]},
    # grpo normalises by sequences: 9 on rank 0, 3 on rank 1 (as after skipped videos)
    {"options": dict(loss_type="grpo", beta=0.0, temperature=1.2, micro_batch_size=3, max_grad_norm=0.1,
                     learning_rate=1.0),
     "rank_prompts": [[0, 1, 2], [3]]},
]


@pytest.mark.slow
def test_two_ranks_take_the_single_process_step(tmp_path):
    distributed_runs = run_two_ranks(tmp_path / "ddp", RUNS)
    for k, (run, ranks) in enumerate(zip(RUNS, distributed_runs)):
        options = run["options"]
        torch.manual_seed(0)
        single = run_step(options, sorted(sum(run["rank_prompts"], [])), tmp_path / f"single{k}")
        first = [r["local"][0] for r in ranks]
        assert any(not torch.allclose(first[0][n], first[1][n]) for n in first[0])  # the ranks saw different data
        assert all(global_norm(g) > 3 * options["max_grad_norm"] for g in first)  # each rank's own norm: clip binds
        assert len(single["applied"]) == options.get("num_iterations", 1)
        for step in range(len(single["applied"])):
            for rank, got in enumerate(ranks):
                for key in ("clip_input", "applied"):
                    for name, want in single[key][step].items():
                        assert_close(got[key][step][name], want, f"run {k} rank {rank} step {step} {key} {name}")
        for rank, got in enumerate(ranks):
            for name, before in single["before"].items():
                assert torch.equal(got["before"][name], before)
                # a weight change read back from weights near 1 (norms) is exact only to their fp32 spacing
                assert_close(got["after"][name] - before, single["after"][name] - before,
                             f"run {k} rank {rank} weights {name}",
                             atol=float(torch.finfo(before.dtype).eps * before.abs().max()))
        # the logged numbers are the joined batch's, though the ranks hold different token and sequence counts:
        # loss, KL and clip fraction weighted again by each rank's tokens (21 and 23 in the first run) differ
        logged = {key: v for key, v in single["metrics"].items() if key.startswith("train/")}
        assert {"train/loss", "train/kl", "train/clip_fraction", "train/reward"} <= set(logged) or options["beta"] == 0
        for rank, got in enumerate(ranks):
            for key, want in logged.items():
                assert got["metrics"][key] == pytest.approx(want, rel=1e-5, abs=1e-7), f"run {k} rank {rank} {key}"
        # the engines' rollout stats merge over ranks: the slowest rank's seconds and steps, the summed throughput
        stats = [rollout_stats(prompts) for prompts in run["rank_prompts"]]
        merged = {"rollout/seconds": max(s["seconds"] for s in stats),
                  "rollout/tokens_per_s": sum(s["tokens_per_s"] for s in stats),
                  "rollout/decode_steps": max(s["decode_steps"] for s in stats),
                  "rollout/cuda_graph": statistics.fmean(s["cuda_graph"] for s in stats)}
        for rank, got in enumerate(ranks):
            assert {key: got["metrics"][key] for key in merged} == pytest.approx(merged), f"run {k} rank {rank}"
