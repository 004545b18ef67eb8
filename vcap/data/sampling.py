"""A seeded, resumable training order: resuming mid-epoch continues with the samples not yet seen.

Under data parallelism each rank takes every ``num_replicas``-th sample of the same permutation. The sampler
is a ``DistributedSampler`` so Lightning uses it as it is: Lightning wraps any other sampler in its
``DistributedSamplerWrapper``, which would silently drop the mid-epoch ``skip`` on resume.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Order = permutation seeded by (seed, epoch), padded to a multiple of ``num_replicas`` by wrapping
    around (as ``DistributedSampler``), rank ``r`` taking positions r, r+R, ...; ``skip`` drops this rank's
    first samples once (after a resume). ``num_replicas``/``rank`` default to the process group's."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):  # DistributedSampler.__init__ is skipped: it needs a dataset and a group
        initialized = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else dist.get_world_size() if initialized else 1
        self.rank = rank if rank is not None else dist.get_rank() if initialized else 0
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.drop_last = False
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def global_order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.size))
        else:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        padded = len(self) * self.num_replicas
        return (order * math.ceil(padded / max(len(order), 1)))[:padded]

    def order(self) -> list[int]:
        """This rank's samples for the epoch, in order."""
        return self.global_order()[self.rank::self.num_replicas]

    def __iter__(self):
        order, self.skip = self.order()[self.skip:], 0
        return iter(order)

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (state_dict) and restores to the exact batch of the epoch.

    ``batches_done`` reports how many batches of the current epoch the trainer has processed.
    """

    def __init__(self, *args, batches_done: Callable[[], int] = lambda: 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches_done": int(self.batches_done())}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.set_epoch(state["epoch"])
            self.sampler.skip = state["batches_done"] * (self.batch_size or 1)
