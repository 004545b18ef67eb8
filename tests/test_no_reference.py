"""A record without references (``events: []``, ``structure: []``) cannot satisfy a reward: its score is n/a
(left out of logged means, counted), never 1; the manifest refuses such records unless the data module allows
them (issue "no silently wrong number", item 1)."""
import json
import math

import pytest
import torch

from tests.test_cli import ROOT, small_shapes, user_error_in_process, vcap  # noqa: F401  (fixture)
from tests.test_reward_values import JUDGE, answer
from vcap.data.manifest import ManifestError, read_manifest
from vcap.grpo.losses import group_advantages
from vcap.rewards import RewardSet, build_reward, parse_completion

EVENTS = ["e1", "e2"]
STRUCTURE = [{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]
THINK = '<think>[{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]</think><answer>e1.</answer>'


def nan_at(values: torch.Tensor) -> list[bool]:
    return [math.isnan(v) for v in values.tolist()]


@pytest.mark.parametrize("mode, metric", [("step", "recall"), ("linear", "recall"), ("linear", "f1")])
def test_caption_reward_without_events_is_n_a_not_one(mode, metric):
    reward = build_reward("caption", judge=JUDGE, mode=mode, metric=metric)
    alone = reward([answer("anything at all.")], [{"id": "a", "events": []}])
    assert alone.scores.tolist() == [0.0] and nan_at(alone.components["coverage"]) == [True]  # was 1.0: "covered"
    samples = [{"id": "a", "events": []}, {"id": "b"}, {"id": "c", "events": EVENTS, "caption": "e1 e2"}]
    out = reward([answer("anything at all."), answer("anything."), answer("e1. e2.")], samples)
    assert out.no_reference.tolist() == [True, True, False]
    assert out.scores.tolist() == [0.0, 0.0, 1.0]  # what the update uses: the same for a whole group
    assert nan_at(out.components["coverage"]) == [True, True, False]
    assert out.failures == [] and not out.failed.any()  # not a judge failure: nothing was asked


def test_think_reward_without_structure_is_n_a_not_one():
    reward = build_reward("think")
    out = reward([parse_completion("<think>[]</think><answer>x</answer>"), parse_completion(THINK)],
                 [{"id": "a", "structure": []}, {"id": "b", "structure": STRUCTURE}])
    assert out.no_reference.tolist() == [True, False]
    assert out.scores.tolist() == [0.0, 1.0]
    assert nan_at(out.components["attribute_f1"]) == [True, False]


def test_reward_set_leaves_no_reference_out_of_means_and_counts_it_per_reward():
    rewards = RewardSet({"format": 1.0, "think": 1.0, "caption": 2.0},
                        {"caption": {"judge": JUDGE, "mode": "linear"}})
    records = [{"events": [], "structure": STRUCTURE}] * 2 + [{"events": EVENTS, "structure": []}] * 2
    out = rewards([parse_completion(THINK)] * 4, records)
    assert out.no_reference_by["caption"].tolist() == [True, True, False, False]
    assert out.no_reference_by["think"].tolist() == [False, False, True, True]
    assert nan_at(out.components["caption"]) == [True, True, False, False]
    assert nan_at(out.components["think"]) == [False, False, True, True]
    assert out.unscored.tolist() == [True] * 4 and not out.failed.any() and not out.excluded.any()
    # format 1, think 1 (or n/a: 0), caption 2 * 0.5 (or n/a: 0)
    assert out.scores.tolist() == [2.0, 2.0, 2.0, 2.0]
    # a group shares its record, so the n/a reward is the same for every member: no advantage comes from it
    adv = group_advantages(out.scores, 2)
    assert adv.advantages.tolist() == [0.0] * 4


def test_manifest_refuses_empty_references_naming_file_line_field_and_flag(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [{"video": "a.mp4", "events": EVENTS, "structure": STRUCTURE},
             {"video": "b.mp4", "events": [], "structure": STRUCTURE},
             {"video": "c.mp4", "events": EVENTS, "structure": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}:2: field 'events' is empty (and 1 more in this file); the caption reward")
    assert "--data.init_args.allow_empty_references true" in str(err.value) and "\n" not in str(err.value)
    assert len(read_manifest(path, allow_empty_references=True)) == 3


def test_fit_on_empty_events_stops_naming_the_line_and_runs_with_the_flag(user_error_in_process, tmp_path,
                                                                            shapes_manifest):
    """The demo recipe, small, on a manifest whose first training record has ``events: []``."""
    import csv

    records = read_manifest(shapes_manifest)  # absolute video paths: the copy may live anywhere
    first = next(i for i, r in enumerate(records) if r["split"] == "train")
    first_val = next(i for i, r in enumerate(records) if r["split"] == "val")
    records[first]["events"] = records[first_val]["events"] = []
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["fit", "--config", ROOT / "configs/demo.yaml", "--data", "CaptionDataModule",
            "--data.init_args.manifest", manifest, "--data.init_args.num_workers", "0",
            "--data.init_args.shuffle", "false", "--data.init_args.batch_size", "2",
            "--model.init_args.num_generations", "2", "--model.init_args.max_completion_length", "16",
            "--trainer.max_steps", "1", "--trainer.log_every_n_steps", "1",
            "--trainer.validate_before_fit", "false", "--trainer.limit_val_batches", "1",
            "--trainer.val_check_interval", "1", "--data.init_args.val_batch_size", "2"]
    (line,) = user_error_in_process(*args)
    assert line.startswith(f"{manifest}:{first + 1}: field 'events' is empty (and 1 more in this "
                           "file); the caption reward would find every event covered and score any caption 1. "), line
    assert "pass --data.init_args.allow_empty_references true" in line
    vcap(*args, "--data.init_args.allow_empty_references", "true", cwd=tmp_path)
    (row,) = [r for r in csv.DictReader(open(tmp_path / "runs/demo-grpo/version_0/metrics.csv"))
              if r.get("train/caption_no_reference")]
    assert float(row["train/caption_no_reference"]) == 2.0  # the record's 2 completions: n/a, not 1
    assert float(row["train/think_no_reference"]) == 0.0
    assert not math.isnan(float(row["train/reward/caption"]))  # the other record of the batch was scored
    (run,) = json.loads((tmp_path / "runs/demo-grpo/version_0/validation.json").read_text())["runs"]
    metrics = run["metrics"]  # the first val record has no events: left out of the means, counted
    assert metrics["caption_no_reference"] == 1 and metrics["caption_no_events"] == 1, metrics
    assert metrics["reward/caption"] is not None and metrics["caption_event_recall"] is not None
