"""The shipped FSDP recipe (configs/grpo_fsdp.yaml: Lightning FSDPStrategy, fp32 masters, bf16-mixed) on the
tiny model over every visible GPU: 2 GRPO steps with the sharded reference, then the export gathered from the
shards, which reloads. Needs CUDA."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gpu
def test_fsdp_recipe_runs_on_the_tiny_model(tmp_path, shapes_manifest):
    devices = str(torch.cuda.device_count())
    args = ["--config", ROOT / "configs/grpo.yaml", "--config", ROOT / "configs/grpo_fsdp.yaml",
            "--model.init_args.name_or_path", "vcap-tiny-sft", "--model.init_args.num_generations", "2",
            "--model.init_args.max_completion_length", "16", "--model.init_args.max_new_tokens", "16",
            "--model.init_args.rewards", "{format: 1.0, tests.helpers:LengthReward: 1.0}",
            "--model.init_args.reward_options", "{}", "--data.init_args.manifest", shapes_manifest,
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--data.init_args.nframes", "4",
            "--data.init_args.min_pixels", "3136", "--data.init_args.max_pixels", "3136",
            "--trainer.devices", devices, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--trainer.logger", "false", "--model.init_args.export_dir", str(tmp_path / "export")]
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "vcap.cli", "fit", *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "memory estimate" in proc.stderr and "`Trainer.fit` stopped: `max_steps=2` reached" in proc.stderr
    from vcap.model.loading import load_policy

    assert (tmp_path / "export" / "vcap_preprocessing.json").is_file()
    load_policy(str(tmp_path / "export"))  # the gathered weights load into a plain model, strictly
