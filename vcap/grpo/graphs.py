"""The decode loop with buffers that persist across rollouts, and (on CUDA) its step replayed as a CUDA graph.

A CUDA graph replays the kernels of one captured call on the addresses that call used, with no Python and no
launch cost per kernel. ``decode_step`` is written for that (``vcap.grpo.decode``); here each shape bucket (rows,
cache length, sampling options) gets one ``DecodeState`` and one static cache that live as long as the runner, so
the addresses never change, and one graph captured on them. All graphs share one memory pool (only one replays
at a time). The host checks whether every row has ended only every ``stop_check_interval`` steps: that read is
the loop's only host sync.

Capture fails loudly, never silently: one warning names the reason, the bucket runs eagerly, and the rollout
stats report ``rollout/cuda_graph: 0``. A graph is captured again if the model's parameters moved (e.g. a
sharded model gathered into new memory), so a replay never reads stale weights.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vcap.grpo.decode import (DecodeState, Sampling, decode_step, draw_noise, load_prompts, output_length, prefill,
                              static_cache_like)
from vcap.grpo.decode_attention import decode_attention

log = logging.getLogger(__name__)


def parameter_addresses(model) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.parameters())


@contextmanager
def preserved_rng(device: torch.device, generator: torch.Generator | None):
    """Warm-up and capture run the step; the random stream a rollout then sees must not depend on that."""
    gen = generator if generator is not None else (torch.cuda.default_generators[device.index or 0]
                                                   if device.type == "cuda" else torch.default_generator)
    saved = gen.get_state()
    try:
        yield
    finally:
        gen.set_state(saved)


@dataclass
class Bucket:
    """The persistent buffers of one shape, and its graph when captured."""

    state: DecodeState
    cache: object
    graph: torch.cuda.CUDAGraph | None = None
    addresses: tuple[int, ...] = ()
    failure: str | None = None  # why capture failed (the bucket then runs eagerly)


class DecodeRunner:
    """Runs rollouts of the prefill-once decode loop; one per engine.

    Args:
        cuda_graph: capture the decode step as a CUDA graph (CUDA only).
        step: the decode step to run or capture (``decode_step``, or a ``torch.compile``'d copy of it).
        max_buckets: shape buckets kept alive (least recently used dropped first).
    """

    def __init__(self, cuda_graph: bool = False, step=decode_step, max_buckets: int = 4):
        self.cuda_graph = cuda_graph
        self.step = step
        self.max_buckets = max_buckets
        self.buckets: OrderedDict[tuple, Bucket] = OrderedDict()
        self.pool = None
        self.last_stats: dict[str, float] = {}

    def __getstate__(self):  # buffers and graphs never copy; a copy starts empty
        return {**self.__dict__, "buckets": OrderedDict(), "pool": None, "last_stats": {}}

    @torch.no_grad()
    def generate(self, model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                 eos_token_ids: list[int], sampling: Sampling, video_features=None,
                 suppress_tokens: list[int] | None = None, generator: torch.Generator | None = None,
                 cache_len: int | None = None, stop_check_interval: int = 1, allow_graph: bool = True) -> torch.Tensor:
        """(B x G, T) completion ids, group by group, pad after each EOS; T <= max_new_tokens. ``allow_graph``
        False runs this rollout eagerly even on a runner that captures graphs."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if stop_check_interval < 1:
            raise ValueError(f"stop_check_interval must be >= 1, got {stop_check_interval}")
        batch, prompt_len = inputs["input_ids"].shape
        rows = batch * num_generations
        cache_len = max(cache_len or 0, prompt_len + max_new_tokens)
        logits, prompt_cache, positions = prefill(model, inputs, video_features)
        first = prompt_cache.layers[0]  # autocast on or off changes the cache dtypes: another bucket
        key = (id(model), rows, cache_len, sampling, tuple(eos_token_ids), tuple(suppress_tokens or ()),
               id(generator) if generator is not None else None, first.keys.dtype, first.values.dtype)
        with decode_attention(model):  # decode steps only: the prefill above used the model's own attention
            bucket = self.bucket(key, model, prompt_cache, rows, cache_len, logits.shape[-1], sampling,
                                 list(suppress_tokens or []), list(eos_token_ids), generator, allow_graph)
            state, cache = bucket.state, bucket.cache
            load_prompts(state, cache, prompt_cache, logits, positions, inputs, num_generations, sampling, generator)
            del prompt_cache, logits

            def eager():
                draw_noise(state, generator)
                self.step(model, state, cache, sampling)

            graphed = bucket.graph is not None and allow_graph
            run = bucket.graph.replay if graphed else eager
            for step in range(1, max_new_tokens):
                if step % stop_check_interval == 0 and bool(state.finished.all()):
                    break
                run()
        length = output_length(state)
        self.last_stats = {"cuda_graph": float(graphed), "decode_steps": float(int(state.step))}
        return state.completions[:, :length].clone()

    def bucket(self, key, model, prompt_cache, rows, cache_len, vocab, sampling, never, eos, generator,
               allow_graph: bool = True) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            device = prompt_cache.layers[0].keys.device
            bucket = Bucket(DecodeState.allocate(rows, cache_len, vocab, sampling, never, eos, device),
                            static_cache_like(model, prompt_cache, rows, cache_len))
            self.buckets[key] = bucket
            while len(self.buckets) > self.max_buckets:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(key)
        wants_graph = (self.cuda_graph and allow_graph and bucket.state.token.device.type == "cuda"
                       and bucket.failure is None)
        if wants_graph and (bucket.graph is None or bucket.addresses != parameter_addresses(model)):
            self.capture(bucket, model, sampling, generator)
        return bucket

    def capture(self, bucket: Bucket, model, sampling: Sampling, generator: torch.Generator | None) -> None:
        state, cache = bucket.state, bucket.cache
        if bucket.graph is not None:
            log.info("model parameters moved since the decode graph was captured: capturing it again")
        bucket.graph = None
        state.attention[:, 0] = 1  # warm-up rows attend to one slot: finite values, no NaN written to the cache

        def step():
            draw_noise(state, generator)
            self.step(model, state, cache, sampling)

        try:
            with preserved_rng(state.token.device, generator):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS workspaces, compilation
                    for _ in range(2):
                        step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                if generator is not None:
                    graph.register_generator_state(generator)
                if self.pool is None:
                    self.pool = torch.cuda.graph_pool_handle()
                # thread_local: a DataLoader's pin-memory thread may call CUDA during the capture
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    step()
        except Exception as err:  # noqa: BLE001 - any capture failure falls back, and says why
            bucket.failure = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log.warning("CUDA graph capture of the decode step failed; this shape runs eagerly "
                        "(rollout/cuda_graph 0): %s", bucket.failure)
            torch.cuda.synchronize()
            return
        bucket.graph = graph
        bucket.addresses = parameter_addresses(model)


@torch.no_grad()
def prefill_once_generate(model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                          eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                          do_sample: bool = True, video_features=None, suppress_tokens: list[int] | None = None,
                          min_new_tokens: int = 0, generator: torch.Generator | None = None,
                          repetition_penalty: float = 1.0, cache_len: int | None = None,
                          stop_check_interval: int = 1) -> torch.Tensor:
    """(B x G, T) completion ids, group by group, pad after each EOS; T <= max_new_tokens. The eager loop, with
    buffers of its own (``DecodeRunner`` keeps them across rollouts and can replay a graph)."""
    sampling = Sampling(do_sample, temperature, top_p, min_new_tokens, repetition_penalty, pad_token_id)
    runner = DecodeRunner(cuda_graph=False)
    return runner.generate(model, inputs, num_generations, max_new_tokens, eos_token_ids, sampling,
                           video_features=video_features, suppress_tokens=suppress_tokens, generator=generator,
                           cache_len=cache_len, stop_check_interval=stop_check_interval)
