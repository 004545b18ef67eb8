"""Shared fixtures: an offline tiny Qwen2-VL and a small synthetic shapes dataset, built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def vcap_cache(tmp_path_factory) -> Path:
    """Every test builds into a private cache, never the user's ~/.cache/vcap."""
    root = tmp_path_factory.mktemp("vcap-cache")
    old = os.environ.get("VCAP_CACHE")
    os.environ["VCAP_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("VCAP_CACHE", None)
    else:
        os.environ["VCAP_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_path(vcap_cache) -> Path:
    from vcap.model.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def shapes_manifest(tmp_path_factory) -> Path:
    from vcap.data.synthetic import ShapesSpec, build_shapes_dataset

    return build_shapes_dataset(tmp_path_factory.mktemp("shapes"), ShapesSpec(num_train=8, num_val=4, seed=1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (setup.cfg): one worker a CPU, at most 4 (each holds torch and its models, and the DDP tests start
    two more processes); VCAP_TEST_WORKERS overrides."""
    wanted = os.environ.get("VCAP_TEST_WORKERS")
    if wanted:
        if not wanted.isdigit():
            raise pytest.UsageError(f"VCAP_TEST_WORKERS must be a whole number of workers (0: no workers), got {wanted!r}")
        return int(wanted)
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
