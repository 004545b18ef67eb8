"""The rollout engine interface and its registry (``vcap.grpo.engines`` holds the implementations; the vLLM
engine, ``vcap.grpo.vllm_engine``, registers itself here too)."""
from __future__ import annotations

import time
from typing import Any

import torch

from vcap.training.distributed import full_parameters_for_generation
from vcap.grpo.rollout import Rollout, completion_mask
from vcap.registry import Registry

ENGINES = Registry("rollout engine")
# what the rollout itself sets; ``sampling`` may not (top_k may: it overrides the HF engine's top_k=0)
RESERVED_SAMPLING = ("temperature", "top_p", "do_sample", "max_new_tokens", "num_return_sequences", "eos_token_id",
                     "pad_token_id", "suppress_tokens", "use_cache")


class RolloutEngine:
    """Samples G completions per prompt. Subclasses set ``supported_sampling`` (None: checked by ``generate``)."""

    name = "base"
    supported_sampling: frozenset[str] | None = frozenset()

    def __init__(self, sampling: dict[str, Any] | None = None):
        self.sampling = dict(sampling or {})
        self.last_stats: dict[str, float] = {}  # of the latest rollout, logged as rollout/<name>
        if self.supported_sampling is not None:
            unsupported = sorted(set(self.sampling) - self.supported_sampling)
            if unsupported:
                raise ValueError(f"rollout engine {self.name!r} cannot honour sampling options {unsupported}; "
                                 f"it supports {sorted(self.supported_sampling)} (engine 'hf' takes any "
                                 "generate option)")

    @torch.no_grad()
    def generate(self, model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                 eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                 do_sample: bool = True, video_features=None, **context) -> Rollout:
        """All prompts x G completions, group by group; ``video_features`` replace the pixels when given.
        ``context`` carries what only some engines use (``processor``, ``weights_version``)."""
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with full_parameters_for_generation(model):
                ids = self.completion_ids(model, inputs, num_generations, max_new_tokens, eos_token_ids,
                                          pad_token_id, temperature, top_p, do_sample, video_features, **context)
        finally:
            model.train(was_training)
        mask = completion_mask(ids, eos_token_ids)
        tokens, seconds = int(mask.sum()), time.perf_counter() - start  # the sum waits for the device
        self.last_stats = {**self.last_stats, "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}
        return Rollout(inputs, num_generations, ids.masked_fill(mask == 0, pad_token_id), mask, video_features)

    def completion_ids(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id,
                       temperature, top_p, do_sample, video_features, **context) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sampling={self.sampling})"
