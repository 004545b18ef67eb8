"""Data parallelism on CPU: `vcap fit/validate` with DDP over 2 gloo processes on the shipped tiny model.

One straight 2-step DDP fit (checkpoint every step, 2 micro-batches per step), one resume from its
mid-epoch step-1 checkpoint, and `vcap validate` with 2 processes and with 1. The probes in
tests/ddp_probe.py log each rank's batches, weights and judge calls.
"""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from vcap.data.sampling import ResumableSampler

ROOT = Path(__file__).resolve().parent.parent


def run_vcap(subcommand: str, config: dict, tmp_path: Path, name: str, *extra: str) -> list[dict]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / f"{name}.probe.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", VCAP_PROBE_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "vcap.cli", subcommand, "--config", str(cfg), *extra], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"vcap {subcommand} ({name}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def config(manifest: Path, tmp_path: Path, devices: int, **trainer) -> dict:
    return {
        "seed_everything": 0,
        "model": {"class_path": "tests.ddp_probe.RecordingGRPOModule", "init_args": {
            "name_or_path": "vcap-tiny-sft", "num_generations": 2, "max_completion_length": 8, "max_new_tokens": 12,
            "micro_batch_size": 2, "learning_rate": 1e-3, "beta": 0.04, "log_completions_every": 1,
            "rewards": {"format": 1.0, "caption": 1.0, "tests.helpers:LengthReward": 1.0},
            "reward_options": {"caption": {"judge": "tests.ddp_probe:CountingJudge", "mode": "linear"}}}},
        "data": {"class_path": "vcap.data.datamodule.CaptionDataModule", "init_args": {
            "manifest": str(manifest), "batch_size": 2, "val_batch_size": 2, "num_workers": 0, "nframes": 4,
            "min_pixels": 3136, "max_pixels": 3136}},
        "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
                    "logger": False, "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "default_root_dir": str(tmp_path), **trainer},
    }


def by_rank(records: list[dict], kind: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in records:
        if r["kind"] == kind:
            out.setdefault(r["rank"], []).append(r)
    return out


def test_resumable_sampler_shards_like_distributed_sampler_and_skips_per_rank():
    from torch.utils.data import DistributedSampler

    for size in (8, 9):
        ours = [ResumableSampler(size, shuffle=False, num_replicas=2, rank=r) for r in (0, 1)]
        torch_ = [DistributedSampler(range(size), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
        assert [list(s) for s in ours] == [list(s) for s in torch_]
    shuffled = [ResumableSampler(10, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    halves = [list(s) for s in shuffled]
    assert sorted(halves[0] + halves[1]) == list(range(10))
    shuffled[1].skip = 2  # resumed after 2 samples of rank 1's shard
    assert list(shuffled[1]) == halves[1][2:] and list(shuffled[1]) == halves[1]  # the skip applies once


@pytest.mark.slow
def test_ddp_fit_resume_and_validate_match_single_process(tmp_path, shapes_manifest):
    ckpt = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 1, "save_top_k": -1,
                          "filename": "{step}"}}
    fit = config(shapes_manifest, tmp_path, 2, max_steps=2, limit_val_batches=0, callbacks=[ckpt])
    straight = run_vcap("fit", fit, tmp_path, "straight")  # 8 train videos / 2 ranks / batch 2: 2 steps an epoch
    batches = by_rank(straight, "batch")
    assert sorted(batches) == [0, 1] and [b["step"] for b in batches[0]] == [0, 1] == [b["step"] for b in batches[1]]
    seen = [i for rank in batches.values() for b in rank for i in b["ids"]]
    assert len(seen) == 8 and len(set(seen)) == 8  # the ranks split the epoch, nothing twice
    weights = by_rank(straight, "weights")  # gradients were averaged: both ranks hold the same model
    assert weights[0][0]["checksum"] == pytest.approx(weights[1][0]["checksum"], rel=0, abs=1e-9)

    # resume mid-epoch from the step-1 checkpoint: each rank continues with its own next batch
    resumed = run_vcap("fit", fit, tmp_path, "resumed", "--ckpt_path", str(tmp_path / "ckpt/step=1.ckpt"))
    again = by_rank(resumed, "batch")
    for rank in (0, 1):
        assert [(b["step"], b["ids"]) for b in again[rank]] == [(1, batches[rank][1]["ids"])]

    # validation: metrics synced over 2 ranks equal one process; each sample judged once, not once per rank
    reports = {}
    for devices in (2, 1):
        cfg = config(shapes_manifest, tmp_path / f"val{devices}", devices)
        probes = run_vcap("validate", cfg, tmp_path, f"validate{devices}")
        reports[devices] = (json.loads((tmp_path / f"val{devices}/validation.json").read_text())["latest"],
                            Counter(p["premise"] for p in probes if p["kind"] == "judge"))
    (ddp_metrics, ddp_judged), (single_metrics, single_judged) = reports[2], reports[1]
    assert set(ddp_metrics) == set(single_metrics) and "caption_escore" in ddp_metrics
    for key, value in single_metrics.items():
        assert ddp_metrics[key] == pytest.approx(value, abs=1e-6), key
    assert ddp_judged == single_judged and sum(single_judged.values()) > 0


@pytest.mark.slow
def test_ddp_rank_with_only_bad_videos_still_joins_the_step(tmp_path, shapes_manifest):
    records = [json.loads(line) for line in shapes_manifest.read_text().splitlines()]
    for r in records:  # the copy lives elsewhere: keep the videos reachable
        r["video"] = str(shapes_manifest.parent / r["video"])
    train = [r for r in records if r.get("split", "train") == "train"]
    for i in (1, 3):  # unshuffled, rank 1's first batch is train records 1 and 3: both missing
        train[i]["video"] = str(tmp_path / f"missing-{i}.mp4")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    fit = config(manifest, tmp_path, 2, max_steps=2, limit_val_batches=0)
    fit["model"]["init_args"]["num_iterations"] = 2  # the skipping rank must join both optimizer steps
    fit["data"]["init_args"]["shuffle"] = False
    probes = run_vcap("fit", fit, tmp_path, "skips")
    batches = by_rank(probes, "batch")
    assert batches[1][0]["ids"] == [] and len(batches[0][0]["ids"]) == 2  # only rank 1's batch was unusable
    assert all(len(b["ids"]) == 2 for b in batches[0] + batches[1][1:])
    weights = by_rank(probes, "weights")
    assert weights[0][0]["checksum"] == pytest.approx(weights[1][0]["checksum"], rel=0, abs=1e-9)
