"""``engine: vllm``: an in-process (colocated) ``vllm.LLM`` that shares the device with training.

* Created on the first rollout from the policy's config and processor, with dummy weights, then the policy's
  weights are pushed (so embedded models, LoRA and resumed checkpoints all start from what trains).
* Prompts go in as token ids (the processor already expanded the video placeholders); each video goes in as its
  precomputed merged features (``enable_mm_embeds``), so the ViT still runs once per prompt, in vcap.
* ``SamplingParams(n=G)``: vLLM prefills each prompt once and samples its G completions.
* Before a rollout, when the policy's weights changed (``weights_version``, the optimizer step), they are pushed
  with ``collective_rpc("reload_weights")`` (LoRA merged in), then the prefix and encoder caches are reset: a
  stale encoder cache fails the next rollout on a seen video ("Encoder cache miss").
* Vision placeholder tokens are excluded through ``allowed_token_ids`` (vLLM masks the rest to -inf).
* Under DDP/FSDP every rank runs its own engine (tensor parallel 1) on its own device, inside the training job's
  process group (vLLM's ``external_launcher``), and pushes its own weights: under FSDP gathered one FSDP unit at a
  time (``vcap.training.distributed.full_named_parameters``), under DDP they are already identical.
* Each prompt is sampled with its own seed, from (engine seed, optimizer step, rank, position in the rank's batch):
  ranks never share a seed, a run is reproducible, and a prompt's completions do not depend on which other
  prompts share the batch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any

import torch

import torch.distributed as dist

from vcap.training.distributed import clean_name, full_named_parameters, is_distributed
from vcap.errors import UsageError
from vcap.grpo.engine_base import ENGINES, RolloutEngine
from vcap.grpo.rollout import vision_token_ids
from vcap.grpo.vision import core_model

log = logging.getLogger(__name__)
INSTALL_HINT = ("engine 'vllm' needs vLLM: pip install vllm (CUDA), or build the CPU venv with "
                "bash scripts/build_vllm_venv.sh")
# HF generate option -> vLLM SamplingParams field
SAMPLING_NAMES = {"min_new_tokens": "min_tokens", "repetition_penalty": "repetition_penalty", "top_k": "top_k",
                  "min_p": "min_p", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                  "seed": "seed"}


class VLLMMissingError(UsageError, ImportError):
    """engine 'vllm' chosen where vLLM is not installed (the CLI prints it as one line)."""


def import_vllm():
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # a calm log (VLLM_LOGGING_LEVEL=INFO shows it all)
    try:
        import vllm
    except ImportError as err:
        raise VLLMMissingError(f"{INSTALL_HINT} ({err})") from None
    return vllm


def merged_weights(model):
    """(HF checkpoint name, tensor) for every weight of the policy, LoRA adapters merged into their base weights
    (without touching the model) and 4-bit weights dequantized: the names vLLM's loader expects."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    output = base.get_output_embeddings().weight
    tied = next((n for n, p in base.named_parameters() if p is output and clean_name(n) != "lm_head.weight"), None)
    # under FSDP each unit is gathered while its weights are read: the LoRA factors sit in their layer's unit
    for name, param in full_named_parameters(base):
        if "lora_" in name:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = modules[owner_name]
        if owner_name.endswith(".base_layer"):  # the layer a LoRA wraps: weight + B @ A * scale
            layer_name = owner_name[: -len(".base_layer")]
            layer = modules[layer_name]
            tensor = dequantize_module_weight(owner) if leaf == "weight" else param
            if leaf == "weight" and isinstance(layer, LoraLayer) and not layer.merged:
                tensor = tensor.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor += layer.get_delta_weight(adapter).to(tensor.dtype)
            yield clean_name(f"{layer_name}.{leaf}"), tensor.detach()
        elif type(param).__name__ == "Params4bit":
            yield clean_name(name), dequantize_module_weight(owner).detach()
        else:
            yield clean_name(name), param.detach()
        if name == tied:  # tied to the input embeddings: vLLM gets its own copy (see start)
            yield "lm_head.weight", param.detach()


