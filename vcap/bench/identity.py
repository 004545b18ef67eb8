"""The identity of a benchmark run's captions: which model, which weights, which settings made them.

Everything that can change a caption is in the key: the model's name, a fingerprint of its weights (a checkpoint,
a LoRA adapter and a trained copy are other models), its dtype and quantisation, the adapter's settings, the
decoding settings, the prompt texts and the video settings. The limit is not: a run over more samples reuses the
captions of a run over fewer. Each caption also remembers its record's video and own prompt
(``vcap.bench.evaluator.input_digest``).
"""
from __future__ import annotations

from typing import Any

from vcap.provenance import about_run, digest, model_fingerprint

VIDEO_SETTINGS = ("fps", "nframes", "max_frames", "min_pixels", "max_pixels")


def _get(hparams: Any, name: str, default: Any = None) -> Any:
    return hparams.get(name, default) if hasattr(hparams, "get") else getattr(hparams, name, default)


def caption_key(module, datamodule) -> dict:
    """The key of ``made_by.json`` for the captions ``module`` makes of ``datamodule``'s videos (a benchmark's,
    or ``vcap predict``'s)."""
    hp, dp = module.hparams, datamodule.hparams
    peft = getattr(module, "peft_config", None)
    video = {k: _get(dp, k) for k in VIDEO_SETTINGS}
    video["frame_sampling"] = getattr(datamodule, "frame_sampling", "uniform")
    return {
        "model": str(_get(hp, "name_or_path")),
        "weights": model_fingerprint(module.model),
        "dtype": str(_get(hp, "dtype")),
        "load_in_4bit": bool(_get(hp, "load_in_4bit", False)),
        "adapter": digest(peft.to_dict())[:16] if peft is not None and hasattr(peft, "to_dict") else None,
        "decoding": {"mode": "greedy", "max_new_tokens": _get(hp, "max_new_tokens"),
                     "generation_kwargs": dict(_get(hp, "generation_kwargs") or {})},
        "prompt": {"prompt": _get(dp, "prompt"), "system_prompt": _get(dp, "system_prompt")},
        "video": video,
        "bench": getattr(datamodule, "bench", None),
    }


def open_outputs(module, datamodule, on_mismatch: str = "stop") -> None:
    """Bind the datamodule's evaluator to the captions ``module`` makes: rank 0 computes the key (its weights'
    fingerprint), checks and locks the folder; every other rank then reads the generations of the same folder."""
    trainer = module.trainer
    strategy = trainer.strategy
    key = caption_key(module, datamodule) if trainer.is_global_zero else None
    key = strategy.broadcast(key, src=0)  # one key for all ranks (FSDP ranks hold other shards of the weights)
    about = about_run(checkpoint=str(trainer.ckpt_path) if trainer.ckpt_path else None)
    error = None
    if trainer.is_global_zero:
        try:
            datamodule.evaluator.open(key, about, writer=True, on_mismatch=on_mismatch)
        except Exception as err:  # noqa: BLE001 - every rank raises it instead of waiting at the barrier
            error = err
    error = strategy.broadcast(error, src=0)
    if error is not None:
        raise error
    if not trainer.is_global_zero:
        datamodule.evaluator.open(key, about, writer=False)
