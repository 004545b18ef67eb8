"""Export when each rank holds only shards of the weights (FSDP through Lightning's FSDPStrategy or
ModelParallelStrategy, or ``fully_shard`` directly): the same merged export as one process writes.

Every rank joins one gather of the full state dict (``torch.distributed.checkpoint.state_dict``, which serves FSDP1
and FSDP2 alike; tensors arrive one by one on rank 0's CPU, so no GPU holds the whole model). Rank 0 then loads an
unsharded copy of the policy, built by the same ``load_policy`` call that built the trained one (architecture and
LoRA layout equal by construction), fills it with the gathered weights, strictly, and writes it with
``export_model``: LoRA merged, processor, chat template, ``vcap_preprocessing.json``. Rank 0 needs CPU memory for
the gathered state (under Lightning's FSDPStrategy the frozen reference copy is gathered with it) plus that copy.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
POLICY_PREFIXES = ("", "model.")  # root = the policy itself (fully_shard) / the LightningModule (FSDPStrategy)


def gather_full_state(root: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``root`` on rank 0's CPU; other ranks get an empty dict. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def policy_weights(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The policy's own entries of a gathered state dict, under the names of an unsharded policy."""
    for prefix in POLICY_PREFIXES:
        if all(prefix + n in state for n in names):
            return {n: state[prefix + n] for n in names}
    missing = [n for n in names if not any(p + n in state for p in POLICY_PREFIXES)]
    raise RuntimeError(f"the gathered state dict lacks {len(missing)} policy weights, e.g. {missing[:3]} (keys "
                       f"look like {sorted(state)[:3]})")


def export_from_shards(module, root: torch.nn.Module, path: str | Path) -> Path | None:
    """Write ``module``'s merged export from sharded weights; ``root``: the sharded module that holds the policy
    (``trainer.strategy.model``). Every rank must call it; rank 0 writes and returns the path."""
    hp = module.hparams
    state = gather_full_state(root)
    written = None
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        from vcap.model.loading import load_policy

        copy = load_policy(hp.name_or_path, hp.dtype, hp.attn_implementation, False, hp.freeze_vision,
                           module.peft_config, False)
        names = list(copy.state_dict())
        copy.load_state_dict(policy_weights(state, names), strict=True)
        del state
        written = module.export(path, model=copy)
        log.info("exported the policy gathered from %d ranks' shards", dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.barrier()  # no rank goes on (or ends the job) before rank 0 has written the export
    return written