@ENGINES.register("vllm")
class VLLMEngine(RolloutEngine):
    """A colocated ``vllm.LLM`` (created on the first rollout; needs ``pip install vllm``).

    Args:
        sampling: extra options (HF names): min_new_tokens, repetition_penalty, top_k, min_p, presence_penalty,
            frequency_penalty, seed.
        gpu_memory_utilization: share of the GPU vLLM may take for weights and KV cache (the rest trains); on
            CPU, vLLM reads it as the share of the machine's memory.
        enable_sleep_mode: offload vLLM's weights and drop its KV cache between rollouts, so training has the
            memory (CUDA only: on CPU it is skipped with a warning).
        max_model_len: longest prompt + completion vLLM plans for (null: the model's maximum).
        dtype: vLLM's weight dtype, e.g. bfloat16 (null: the policy's).
        enforce_eager: no CUDA graphs (faster start, slower decoding).
        seed: the sampling seed; each prompt's seed is drawn from it, the optimizer step, the rank and the
            prompt's position (``request_seeds``).
        llm_kwargs: further ``vllm.LLM`` arguments, e.g. {kv_cache_memory_bytes: 4000000000}.
    """

    supported_sampling = frozenset(SAMPLING_NAMES)

    def __init__(self, sampling: dict[str, Any] | None = None, gpu_memory_utilization: float = 0.3,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None, dtype: str | None = None,
                 enforce_eager: bool = False, seed: int = 0, llm_kwargs: dict[str, Any] | None = None):
        super().__init__(sampling)
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enable_sleep_mode = enable_sleep_mode
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.llm_kwargs = dict(llm_kwargs or {})
        self.llm = None
        self.pushed_version: object = None
        self._model_dir: tempfile.TemporaryDirectory | None = None
        self._allowed_key: tuple | None = None  # (vocabulary size, banned ids) of the cached allowed_token_ids
        self._allowed: list[int] | None = None

    def __getstate__(self):  # hparams and deep copies carry the options, never the running engine
        return {**self.__dict__, "llm": None, "pushed_version": None, "_model_dir": None, "_allowed_key": None,
                "_allowed": None}

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, model, processor) -> None:
        """Create the LLM from the policy's config and processor (dummy weights), then push the weights."""
        if processor is None:
            raise ValueError("engine 'vllm' needs the processor (GRPOModule passes it)")
        vllm = import_vllm()
        if self.enable_sleep_mode and not torch.cuda.is_available():
            log.warning("engine 'vllm': enable_sleep_mode is skipped on CPU (vLLM sleeps through CUDA's memory "
                        "allocator; the CPU backend has none); rollouts run without it")
            self.enable_sleep_mode = False
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        dtype = self.dtype or str(core_model(model).language_model.embed_tokens.weight.dtype).removeprefix("torch.")
        self._model_dir = tempfile.TemporaryDirectory(prefix="vcap-vllm-")
        config = base.config.to_dict()
        # untied: vLLM's in-place reload restores a layer that loads nothing (a tied LM head) to its old
        # tensors, which would put the dummy embeddings back; the pushed weights carry lm_head explicitly
        config.update(architectures=[unsharded_class(base).__name__], dtype=dtype, tie_word_embeddings=False)
        config.get("text_config", {})["tie_word_embeddings"] = False
        config.pop("quantization_config", None)  # a QLoRA policy's weights arrive dequantized: vLLM serves them plain
        type(base.config).from_dict(config).save_pretrained(self._model_dir.name)
        processor.save_pretrained(self._model_dir.name)
        # no raw videos or images: with embeddings enabled, vLLM serves videos as features only (no ViT runs,
        # none is profiled)
        options = dict(model=self._model_dir.name, load_format="dummy", dtype=dtype, enable_mm_embeds=True,
                       limit_mm_per_prompt={"video": 0, "image": 0}, generation_config="vllm", seed=self.seed,
                       enforce_eager=self.enforce_eager, max_model_len=self.max_model_len,
                       enable_sleep_mode=self.enable_sleep_mode, gpu_memory_utilization=self.gpu_memory_utilization)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine lives in this process
        if is_distributed():
            options.update(join_training_ranks(model))
        log.info("starting vLLM (%s, %s) for rollouts", unsharded_class(base).__name__, dtype)
        self.llm = vllm.LLM(**{**options, **self.llm_kwargs})
        self.pushed_version = None

    def push_weights(self, model, version: object = None) -> None:
        """Load the policy's current weights (LoRA merged) into vLLM and forget everything cached from the old."""
        # the ViT never runs in vLLM (videos arrive as vcap's features): its weights stay out
        weights = ((name, t) for name, t in merged_weights(model) if "visual." not in name)
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights, is_checkpoint_format=True))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.pushed_version = version

    # -- sampling -----------------------------------------------------------------------------------
    def request_seeds(self, count: int, step: int, rank: int) -> list[int]:
        """One seed per prompt of this rank's batch. vLLM gives a prompt's G completions seed, seed + 1, ...
        seed + G - 1, so seeds are 56-bit hashes, far apart."""
        keys = (f"{self.seed}/{step}/{rank}/{i}".encode() for i in range(count))
        return [int.from_bytes(hashlib.blake2b(k, digest_size=7).digest(), "big") for k in keys]

    def allowed_token_ids(self, model) -> list[int] | None:
        """Every token id but the vision placeholders (None when there are none); the list spans the whole
        vocabulary (152k ids for Qwen), so it is built once per model, not once per rollout."""
        suppressed = tuple(vision_token_ids(model))
        vocab = core_model(model).language_model.embed_tokens.num_embeddings
        if self._allowed_key != (vocab, suppressed):
            banned = set(suppressed)
            self._allowed_key = (vocab, suppressed)
            self._allowed = [t for t in range(vocab) if t not in banned] if banned else None
        return self._allowed

    def completion_ids(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id,
                       temperature, top_p, do_sample, video_features, processor=None, weights_version=None,
                       **context) -> torch.Tensor:
        vllm = import_vllm()
        if self.llm is None:
            self.start(model, processor)
        elif self.enable_sleep_mode:
            self.llm.wake_up()
        if self.pushed_version is None or weights_version is None or weights_version != self.pushed_version:
            self.push_weights(model, weights_version)
        options = dict(n=num_generations, max_tokens=max_new_tokens, stop_token_ids=list(eos_token_ids),
                       temperature=temperature if do_sample else 0.0, top_p=top_p if do_sample else 1.0,
                       allowed_token_ids=self.allowed_token_ids(model), detokenize=False, skip_special_tokens=False,
                       **{SAMPLING_NAMES[k]: v for k, v in self.sampling.items()})
        count = len(inputs["input_ids"])
        if "seed" in self.sampling:  # one fixed seed asked for: every prompt gets it, as before
            params = [vllm.SamplingParams(**options)] * count
        else:
            rank = dist.get_rank() if is_distributed() else 0
            seeds = self.request_seeds(count, int(weights_version or 0), rank)
            params = [vllm.SamplingParams(**options, seed=seed) for seed in seeds]
        outputs = self.llm.generate(vllm_prompts(model, inputs, video_features), params, use_tqdm=False)
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)
        rows = [list(c.token_ids) for out in outputs for c in out.outputs]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids.to(inputs["input_ids"].device)


