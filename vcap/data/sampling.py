"""A seeded, resumable training order: resuming mid-epoch continues with the samples not yet seen."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """Order = permutation seeded by (seed, epoch); ``skip`` drops the first samples once (after a resume)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def __iter__(self):
        order, self.skip = self.order()[self.skip:], 0
        return iter(order)

    def __len__(self) -> int:
        return self.size


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
