"""Where a graph decode step's time goes, from ``torch.profiler`` (used by ``rollout.py --profile``, CUDA only), for
each graph engine of the run (``vcap-graph``: the eager step captured; ``vcap-compiled``: the inductor-compiled
fused step captured):

* a window of ``steps`` graph replays from a fresh rollout state: the GPU busy fraction (kernel time over the
  window's wall time), the kernels per step (``benchmarks/decode_kernels.py`` counts them on CPU) and the five
  kernels with the most time;
* one whole ``vcap-graph`` rollout: host syncs per decode step, counted as the device-to-host reads the loop
  dispatches (``aten._local_scalar_dense``: ``bool()`` / ``int()`` of a device tensor); graph replays dispatch
  nothing. (A profiler trace of the whole rollout would hold ~400k kernel events and take minutes to read.)
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts device-to-host scalar reads (each one a host sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_local_scalar_dense" and any(
                isinstance(a, torch.Tensor) and a.is_cuda for a in args):
            self.count += 1
        return func(*args, **(kwargs or {}))


def kernel_events(prof):
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


GRAPH_ENGINES = ("vcap-compiled", "vcap-graph")


def profile_decode(model, inputs, engines, tokenizer, num_generations: int, max_new_tokens: int,
                   steps: int = 8) -> dict:
    """{engine name: its profile} for each graph engine in ``engines``."""
    names = [name for name in GRAPH_ENGINES if name in engines]
    if not names or not torch.cuda.is_available():
        return {"skipped": "needs CUDA and a graph engine (vcap-graph, vcap-compiled)"}
    return {name: profile_engine(model, inputs, engines[name], tokenizer, num_generations, max_new_tokens, steps)
            for name in names}


def profile_engine(model, inputs, engine, tokenizer, num_generations: int, max_new_tokens: int,
                   steps: int = 8) -> dict:
    from vcap.grpo.decode import load_prompts, prefill
    from vcap.grpo.vision import encode_videos

    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    features = encode_videos(model, inputs)
    reads = HostReads()
    with reads:
        rollout = engine.generate(model, inputs, num_generations, max_new_tokens, eos, pad, video_features=features)
    decode_steps = rollout.completion_ids.shape[1] - 1

    runner = engine._runner
    bucket = next(reversed(runner.buckets.values()))
    if bucket.graph is None:
        return {"skipped": f"no graph was captured: {bucket.failure}"}
    logits, prompt_cache, positions = prefill(model, inputs, features)
    sampling = next(reversed(runner.buckets))[3]
    load_prompts(bucket.state, bucket.cache, prompt_cache, logits, positions, inputs, num_generations, sampling)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as window:
        start = time.perf_counter()
        for _ in range(steps):
            bucket.graph.replay()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    kernels = kernel_events(window)
    busy_us = sum(e.device_time for e in kernels)
    by_name: dict[str, float] = defaultdict(float)
    for e in kernels:
        by_name[e.name] += e.device_time
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    return {"graph_steps": steps, "wall_ms_per_step": round(wall_us / steps / 1e3, 3),
            "gpu_busy_fraction": round(busy_us / wall_us, 3), "kernels_per_step": round(len(kernels) / steps, 1),
            "top_kernels": [{"name": name[:120], "ms_per_step": round(us / steps / 1e3, 4),
                             "share": round(us / max(busy_us, 1e-9), 3)} for name, us in top],
            "rollout_decode_steps": decode_steps, "host_syncs_per_decode_step": round(reads.count / max(decode_steps, 1), 3)}
