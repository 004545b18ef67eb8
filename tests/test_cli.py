"""End-to-end CLI: fit -> validate --bench -> predict on the tiny default, config printing, and the one-line
message of every user error (run as a subprocess: exit 2, no traceback, nothing written)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vcap.cli import main
from vcap.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def vcap(*args, cwd, check=True, env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "vcap.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"vcap {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def small_shapes(root):
    return ["--data.init_args.root", root, "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
            "--data.init_args.num_workers", "0"]


def test_fit_validate_predict_on_tiny_default(tmp_path):
    shapes = small_shapes(tmp_path / "shapes")
    first = vcap("fit", "--config", ROOT / "configs/demo.yaml", *shapes, "--trainer.max_steps", "2",
         "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1", "--model.init_args.num_generations", "2",
         "--model.init_args.max_completion_length", "16", "--model.init_args.max_new_tokens", "16",
         "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "4", cwd=tmp_path)
    assert_quiet(first.stdout + first.stderr)
    run_dir = tmp_path / "runs/demo-grpo/version_0"
    report = json.loads((run_dir / "validation.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["start", "step 2"]  # warm start beside the trained policy
    assert report["runs"][0]["judges"]["caption"] == {"backend": "lexical"} and report["runs"][0]["model"] == "vcap-tiny-sft"
    assert {"think_f1", "caption_escore", "reward/format", "reward/think", "reward/caption"} <= set(report["latest"])
    metrics = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/reward", "train/reward/think", "train/frac_reward_zero_std", "train/kl", "train/clip_fraction",
            "train/completion_length", "data/skipped_videos"} <= set(metrics)
    last = run_dir / "checkpoints/last.ckpt"
    assert last.exists()

    out = vcap("validate", "--bench", "shapes", *shapes, "--ckpt_path", last, "--limit", "2", cwd=tmp_path)
    assert "think_f1" in out.stdout and "caption_escore" in out.stdout
    assert out.stdout.count("caption_escore") == 1  # vcap's table only, not Lightning's as well
    assert_quiet(out.stdout + out.stderr)
    assert "trainable" not in out.stdout + out.stderr  # nothing trains in validate
    assert (tmp_path / "runs/validate-shapes/version_0/validation.json").exists()

    videos = tmp_path / "shapes/videos"
    out = vcap("predict", "--config", ROOT / "vcap/benches/shapes.yaml", "--data.init_args.predict_videos",
               f"[{videos}]", "--output", tmp_path / "preds.jsonl", "--ckpt_path", last, *shapes, cwd=tmp_path)
    assert (out.stdout + out.stderr).count("predictions written") == 1 and "trainable" not in out.stdout + out.stderr
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"id", "video", "completion", "think", "answer", "subjects"} <= set(rows[0])
    made_by = json.loads((tmp_path / "preds.jsonl.made_by.json").read_text())  # what made the predictions
    assert made_by["key"]["model"] == "vcap-tiny-sft" and made_by["about"]["checkpoint"] == str(last)
    assert made_by["key"]["decoding"]["mode"] == "greedy" and len(made_by["key"]["weights"]) == 16


def test_resume_from_last_with_a_checkpoint_folder_of_its_own(tmp_path):
    """ModelCheckpoint.dirpath set outside the run folder: the checkpoint names its run folder, so --ckpt_path last
    continues there (the shipped configs leave dirpath unset: tests/test_interrupts.py)."""
    args = ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path / "shapes"),
            "--trainer.validate_before_fit", "false", "--trainer.val_check_interval", "100",
            "--trainer.limit_val_batches", "0", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "8", "--data.init_args.batch_size", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.callbacks.init_args.every_n_train_steps", "1",
            "--trainer.callbacks.init_args.dirpath", tmp_path / "ck"]
    vcap(*args, "--trainer.max_steps", "1", cwd=tmp_path)
    assert torch.load(tmp_path / "ck/last.ckpt", weights_only=False)["global_step"] == 1
    out = vcap(*args, "--trainer.max_steps", "2", "--ckpt_path", "last", cwd=tmp_path)
    assert "Restoring states from the checkpoint" in out.stdout + out.stderr
    assert torch.load(tmp_path / "ck/last.ckpt", weights_only=False)["global_step"] == 2
    assert not (tmp_path / "runs/demo-grpo/version_1").exists()
    with open(tmp_path / "runs/demo-grpo/version_0/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "1"), ("0", "2")]  # one run folder, one metrics.csv


@pytest.mark.parametrize("how", ["stacked lora.yaml", "short name", "inline"])
def test_lora_from_yaml_trains_and_the_reference_is_the_base(tmp_path, how):
    """LoRA written as users write it: the shipped configs/lora.yaml stacked after the demo, the short class name
    with dotted options, or the whole mapping inline. Two steps train the adapters only."""
    peft = {"stacked lora.yaml": ["--config", ROOT / "configs/lora.yaml"],
            "short name": ["--model.init_args.peft", "LoraConfig", "--model.init_args.peft.r", "4",
                           "--model.init_args.peft.lora_alpha", "8"],
            "inline": ["--model.init_args.peft", '{"class_path": "peft.LoraConfig", "init_args": {"r": 4}}']}[how]
    ckpt = tmp_path / "ck"
    extra = tmp_path / "every-step.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(ckpt), "save_last": True, "every_n_train_steps": 1}}]}}))
    out = vcap("fit", "--config", ROOT / "configs/demo.yaml", *peft, "--config", extra, *small_shapes(tmp_path / "s"),
               "--trainer.max_steps", "2", "--trainer.validate_before_fit", "false", "--trainer.limit_val_batches", "0",
               "--model.init_args.num_generations", "4", "--model.init_args.max_completion_length", "40",
               "--data.init_args.batch_size", "4", cwd=tmp_path)
    assert_quiet(out.stdout + out.stderr)
    state = torch.load(ckpt / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    weights = state["state_dict"]
    assert weights and all("lora_" in k for k in weights)  # only the adapters are stored (the base is reloaded)
    r = 64 if how == "stacked lora.yaml" else 4
    assert any(v.shape[0] == r for k, v in weights.items() if "lora_A" in k)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it trained


def test_print_config_of_paper_recipe_and_lora_swap(tmp_path):
    out = vcap("fit", "--config", ROOT / "configs/grpo.yaml", "--print_config", cwd=tmp_path)
    cfg = yaml.safe_load(out.stdout)
    init = cfg["model"]["init_args"]
    assert init["name_or_path"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert (init["num_generations"], init["beta"], init["epsilon"], init["learning_rate"]) == (8, 0.04, 0.2, 1e-5)
    assert init["dtype"] == "bfloat16" and cfg["data"]["init_args"]["max_pixels"] == 360 * 420
    assert init["peft"]["class_path"] == "peft.LoraConfig" and init["peft"]["init_args"]["r"] == 64  # LoRA default
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    full = vcap("fit", "--config", ROOT / "configs/grpo.yaml", "--config", ROOT / "configs/grpo_fsdp.yaml",
                "--print_config", cwd=tmp_path)
    full = yaml.safe_load(full.stdout)
    init = full["model"]["init_args"]
    assert init["peft"] is None and init["dtype"] == "float32" and init["learning_rate"] == 1e-6  # fp32 masters
    assert full["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"


NOISE = ("Tip:", "litlogger", "litmodels", "pip install kernels", "LeafSpec", "`max_length` is ignored",
         "module(s) in eval mode", "Epoch 0/-", "v_num", "GPU available", "Traceback")


def assert_quiet(text):
    found = [n for n in NOISE if n in text]
    assert not found, f"noise in the output: {found}"


def snapshot(folder):
    return sorted(p.relative_to(folder) for p in Path(folder).rglob("*"))


def error_lines(stderr):
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("vcap: error: ") for line in lines), stderr
    return [line[len("vcap: error: "):] for line in lines]


def user_error(*args, cwd, env=None):
    """Run a failing command as a subprocess: exit 2, no traceback, nothing written; return its error lines."""
    before = snapshot(cwd)
    out = vcap(*args, cwd=cwd, check=False, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    assert snapshot(cwd) == before  # no run folder, no judge cache
    return error_lines(out.stderr)


@pytest.fixture
def user_error_in_process(capsys, monkeypatch, tmp_path):
    """The same checks in this process (each subprocess pays seconds of imports): for the many option variants."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vcap"])

    def run(*args):
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            main(list(map(str, args)))
        assert exit_info.value.code == 2
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err and snapshot(tmp_path) == before
        return error_lines(out.err)
    return run


