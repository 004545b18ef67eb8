"""The embedded demo's pieces: human-style SFT targets, the SFT target choice, the training-curves PNG and
``vcap compare`` (time-matched SFT-continued vs GRPO)."""
import json
import random
import struct
import time

import pytest
import torch
import yaml

from vcap.cli.compare import TrainClock, summarize
from vcap.data.synthetic import DIRECTION_MENTION, EXTRA_MENTION, SIZE_MENTION, VAGUE_MOTION, describe, sample_specs
from vcap.training.plots import TrainingCurves, moving_average
from vcap.methods.sft import SFTModule

from tests.test_cli import ROOT, vcap


def test_sft_targets_omit_like_human_captions_while_ground_truth_stays_complete():
    rng, annotator = random.Random(0), random.Random(1)
    sized = total_subjects = extra = two_shape_clips = movements = directed = 0
    for _ in range(3000):
        specs = sample_specs(rng, 56)
        record = describe(specs, annotator)
        assert record == {**describe(specs), "sft_caption": record["sft_caption"],
                          "sft_structure": record["sft_structure"]}  # the ground truth does not depend on omissions
        full = {s["subject"]: s for s in record["structure"]}
        assert len(full) == len(specs) and all(len(s["attributes"]) == 2 for s in full.values())
        target = record["sft_structure"]
        assert target[0]["subject"] == specs[0].shape  # the first shape is always described
        for subject in target:  # the target is a subset of the truth, never a contradiction
            truth = full[subject["subject"]]
            assert set(subject["attributes"]) <= set(truth["attributes"])
            if truth["actions"][0].startswith("moves "):  # a movement: its direction may be left out, never changed
                assert subject["actions"] in (truth["actions"], [VAGUE_MOTION])
                movements += 1
                directed += subject["actions"] == truth["actions"]
            else:
                assert subject["actions"] == truth["actions"]
            assert subject["attributes"][0] == truth["attributes"][0]  # the colour is always named
            assert f"{subject['subject']} {subject['actions'][0]}." in record["sft_caption"]  # caption = thinking
            sized += len(subject["attributes"]) == 2
            total_subjects += 1
        assert record["sft_caption"].count(".") == len(target)
        if len(specs) == 2:
            two_shape_clips += 1
            extra += len(target) == 2
    assert abs(sized / total_subjects - SIZE_MENTION) < 0.03
    assert abs(directed / movements - DIRECTION_MENTION) < 0.03
    assert abs(extra / two_shape_clips - EXTRA_MENTION) < 0.04


def test_sft_trains_on_sft_fields_when_present_else_on_the_ground_truth():
    full = {"id": "a", "structure": [{"subject": "circle", "attributes": ["red", "small"], "actions": ["grows"]}],
            "caption": "A small red circle grows."}
    human = {**full, "sft_structure": [{"subject": "circle", "attributes": ["red"], "actions": ["grows"]}],
             "sft_caption": "A red circle grows."}
    sft = SFTModule(name_or_path="vcap-tiny")
    reference = SFTModule(name_or_path="vcap-tiny", target_source="reference")
    assert sft.target_fields(full) == (full["structure"], full["caption"])
    assert sft.target_fields(human) == (human["sft_structure"], human["sft_caption"])
    assert reference.target_fields(human) == (full["structure"], full["caption"])
    with pytest.raises(KeyError, match="sft_structure"):
        sft.target_fields({"id": "b", "caption": "x"})
    with pytest.raises(ValueError, match="target_source"):
        SFTModule(name_or_path="vcap-tiny", target_source="human")


def test_moving_average_by_hand():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0], 5) == [2.0, 3.0]


def test_training_curves_png(tmp_path):
    curves = TrainingCurves(smoothing=3)
    curves.train = {"reward": [(1, 1.0), (2, 1.5), (3, 2.0)], "reward/think": [(1, 0.2), (2, 0.4), (3, 0.5)]}
    curves.val = [(0, {"think_f1": 0.4, "caption_event_f1": 0.5}), (3, {"think_f1": 0.6, "caption_event_f1": 0.7})]
    path = curves.write(tmp_path / "curves.png")
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 800 and height > 300


class FakeTrainer:
    should_stop = False


@pytest.mark.parametrize("kind", ["wall", "cpu"])
def test_train_clock_stops_fit_when_the_budget_is_spent(kind):
    clock, trainer = TrainClock(budget_seconds=0.02, clock=kind), FakeTrainer()
    clock.on_train_batch_start(trainer, None, None, 0)
    clock.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop and clock.steps == 1  # nothing measurable happened inside the step
    clock.on_train_batch_start(trainer, None, None, 1)
    cpu_deadline = time.process_time() + 0.03
    while time.process_time() < cpu_deadline:  # busy, so both the wall and the CPU clock advance
        sum(range(1000))
    clock.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop and clock.steps == 2 and clock.seconds[kind] >= 0.02


