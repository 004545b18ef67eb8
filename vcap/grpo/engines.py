"""Rollout engines: one interface, three implementations, each returning the same ``Rollout``.

* ``HFEngine`` (``hf``): one ``generate(num_return_sequences=G)`` call; the reference the others are tested against.
* ``VcapEngine`` (``vcap``): each prompt prefilled once, its static KV cache expanded to G (``vcap.grpo.decode``).
* ``VLLMEngine`` (``vllm``, ``vcap.grpo.vllm_engine``): an in-process ``vllm.LLM`` sharing the GPU.

GRPOModule takes one as ``rollout``: a short name (``rollout: vllm``, default options) or, to set options,
``rollout: {class_path: VLLMEngine, init_args: {...}}`` (YAML keys are the constructor arguments below).
All engines honour temperature, top_p, the completion budget, the EOS ids and the suppression of vision
placeholder tokens; ``sampling`` passes extra options (HF ``generate`` names, e.g. ``min_new_tokens``,
``repetition_penalty``) and an option an engine cannot honour is refused when the engine is built.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Any

import torch

import vcap.grpo.vllm_engine  # noqa: F401  (registers 'vllm'; vllm itself is imported on the first rollout)
from vcap.training.distributed import sharded_units
from vcap.grpo.engine_base import ENGINES, RESERVED_SAMPLING, RolloutEngine  # noqa: F401  (importable from here too)
from vcap.grpo.rollout import Rollout, repeat_inputs, select, vision_token_ids
from vcap.grpo.vision import select_features

@ENGINES.register("hf")
class HFEngine(RolloutEngine):
    """``generate(num_return_sequences=G)``: every prompt prefilled G times; the slow reference.

    Args:
        sampling: extra ``generate`` options, e.g. {min_new_tokens: 64, repetition_penalty: 1.1}.
    """

    supported_sampling = None

    def __init__(self, sampling: dict[str, Any] | None = None):
        super().__init__(sampling)
        from transformers import GenerationConfig

        defaults = GenerationConfig().to_dict()
        unknown = sorted(k for k in self.sampling if k not in defaults)
        if unknown:
            raise ValueError(f"rollout engine 'hf': {unknown} are not generate options")
        reserved = sorted(set(self.sampling) & set(RESERVED_SAMPLING))
        if reserved:
            raise ValueError(f"rollout engine 'hf': set {reserved} through GRPOModule "
                             "(temperature, top_p, max_completion_length, num_generations), not sampling")

    def completion_ids(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id,
                       temperature, top_p, do_sample, video_features, **context) -> torch.Tensor:
        prompt_inputs = dict(inputs)
        if video_features is not None:  # generate expands (and mutates) the features object: hand it a fresh one
            prompt_inputs.pop("pixel_values_videos", None)
            prompt_inputs["mm_encoder_outputs"] = {
                "video": select_features(video_features, range(len(inputs["input_ids"])))}
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample \
            else dict(do_sample=False)
        out = model.generate(**prompt_inputs, max_new_tokens=max_new_tokens, num_return_sequences=num_generations,
                             eos_token_id=eos_token_ids, pad_token_id=pad_token_id, use_cache=True,
                             suppress_tokens=vision_token_ids(model) or None, **{**sampling, **self.sampling})
        return out[:, inputs["input_ids"].shape[1]:]


@ENGINES.register("vcap")
class VcapEngine(RolloutEngine):
    """Each prompt prefilled once (video features encoded once), its keys/values copied to G rows of a static
    cache, then a decode loop that stops when every completion has ended (``vcap.grpo.decode``).

    Args:
        sampling: extra options: ``min_new_tokens``, ``repetition_penalty`` (as HF ``generate``).
        cuda_graph: replay each decode step as a CUDA graph, captured once per shape bucket (null: on CUDA; never
            under FSDP, whose forward gathers weights). A failed capture says why in one warning and that bucket
            runs eagerly (``rollout/cuda_graph`` 0).
        compile: fuse the decode step with ``torch.compile`` (inductor; captured in the graph when ``cuda_graph``):
            ``vcap.grpo.decode.fused_decode_step``, the step written for the compiler (Qwen2-VL/2.5-VL layers;
            others compile the model's own forward).
        compile_mode: torch.compile mode when ``compile`` (null: inductor's default; 'reduce-overhead' is refused
            with cuda_graph, which captures graphs itself).
        compile_backend: torch.compile backend ('inductor'; 'eager' / 'aot_eager' trace only, for tests).
        length_bucket: with cuda_graph or compile, the static cache (prompt + budget) is padded up to a multiple of
            this many tokens, so prompts of other lengths reuse a graph.
        batch_buckets: with cuda_graph or compile, the prompt count is padded up to the smallest of these (copies
            of the last prompt, dropped afterwards); larger batches run as they are.
        stop_check_interval: steps between checks whether every row has ended, the loop's only host sync (null:
            8 on CUDA, 1 elsewhere); rows that ended only add padding meanwhile. Under FSDP every rank decodes the
            whole budget: each step gathers weights with the other ranks, which may still be decoding.
        merge_lora: decode a LoRA policy from merged copies of its adapted weights (null: yes, except for 4-bit,
            sharded or DoRA layers, which keep the adapters); the reference stays the untouched base.
    """

    supported_sampling = frozenset({"min_new_tokens", "repetition_penalty"})

    def __init__(self, sampling: dict[str, Any] | None = None, cuda_graph: bool | None = None, compile: bool = False,
                 compile_mode: str | None = None, compile_backend: Any = "inductor", length_bucket: int = 256,
                 batch_buckets: list[int] | None = None, stop_check_interval: int | None = None,
                 merge_lora: bool | None = None):
        super().__init__(sampling)
        if length_bucket < 1:
            raise ValueError("length_bucket must be >= 1")
        if stop_check_interval is not None and stop_check_interval < 1:
            raise ValueError("stop_check_interval must be >= 1 (or null: 8 on CUDA, 1 elsewhere)")
        if compile and compile_mode == "reduce-overhead" and cuda_graph is not False:
            raise ValueError("compile_mode 'reduce-overhead' makes CUDA graphs of its own; vcap captures the decode "
                             "step itself (cuda_graph): leave compile_mode null, or set cuda_graph: false")
        if batch_buckets is not None and (not batch_buckets or min(batch_buckets) < 1):
            raise ValueError("batch_buckets must be a list of prompt counts >= 1")
        self.cuda_graph = cuda_graph
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.length_bucket = length_bucket
        self.batch_buckets = sorted(batch_buckets or [1, 2, 4, 8, 16, 32, 64])
        self.stop_check_interval = stop_check_interval
        self.merge_lora = merge_lora
        self._runner = None
        self._weights = None

    def __getstate__(self):  # graphs, buffers and compiled functions do not copy; they are rebuilt on first use
        return {**self.__dict__, "_runner": None, "_weights": None}

    def graphs_on(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.cuda_graph is None else bool(self.cuda_graph) and device.type == "cuda"

    def runner(self, device: torch.device):
        from vcap.grpo.decode import decode_step, fused_decode_step
        from vcap.grpo.graphs import DecodeRunner

        if self._runner is None:
            step = decode_step
            if self.compile:  # the step written for fusion (the model's own forward where it is not fusable)
                options = {"mode": self.compile_mode} if self.compile_mode and self.compile_backend == "inductor" else {}
                step = torch.compile(fused_decode_step, backend=self.compile_backend, dynamic=False,
                                     fullgraph=True, **options)
            graphs = self.graphs_on(device)
            self._runner = DecodeRunner(cuda_graph=graphs, step=step, max_buckets=4 if graphs or self.compile else 1)
        return self._runner

    def completion_ids(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id,
                       temperature, top_p, do_sample, video_features, **context) -> torch.Tensor:
        from vcap.grpo.decode import Sampling
        from vcap.grpo.lora_merge import RolloutWeights

        sampling = Sampling(do_sample, temperature, top_p, self.sampling.get("min_new_tokens", 0),
                            self.sampling.get("repetition_penalty", 1.0), pad_token_id)
        device = inputs["input_ids"].device
        runner = self.runner(device)
        batch, prompt_len = inputs["input_ids"].shape
        cache_len = None
        if runner.cuda_graph or self.compile:  # shapes from a few buckets: a graph / compilation each, reused
            size = next((b for b in self.batch_buckets if b >= batch), batch)
            inputs, video_features = pad_prompts(inputs, video_features, size)
            cache_len = -(-(prompt_len + max_new_tokens) // self.length_bucket) * self.length_bucket
        interval = self.stop_check_interval or (8 if device.type == "cuda" else 1)
        sharded = bool(sharded_units(model))
        if sharded:  # each decode step all-gathers weights with the other ranks, so every rank takes the whole
            interval = max_new_tokens  # budget (a rank that stopped first would leave the others waiting), and
            # the step runs eagerly: a graph would replay the gathers into memory FSDP frees and reuses
        if self._weights is None:
            self._weights = RolloutWeights()
        merge = self.merge_lora is not False
        with self._weights.applied(model, context.get("weights_version")) if merge else nullcontext():
            ids = runner.generate(model, inputs, num_generations, max_new_tokens, eos_token_ids, sampling,
                                  video_features=video_features, suppress_tokens=vision_token_ids(model),
                                  cache_len=cache_len, stop_check_interval=interval, allow_graph=not sharded)
        self.last_stats = dict(runner.last_stats)
        return ids[:batch * num_generations]


def pad_prompts(inputs: dict[str, torch.Tensor], video_features, size: int):
    """The batch padded to ``size`` prompts with copies of its last prompt (video and features included)."""
    count = inputs["input_ids"].shape[0]
    extra = size - count
    if extra <= 0:
        return inputs, video_features
    copies = repeat_inputs(select(inputs, count - 1, count), extra)
    out = {k: torch.cat([inputs[k], copies[k]]) for k in copies}
    if video_features is not None:
        features = tuple(video_features.pooler_output)
        video_features = type(video_features)(pooler_output=features + features[-1:] * extra)
    return out, video_features


def build_engine(spec: RolloutEngine | str | dict, sampling: dict[str, Any] | None = None) -> RolloutEngine:
    """An engine from an instance, a short name ('hf', 'vcap', 'vllm' or 'package.module:Class') or a
    ``{class_path, init_args}`` dict; ``sampling`` is used only when the engine is built here."""
    if isinstance(spec, RolloutEngine):
        lazy_type = getattr(spec, "_lazy_class_type", None)  # a jsonargparse lazy_instance default: a fresh one
        return lazy_type(**spec._lazy_kwargs) if lazy_type is not None else spec
    if isinstance(spec, dict):
        options = dict(spec.get("init_args") or {})
        name = spec.get("class_path", "")
        by_class = {cls.__name__: key for key, cls in ENGINES.items()}
        name = by_class.get(name.rsplit(".", 1)[-1], name)  # a registered class by its name or import path
        if "." in name and ":" not in name:
            module, _, attr = name.rpartition(".")
            name = f"{module}:{attr}"
        return ENGINES.build(name, **options)
    if not isinstance(spec, str):
        raise ValueError(f"rollout must be an engine name {sorted(ENGINES)} or a class_path/init_args mapping, "
                         f"not {type(spec).__name__}")
    return ENGINES.build(spec, **({"sampling": sampling} if sampling else {}))


def engine_config(engine: RolloutEngine) -> dict[str, Any]:
    """``{class_path, init_args}`` of an engine: what checkpoints store, and what ``build_engine`` rebuilds."""
    cls = type(engine)
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {n: getattr(engine, n) for n in names}}


def sample_completions(model, inputs: dict[str, torch.Tensor], num_generations: int, max_new_tokens: int,
                       eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       do_sample: bool = True, video_features=None, engine="hf", **sampling) -> Rollout:
    """All prompts x G completions in one batch; ``video_features`` replace the pixels when given.

    ``engine``: a ``vcap.grpo.engines`` engine or its name ('hf': one ``generate(num_return_sequences=G)`` call;
    'vcap': each prompt prefilled once, G copies decoded from its expanded cache); ``sampling`` are extra options
    for an engine built from a name (e.g. ``min_new_tokens``).
    """
    return build_engine(engine, sampling).generate(model, inputs, num_generations, max_new_tokens, eos_token_ids,
                                                   pad_token_id, temperature, top_p, do_sample, video_features)
