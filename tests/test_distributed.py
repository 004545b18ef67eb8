"""Data parallelism on CPU: `vcap fit/validate` with DDP over 2 gloo processes on the shipped tiny model.

One straight 2-step DDP fit (checkpoint every step, 2 micro-batches per step) with rollouts that do not depend
on the random state, the same 2 steps in one process on the joined batches (its logged numbers must be the DDP
run's), one resume from the DDP run's mid-epoch step-1 checkpoint, and `vcap validate` of 5 samples with 2
processes and with 1. The probes in tests/ddp_probe.py log each rank's batches, rewards, logged metrics, weights
and judge calls.
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


def five_val_samples(manifest: Path, tmp_path: Path) -> Path:
    """The manifest with a fifth validation sample (an odd count: the distributed sampler pads with a repeat)."""
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in records:
        r["video"] = str(manifest.parent / r["video"])
    extra = dict(next(r for r in records if r.get("split") == "val" and r.get("events")), id="fifth")
    records.append(extra)
    out = tmp_path / "five-val.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert sum(r.get("split") == "val" for r in records) == 5
    return out


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
    logged = {"class_path": "tests.ddp_probe.LoggedMetrics"}
    fit = config(shapes_manifest, tmp_path, 2, max_steps=2, limit_val_batches=0, callbacks=[ckpt, logged])
    fit["model"]["init_args"]["rollout"] = "tests.ddp_probe:GreedyGroupsEngine"
    fit["model"]["init_args"]["rewards"]["tests.helpers:RecordReward"] = 1.0  # differs from rank to rank
    straight = run_vcap("fit", fit, tmp_path, "straight")  # 8 train videos / 2 ranks / batch 2: 2 steps an epoch
    batches = by_rank(straight, "batch")
    assert sorted(batches) == [0, 1] and [b["step"] for b in batches[0]] == [0, 1] == [b["step"] for b in batches[1]]
    seen = [i for rank in batches.values() for b in rank for i in b["ids"]]
    assert len(seen) == 8 and len(set(seen)) == 8  # the ranks split the epoch, nothing twice
    weights = by_rank(straight, "weights")  # gradients were averaged: both ranks hold the same model
    assert weights[0][0]["checksum"] == pytest.approx(weights[1][0]["checksum"], rel=0, abs=1e-9)

    # the numbers logged are those of all ranks' samples: one process on the joined batches logs the same
    joined = config(shapes_manifest, tmp_path / "joined", 1, max_steps=2, limit_val_batches=0, callbacks=[logged])
    joined["model"]["init_args"].update(rollout=fit["model"]["init_args"]["rollout"],
                                        rewards=fit["model"]["init_args"]["rewards"])
    joined["data"]["init_args"]["batch_size"] = 4  # step s: rank 0's and rank 1's batch of the DDP run together
    one = run_vcap("fit", joined, tmp_path, "joined")
    assert by_rank(one, "weights")[0][0]["checksum"] == pytest.approx(weights[0][0]["checksum"], rel=1e-6)
    local = by_rank(straight, "local_reward")
    assert local[0][0]["mean"] != pytest.approx(local[1][0]["mean"])  # the ranks' rewards differ
    ddp_logged, one_logged = (by_rank(run, "logged")[0] for run in (straight, one))
    assert [r["step"] for r in ddp_logged] == [1, 2] == [r["step"] for r in one_logged]
    for ours, single in zip(ddp_logged, one_logged):
        keys = {k for k in single["metrics"] if not k.startswith(("rollout/", "step/"))}  # timings differ from run to run
        assert keys == {k for k in ours["metrics"] if not k.startswith(("rollout/", "step/"))} and "train/kl" in keys
        for key in keys:
            assert ours["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5, abs=1e-6), key

    # resume mid-epoch from the step-1 checkpoint: each rank continues with its own next batch
    resumed = run_vcap("fit", fit, tmp_path, "resumed", "--ckpt_path", str(tmp_path / "ckpt/step=1.ckpt"))
    again = by_rank(resumed, "batch")
    for rank in (0, 1):
        assert [(b["step"], b["ids"]) for b in again[rank]] == [(1, batches[rank][1]["ids"])]

    # validation: metrics synced over 2 ranks equal one process; each sample judged once, not once per rank
    # validation of 5 samples: the sampler repeats one on rank 1, which must be neither counted nor judged twice
    five = five_val_samples(shapes_manifest, tmp_path)
    reports = {}
    for devices in (2, 1):
        cfg = config(five, tmp_path / f"val{devices}", devices)
        probes = run_vcap("validate", cfg, tmp_path, f"validate{devices}")
        reports[devices] = (json.loads((tmp_path / f"val{devices}/validation.json").read_text())["latest"],
                            Counter(p["premise"] for p in probes if p["kind"] == "judge"))
    (ddp_metrics, ddp_judged), (single_metrics, single_judged) = reports[2], reports[1]
    assert set(ddp_metrics) == set(single_metrics) and "caption_escore" in ddp_metrics
    for key, value in single_metrics.items():
        assert ddp_metrics[key] == pytest.approx(value, abs=1e-6), key
    assert ddp_judged == single_judged and sum(single_judged.values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["full", "qlora"])  # QLoRA: adapters on a quantized base (LoRA's path too)
def test_ddp_rank_with_only_bad_videos_still_joins_the_step(tmp_path, shapes_manifest, weights):
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
    if weights != "full":  # LoRA adapters (on a 4-bit base for QLoRA) are what DDP averages
        fit["model"]["init_args"].update(load_in_4bit=weights == "qlora", peft={
            "class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}})
    fit["data"]["init_args"]["shuffle"] = False
    probes = run_vcap("fit", fit, tmp_path, "skips")
    batches = by_rank(probes, "batch")
    assert batches[1][0]["ids"] == [] and len(batches[0][0]["ids"]) == 2  # only rank 1's batch was unusable
    assert all(len(b["ids"]) == 2 for b in batches[0] + batches[1][1:])
    weights = by_rank(probes, "weights")
    assert weights[0][0]["checksum"] == pytest.approx(weights[1][0]["checksum"], rel=0, abs=1e-9)