def test_train_clock_cpu_budget_ignores_time_spent_waiting():
    clock, trainer = TrainClock(budget_seconds=0.05, clock="cpu"), FakeTrainer()
    clock.on_train_batch_start(trainer, None, None, 0)
    time.sleep(0.1)  # another program holding the cores looks like this to us: wall time passes, CPU time does not
    clock.on_train_batch_end(trainer, None, None, None, 0)
    assert clock.seconds["wall"] >= 0.1 and clock.seconds["cpu"] < 0.05 and not trainer.should_stop


def test_train_clock_rejects_an_unknown_clock():
    with pytest.raises(ValueError, match="valid: \\['wall', 'cpu'\\]"):
        TrainClock(clock="gpu")


def test_summarize_mean_and_std_by_hand():
    runs = [{c: {"think_f1": v} for c in ("warm start", "SFT-continued", "GRPO")} for v in (0.2, 0.4)]
    summary = summarize(runs)
    assert summary["GRPO"]["think_f1"]["mean"] == pytest.approx(0.3)
    assert summary["GRPO"]["think_f1"]["std"] == pytest.approx(0.1414213562)


def test_compare_config_names_recipes_that_exist():
    from jsonargparse import ArgumentParser

    from vcap.cli.compare import compare

    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(compare)
    config = parser.parse_args(["--config", str(ROOT / "configs/demo/compare.yaml")])
    for key in ("grpo_config", "sft_config"):
        assert (ROOT / config[key]).is_file(), key
    sft = yaml.safe_load((ROOT / config.sft_config).read_text())["data"]["init_args"]
    grpo = yaml.safe_load((ROOT / config.grpo_config).read_text())["data"]["init_args"]
    for key in ("dataset_seed", "num_train", "num_val"):  # the same training videos and held-out set
        assert sft[key] == grpo[key], key


def test_compare_end_to_end_on_the_tiny_model(tmp_path):
    shapes = {"root": str(tmp_path / "shapes"), "num_train": 8, "num_val": 4, "num_workers": 0, "batch_size": 2,
              "val_batch_size": 4}
    grpo = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    grpo["model"]["init_args"].update(name_or_path="vcap-tiny-sft", num_generations=2, max_completion_length=16,
                                      max_new_tokens=16)
    grpo["data"]["init_args"].update(shapes)
    grpo["trainer"].update(max_steps=2, val_check_interval=2, log_every_n_steps=1)
    grpo["trainer"].pop("callbacks")
    sft = yaml.safe_load((ROOT / "configs/demo/sft_continue.yaml").read_text())
    sft["model"]["init_args"].update(name_or_path="vcap-tiny-sft", max_new_tokens=16)
    sft["data"]["init_args"].update(shapes)
    for name, config in (("grpo.yaml", grpo), ("sft.yaml", sft)):
        (tmp_path / name).write_text(yaml.safe_dump(config))
    out = vcap("compare", "--grpo_config", "grpo.yaml", "--sft_config", "sft.yaml", "--seeds", "[3]",
               "--output", "cmp", "--clock", "cpu", cwd=tmp_path)
    assert "SFT-continued" in out.stdout and "GRPO" in out.stdout
    result = json.loads((tmp_path / "cmp/compare.json").read_text())
    run = result["per_seed"][0]
    assert set(run) == {"warm start", "SFT-continued", "GRPO"}
    assert all("think_f1" in run[c] and "caption_event_f1" in run[c] for c in run)
    assert run["GRPO"]["train_steps"] == 2
    # SFT stops at the first step that brings its training time past GRPO's
    assert run["SFT-continued"]["train_cpu_seconds"] >= run["GRPO"]["train_cpu_seconds"]
    assert result["clock"] == "cpu"
    assert (tmp_path / "cmp/compare.png").stat().st_size > 1000
    assert (tmp_path / "cmp/seed3/grpo/version_0/training_curves.png").exists()

    # a rerun reuses the finished seed instead of training it again ...
    vcap("compare", "--grpo_config", "grpo.yaml", "--sft_config", "sft.yaml", "--seeds", "[3]",
         "--output", "cmp", "--clock", "cpu", cwd=tmp_path)
    assert not (tmp_path / "cmp/seed3/grpo/version_1").exists()
    assert json.loads((tmp_path / "cmp/compare.json").read_text())["per_seed"] == result["per_seed"]
    # ... but never mixes runs of another recipe into the table
    (tmp_path / "sft.yaml").write_text((tmp_path / "sft.yaml").read_text() + "\n# edited\n")
    refused = vcap("compare", "--grpo_config", "grpo.yaml", "--sft_config", "sft.yaml", "--seeds", "[3]",
                   "--output", "cmp", "--clock", "cpu", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "holds a comparison with other config_sha256" in refused.stderr
