"""End-to-end CLI: fit -> validate --bench -> predict on the tiny default, plus config printing and errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def vcap(*args, cwd, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
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
    vcap("fit", "--config", ROOT / "configs/demo.yaml", *shapes, "--trainer.max_steps", "2",
         "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1", "--model.init_args.num_generations", "2",
         "--model.init_args.max_completion_length", "16", "--model.init_args.max_new_tokens", "16",
         "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "4", cwd=tmp_path)
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

    out = vcap("validate", "--bench", "shapes", *shapes, "--ckpt_path", last, cwd=tmp_path)
    assert "think_f1" in out.stdout and "caption_escore" in out.stdout
    assert (tmp_path / "runs/validate-shapes/version_0/validation.json").exists()

    videos = tmp_path / "shapes/videos"
    vcap("predict", "--config", ROOT / "vcap/benches/shapes.yaml", "--data.init_args.predict_videos", f"[{videos}]",
         "--output", tmp_path / "preds.jsonl", "--ckpt_path", last, *shapes, cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"id", "video", "completion", "think", "answer", "subjects"} <= set(rows[0])


def test_resume_from_last_via_cli(tmp_path):
    args = ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path / "shapes"),
            "--trainer.validate_before_fit", "false", "--trainer.val_check_interval", "100",
            "--trainer.limit_val_batches", "0", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "8", "--data.init_args.batch_size", "2"]
    extra = tmp_path / "every-step.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(tmp_path / "ck"), "save_last": True, "every_n_train_steps": 1}}]}}))
    ckpt = ["--config", extra]
    vcap(*args, "--trainer.max_steps", "1", *ckpt, cwd=tmp_path)
    assert torch.load(tmp_path / "ck/last.ckpt", weights_only=False)["global_step"] == 1
    out = vcap(*args, "--trainer.max_steps", "2", *ckpt, "--ckpt_path", "last", cwd=tmp_path)
    assert "Restoring states from the checkpoint" in out.stdout + out.stderr
    assert torch.load(tmp_path / "ck/last.ckpt", weights_only=False)["global_step"] == 2


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


def test_missing_model_error_says_how_to_get_it(tmp_path):
    out = vcap("validate", "--bench", "shapes", "--model.init_args.name_or_path", tmp_path / "no-such-model",
               *small_shapes(tmp_path / "shapes"), cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "cannot load model" in out.stderr and "no-such-model" in out.stderr and "does not exist" in out.stderr


def test_unknown_bench_lists_valid_names(tmp_path):
    out = vcap("validate", "--bench", "nope", cwd=tmp_path, check=False)
    assert out.returncode != 0 and "valid: ['carebench', 'dream1k', 'shapes', 'vdc']" in out.stderr


def test_help_works(tmp_path):
    assert "fit" in vcap("--help", cwd=tmp_path).stdout
