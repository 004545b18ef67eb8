"""Per-step seeding: each training step draws its randomness from (base seed, global step, rank) alone.

A resumed run must take the step after the checkpoint exactly as the uninterrupted run took it. Restoring the RNG
states stored in a checkpoint is not enough: creating the train and validation DataLoader iterators after the
restore draws from the global torch RNG (their base seeds), and how many are created differs between a resumed
and an uninterrupted run. Reseeding torch (CPU and every CUDA device), numpy and ``random`` at the start of every
training batch makes a step's sampling and dropout a function of the step itself. Ranks get different streams.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def base_seed() -> int:
    """The run's seed: ``seed_everything`` (the CLI's ``seed_everything``) sets PL_GLOBAL_SEED."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seed_step(base: int, step: int, rank: int) -> None:
    torch_seed, other_seed = np.random.SeedSequence([base % 2**63, step, rank]).generate_state(2, dtype=np.uint64)
    torch.manual_seed(int(torch_seed))  # every CUDA device too
    np.random.seed(int(other_seed) % 2**32)
    random.seed(int(other_seed))
