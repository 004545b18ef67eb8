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
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import torch

from vcap.distributed import is_distributed
from vcap.errors import UsageError
from vcap.grpo.engines import ENGINES, RolloutEngine
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
    names = {name for name, _ in base.named_parameters()}
    if "lm_head.weight" not in names:  # tied to the input embeddings: vLLM gets its own copy (see start)
        yield "lm_head.weight", base.get_output_embeddings().weight.detach()
    for name, param in base.named_parameters():
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
            yield f"{layer_name}.{leaf}", tensor.detach()
        elif type(param).__name__ == "Params4bit":
            yield name, dequantize_module_weight(owner).detach()
        else:
            yield name, param.detach()


@ENGINES.register("vllm")
class VLLMEngine(RolloutEngine):
    """A colocated ``vllm.LLM`` (created on the first rollout; needs ``pip install vllm``).

    Args:
        sampling: extra options (HF names): min_new_tokens, repetition_penalty, top_k, min_p, presence_penalty,
            frequency_penalty, seed.
        gpu_memory_utilization: share of the GPU vLLM may take for weights and KV cache (the rest trains); on
            CPU, vLLM reads it as the share of the machine's memory.
        enable_sleep_mode: offload vLLM's weights and drop its KV cache between rollouts (CUDA only).
        max_model_len: longest prompt + completion vLLM plans for (null: the model's maximum).
        dtype: vLLM's weight dtype, e.g. bfloat16 (null: the policy's).
        enforce_eager: no CUDA graphs (faster start, slower decoding).
        seed: vLLM's sampling seed.
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
        if is_distributed():
            raise ValueError("engine 'vllm' runs in a single process for now; with DDP/FSDP use rollout: vcap")
        if self.enable_sleep_mode and not torch.cuda.is_available():
            raise ValueError("engine 'vllm': enable_sleep_mode needs CUDA; set it to false on CPU")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        dtype = self.dtype or str(core_model(model).language_model.embed_tokens.weight.dtype).removeprefix("torch.")
        self._model_dir = tempfile.TemporaryDirectory(prefix="vcap-vllm-")
        config = base.config.to_dict()
        # untied: vLLM's in-place reload restores a layer that loads nothing (a tied LM head) to its old
        # tensors, which would put the dummy embeddings back; the pushed weights carry lm_head explicitly
        config.update(architectures=[type(base).__name__], dtype=dtype, tie_word_embeddings=False)
        config.get("text_config", {})["tie_word_embeddings"] = False
        type(base.config).from_dict(config).save_pretrained(self._model_dir.name)
        processor.save_pretrained(self._model_dir.name)
        # no raw videos or images: with embeddings enabled, vLLM serves videos as features only (no ViT runs,
        # none is profiled)
        options = dict(model=self._model_dir.name, load_format="dummy", dtype=dtype, enable_mm_embeds=True,
                       limit_mm_per_prompt={"video": 0, "image": 0}, generation_config="vllm", seed=self.seed,
                       enforce_eager=self.enforce_eager, max_model_len=self.max_model_len,
                       enable_sleep_mode=self.enable_sleep_mode, gpu_memory_utilization=self.gpu_memory_utilization)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine lives in this process
        log.info("starting vLLM (%s, %s) for rollouts", type(base).__name__, dtype)
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
        params = vllm.SamplingParams(
            n=num_generations, max_tokens=max_new_tokens, stop_token_ids=list(eos_token_ids),
            temperature=temperature if do_sample else 0.0, top_p=top_p if do_sample else 1.0,
            allowed_token_ids=self.allowed_token_ids(model),
            detokenize=False, skip_special_tokens=False,
            **{SAMPLING_NAMES[k]: v for k, v in self.sampling.items()})
        outputs = self.llm.generate(vllm_prompts(model, inputs, video_features), params, use_tqdm=False)
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)
        rows = [list(c.token_ids) for out in outputs for c in out.outputs]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids.to(inputs["input_ids"].device)


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
