"""Data parallelism for modules that run their own backward passes (GRPO's manual optimization).

Why vcap syncs GRPO gradients itself under DDP: DDP's reducer assumes one backward per wrapped forward.
Lightning calls ``training_step`` through the DDP wrapper, and a GRPO step samples, scores and then runs
several backward passes (one per micro-batch) inside that single forward. The reducer then records a
gradient order on each rank during step 1 and rebuilds its buckets from it at step 2; the ranks' layouts
disagree and step 2 dies in ``_pre_forward`` with "RuntimeError: Empty bucket specified" (issue 11).
So for manual optimization the reducer is switched off (``require_backward_grad_sync = False``, the
switch DDP's own ``no_sync`` uses) and the accumulated gradients are averaged once per optimizer step,
in flat buckets, by :func:`all_reduce_gradients`. That is also the right amount of communication for
gradient accumulation: one all-reduce per step, not one per micro-batch.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 25 * 2**20 // 4  # about 25 MB of fp32, DDP's default bucket size


def check_strategy_support(strategy: str, load_in_4bit: bool) -> None:
    """Refuse, before loading, what vcap cannot shard: QLoRA's 4-bit weights (uint8 storage beside bf16 weights)
    do not flatten into FSDP's shards as vcap loads them."""
    from vcap.errors import UsageError
    from vcap.model.memory_check import SHARDING_STRATEGIES

    if load_in_4bit and strategy in SHARDING_STRATEGIES:
        raise UsageError(f"model.init_args.load_in_4bit (QLoRA) cannot be sharded by {strategy}: train QLoRA on one "
                         "device or with --trainer.strategy ddp, or use LoRA without load_in_4bit under FSDP")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def take_over_ddp_gradient_sync(wrapped: torch.nn.Module) -> bool:
    """Switch DDP's reducer off for ``wrapped`` (the strategy's model); True if it was a DDP module."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(wrapped, DistributedDataParallel):
        return False
    wrapped.require_backward_grad_sync = False
    return True


@torch.no_grad()
def all_reduce_gradients(params: list[torch.nn.Parameter], bucket_elements: int = BUCKET_ELEMENTS) -> None:
    """Average ``.grad`` over all ranks. Parameters without a gradient count as zero gradients, so every
    rank issues the same collectives in the same order even when a rank skipped its batch."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:  # one flat buffer per (device, dtype), cut into buckets
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads + [None]:
            if g is not None and (size + g.numel() <= bucket_elements or not bucket):
                bucket.append(g)
                size += g.numel()
                continue
            if bucket:
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat.div_(world)
                offset = 0
                for t in bucket:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()
            bucket, size = ([g], g.numel()) if g is not None else ([], 0)


@torch.no_grad()
def share_of_global_counts(counts: torch.Tensor) -> torch.Tensor:
    """``counts`` summed over all ranks and divided by the world size (``counts`` itself without a process group).

    The ranks' gradients are averaged, so a rank that normalises its loss by these shares, not by its own counts,
    contributes exactly its part of the whole batch's loss, even when ranks hold different numbers of tokens
    (DAPO's token mean) or of sequences (a rank that skipped videos). Every rank must call it, in step.
    """
    if not is_distributed():
        return counts
    total = counts.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


@contextmanager
def full_parameters_for_generation(model: torch.nn.Module):
    """Generation under FSDP2 sees full weights: ``generate`` encodes the video before any forward (transformers
    >= 5.18), which would reach the root unit's parameters while they are still sharded. The root's own
    parameters (embeddings, LM head, ViT patch embedding and merger) are gathered for the whole call; every
    ``fully_shard``-ed block gathers its own in its forward as usual. FSDP1 (Lightning's FSDPStrategy) needs
    nothing: vcap generates inside the wrapped root's forward, where the root is already gathered."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = ()
    if not isinstance(model, FSDPModule):
        yield
        return
    # FSDP2 initialises its root state on the root's first forward; generate() may reach inner blocks first
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def sharded_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units inside ``model`` (FSDP2 ``fully_shard``-ed modules or FSDP1 wrappers), outermost first;
    empty when nothing is sharded."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = FullyShardedDataParallel
    return [m for m in model.modules() if isinstance(m, (FSDPModule, FullyShardedDataParallel))]


@contextmanager
def unit_gathered(unit: torch.nn.Module):
    """The unit's own parameters full (nested units stay sharded) for the duration; a collective over the ranks
    that shard it. FSDP1's root is already gathered while vcap runs inside its forward, so only nested units
    are summoned."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(unit, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False):
            yield
        return
    state = unit._get_fsdp_state()
    state._lazy_init()  # FSDP2 initialises its root on the root's first forward, which may not have run yet
    group = state._fsdp_param_group
    if group is None or group.is_unsharded:  # no parameters of its own, or already gathered (the root in generate)
        yield
        return
    unit.unshard()
    try:
        yield
    finally:
        unit.reshard()


def clean_name(name: str) -> str:
    """A parameter name without FSDP1's wrapper segments (FSDP2 keeps names as they are)."""
    return name.replace("_fsdp_wrapped_module.", "")


def full_named_parameters(model: torch.nn.Module):
    """(name, full tensor) of every parameter, gathered one FSDP unit at a time so that a rank never holds more
    than one unit's full weights beside its shards (a 7B model need not fit twice). Unsharded models yield their
    parameters as they are. Under sharding each yielded tensor is a copy (the unit reshards after its last one)
    and every rank must consume the whole iterator in the same order (each unit's gather is a collective).
    Names are ``named_parameters``' own (FSDP1 wrapper segments included: see ``clean_name``)."""
    params = dict(model.named_parameters())
    units = sharded_units(model)
    if not units:
        yield from params.items()
        return
    prefix = {id(m): name for name, m in model.named_modules()}
    unit_prefixes = sorted(((prefix[id(u)] + "." if prefix[id(u)] else ""), u) for u in units)

    def owner(name: str):  # the innermost unit whose subtree holds the parameter
        found = None
        for p, u in unit_prefixes:
            if name.startswith(p) and (found is None or len(p) > len(found[0])):
                found = (p, u)
        return found[1] if found else None

    by_unit: dict[int, list[str]] = {}
    for name in params:
        by_unit.setdefault(id(owner(name)), []).append(name)
    for unit in [None] + units:  # parameters outside every unit first (FSDP1: the root's, already full)
        owned = by_unit.get(id(unit), [])
        if not owned:
            continue
        context = unit_gathered(unit) if unit is not None else nullcontext()
        with context:
            current = dict(model.named_parameters())  # FSDP2 swaps in the unsharded tensors while gathered
            for name in owned:
                tensor = current[name].detach()
                if hasattr(tensor, "full_tensor"):  # a DTensor of a root unit outside ``model`` (sharded here)
                    tensor = tensor.full_tensor()
                yield name, tensor.clone()