def test_bench_without_data_or_model_names_both_flags(tmp_path):
    model, data = user_error("validate", "--bench", "vdc", cwd=tmp_path)
    assert model.startswith("this benchmark needs the model to evaluate: pass --model.init_args.name_or_path")
    assert "data/VDC/VDCScore_qa/camera.jsonl" in data and "--data.init_args.annotations" in data
    (data_only,) = user_error("validate", "--bench", "vdc", "--model.init_args.name_or_path", "vcap-tiny-sft",
                              cwd=tmp_path)
    assert data_only == data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_recipe_without_gpu(tmp_path):
    lines = user_error("fit", "--config", ROOT / "configs/grpo.yaml", cwd=tmp_path)
    assert len(lines) == 3  # every independent problem at once, one line each: the GPU, the model, the manifest
    assert lines[0].startswith("trainer.accelerator is 'gpu' but this machine has no usable CUDA GPU; "
                           "pass --trainer.accelerator cpu")


def test_gpu_recipe_on_cpu_names_model_and_manifest_flags(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf-home")}  # an empty Hugging Face cache
    model, manifest = user_error("fit", "--config", ROOT / "configs/grpo.yaml", "--trainer.accelerator", "cpu",
                                 cwd=tmp_path, env=env)
    assert "'Qwen/Qwen2-VL-7B-Instruct' is not in the local Hugging Face cache" in model
    assert "`hf download Qwen/Qwen2-VL-7B-Instruct`" in model and "--model.init_args.name_or_path" in model
    assert manifest.startswith("manifest not found: data/train.jsonl (set --data.init_args.manifest")


def test_missing_model_error_says_how_to_get_it(tmp_path, user_error_in_process):
    (line,) = user_error_in_process("validate", "--bench", "shapes", "--model.init_args.name_or_path",
                                    tmp_path / "no-such-model", *small_shapes(tmp_path / "shapes"))
    assert line.startswith(f"--model.init_args.name_or_path {tmp_path / 'no-such-model'}: no such folder")
    assert not (tmp_path / "shapes").exists()  # the synthetic data is not built when something else is wrong


def test_optimizer_option_says_where_the_optimizer_is_set(tmp_path):
    (line,) = user_error("fit", "--config", ROOT / "configs/demo.yaml", "--optimizer", "AdamW", cwd=tmp_path)
    assert line.startswith("--optimizer is not an option: vcap's optimizer is AdamW with linear warm-up: set "
                           "--model.init_args.learning_rate")


@pytest.mark.parametrize("args, expected", [
    (["--lr_scheduler", "StepLR"], "--lr_scheduler is not an option: vcap's schedule is a linear warm-up"),
    (["--trainer.max_stepz", "3"], "unknown option --trainer.max_stepz; did you mean '--trainer.max_steps'?"),
    (["--model.init_args.loss_type", "ppo"], "--model.init_args.loss_type: 'ppo' is not one of grpo, dapo, dr_grpo"),
    (["--model.init_args.num_generation", "4"],
     "--model.init_args.num_generation is not an option of GRPOModule; did you mean 'num_generations'?"),
    (["--model", "GRPOModul"], "--model GRPOModul: no such class; did you mean 'GRPOModule'?"),
    (["--model.init_args.num_generations", "1"], "--model.init_args.num_generations 1: must be at least 2"),
    (["--data.init_args.batch_size", "two"], "--data.init_args.batch_size: expected int, got 'two'"),
    (["--ckpt_path", "nope.ckpt"], "--ckpt_path nope.ckpt: no such checkpoint file"),
])
def test_bad_options_are_one_line(user_error_in_process, args, expected):
    small = ["--data.init_args.num_train", "8", "--data.init_args.num_val", "4"]  # when the data check builds clips
    (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo.yaml", *small, *args)
    assert line.startswith(expected), line


@pytest.mark.parametrize("args, expected", [
    ([], 'expected "subcommand" to be one of {fit,validate,test,predict,annotate'),
    (["fit"], "missing --data and --model: start from a recipe, e.g. --config configs/demo.yaml"),
    (["predict", "--config", ROOT / "vcap/benches/shapes.yaml"], "vcap predict needs --data.init_args.predict_videos"),
    (["validate", "--bench"], "--bench needs a value; valid: carebench, dream1k, shapes, vdc"),
    (["annotate", "--input", "missing.jsonl", "--output", "out.jsonl"], "vcap annotate: manifest not found"),
])
def test_incomplete_commands_are_one_line(user_error_in_process, args, expected):
    (line,) = user_error_in_process(*args)
    assert line.startswith(expected), line


def test_manifest_typo_fails_before_anything_runs(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"video": "a.mp4", "caption": "c", "evnts": ["e"], "structure": []}) + "\n")
    (line,) = user_error("fit", "--config", ROOT / "configs/demo.yaml", "--data", "CaptionDataModule",
                         "--data.init_args.manifest", manifest, cwd=tmp_path)
    assert line == f"{manifest}:1: unknown field 'evnts'; did you mean 'events'? (valid: video, id, split, " \
                   "caption, structure, events, sft_caption, sft_structure, qa, prompt, seed, meta)"


def test_unknown_bench_lists_valid_names(user_error_in_process):
    (line,) = user_error_in_process("validate", "--bench", "nope")
    assert line == "unknown benchmark 'nope'; valid: ['carebench', 'dream1k', 'shapes', 'vdc']"


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    out = vcap("validate", "--bench", "nope", cwd=tmp_path, check=False, env={"VCAP_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "unknown benchmark 'nope'" in out.stderr
    monkeypatch.setattr(sys, "argv", ["vcap"])
    monkeypatch.delenv("VCAP_DEBUG", raising=False)
    with pytest.raises(UsageError, match="unknown benchmark 'nope'"):
        main(["validate", "--bench", "nope", "--debug"])
    assert "VCAP_DEBUG" not in os.environ  # --debug in one call leaves no debug mode behind for the next