def unsharded_class(module) -> type:
    """The model's own class: FSDP2 swaps in a subclass (``FSDPQwen2VL...``) that vLLM does not know."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    while issubclass(cls, FSDPModule) and cls is not FSDPModule:
        cls = next(b for b in cls.__bases__ if b is not FSDPModule)
    return cls


def join_training_ranks(model) -> dict[str, Any]:
    """vLLM options for one engine per rank inside the training job's process group: ``external_launcher`` reads
    this rank's RANK and LOCAL_RANK (set here where the launcher did not) and puts the engine on this rank's
    device; tensor parallel 1, so each rank's engine serves its own prompts and needs nothing from the others."""
    device = next(model.parameters()).device
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
    if device.type == "cuda" and int(os.environ["LOCAL_RANK"]) != device.index:
        raise ValueError(f"engine 'vllm': LOCAL_RANK={os.environ['LOCAL_RANK']} but this rank trains on {device}; "
                         "launch with Lightning, torchrun or SLURM so that each rank's LOCAL_RANK is its GPU")
    return dict(distributed_executor_backend="external_launcher", tensor_parallel_size=1)


def collapse_runs(ids: list[int], token: int | None) -> list[int]:
    """Each run of ``token`` as one token: vLLM expands a single video placeholder to the video's length itself
    (an expanded run would be expanded again)."""
    return [t for k, t in enumerate(ids) if t != token or k == 0 or ids[k - 1] != token]


def vllm_prompts(model, inputs: dict[str, torch.Tensor], video_features) -> list[dict]:
    """One vLLM prompt per row: its token ids without the left padding (one placeholder per video), and its
    video as merged features."""
    embeds = None
    if "video_grid_thw" in inputs:
        if video_features is None:  # the tower trains, so vcap did not encode ahead: encode for the rollout
            out = core_model(model).get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                                       return_dict=True)
            extra = [k for k, v in out.items() if v is not None and k not in ("pooler_output", "last_hidden_state")]
            if extra:
                raise ValueError(f"engine 'vllm' cannot pass this model's video features ({extra}); use 'vcap'")
            embeds = list(out.pooler_output)
        else:
            embeds = list(video_features.pooler_output)
    video_token = getattr(model.config, "video_token_id", None)
    prompts = []
    for i, (ids, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"])):
        prompt: dict[str, Any] = {"prompt_token_ids": collapse_runs(ids[mask.bool()].tolist(), video_token)}
        if embeds is not None:
            prompt["multi_modal_data"] = {"video": {"video_embeds": embeds[i].detach().cpu(),
                                                    "video_grid_thw": inputs["video_grid_thw"][i:i + 1].cpu()}}
        prompts.append(prompt)
    return prompts
