"""Checkpoints are read with ``torch.load(weights_only=True)``: a pickle planted as a checkpoint runs no code and is
refused in one line naming the file; vcap's own checkpoints (CLI or Python-built) still load."""
import datetime
import inspect
import os
import pathlib
import pickle

import pytest
import torch

from tests.test_cli import ROOT, small_shapes, user_error_in_process  # noqa: F401  (fixture)
from vcap.training.checkpoints import AtomicCheckpointIO, CheckpointRefusedError, read_info
from vcap.training.trainer import VcapTrainer

RUN = pathlib.Path("runs/demo-grpo/version_0")


class Planted:
    """What an attacker writes: unpickling it runs a shell command (here: creates a marker file)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A checkpoint-looking zip file (it passes the whole-file check) with the planted object inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 9, "state_dict": {}, "vcap_run": Planted(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):  # what it is: nothing torch's safe loader accepts
        torch.load(path, weights_only=True)
    return path


def refusal(path) -> str:
    return (f"--ckpt_path {path}: refused to load: it holds Python objects that are not plain data (posix.system); "
            "vcap loads checkpoints with weights_only=True, which runs no code from the file: delete it unless you "
            "wrote it, or, for a checkpoint of another program you trust, pass --weights_only false")


def test_a_planted_last_ckpt_runs_no_code_and_is_one_line(user_error_in_process, tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-ran"  # outside the folder whose files must not change
    ckpt = plant(tmp_path / RUN / "checkpoints/last.ckpt", marker)
    demo = ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path.parent / "unused-shapes")]
    (line,) = user_error_in_process(*demo, "--ckpt_path", "last")
    assert line == refusal(RUN / "checkpoints/last.ckpt")
    assert not marker.exists()
    (line,) = user_error_in_process(*demo, "--ckpt_path", ckpt)  # named explicitly
    assert line == refusal(ckpt)
    (line,) = user_error_in_process("validate", "--bench", "shapes", "--ckpt_path", ckpt)
    assert line == refusal(ckpt)
    assert not marker.exists()


def test_a_planted_step_checkpoint_beside_last_is_refused_too(user_error_in_process, tmp_path):
    """``last`` reads every checkpoint of the run folder for its step: each one with the safe loader."""
    marker = tmp_path.parent / f"{tmp_path.name}-ran"
    folder = tmp_path / RUN / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 1, "state_dict": {}}, folder / "last.ckpt")
    plant(folder / "epoch=0-step=2.ckpt", marker)
    (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo.yaml", "--ckpt_path", "last")
    assert line == refusal(folder.relative_to(tmp_path) / "epoch=0-step=2.ckpt")
    assert not marker.exists()


def test_lightnings_own_load_is_safe_too(tmp_path):
    """The load inside fit/validate/test/predict (AtomicCheckpointIO, vcap's default) and its default."""
    marker = tmp_path / "ran"
    ckpt = plant(tmp_path / "x.ckpt", marker)
    with pytest.raises(CheckpointRefusedError) as refused:
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert str(refused.value) == refusal(ckpt)
    with pytest.raises(CheckpointRefusedError):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=None)  # Lightning's "not set" is safe here
    with pytest.raises(CheckpointRefusedError):
        read_info(ckpt)
    assert not marker.exists()
    for method in (VcapTrainer.fit, VcapTrainer.validate, VcapTrainer.test, VcapTrainer.predict):
        assert inspect.signature(method).parameters["weights_only"].default is True


def test_vcaps_own_python_built_checkpoint_types_load(tmp_path, caplog):
    """A module built in Python keeps a pathlib path and a peft LoraConfig in its hyperparameters: those load; any
    other object (a datetime here) is refused unless the user passes weights_only=False, which is logged."""
    from peft import LoraConfig

    ckpt = tmp_path / "own.ckpt"
    torch.save({"global_step": 3, "state_dict": {"w": torch.ones(2)},
                "hyper_parameters": {"name_or_path": pathlib.Path("m"), "peft": LoraConfig(r=4)}}, ckpt)
    loaded = AtomicCheckpointIO().load_checkpoint(ckpt)
    assert loaded["hyper_parameters"]["peft"].r == 4 and loaded["hyper_parameters"]["name_or_path"] == pathlib.Path("m")
    info = read_info(ckpt)
    assert info.global_step == 3 and info.hparams["peft"].r == 4
    other = tmp_path / "other.ckpt"
    torch.save({"global_step": 1, "when": datetime.datetime(2026, 1, 1)}, other)
    with pytest.raises(CheckpointRefusedError, match=r"not plain data \(datetime.datetime\)"):
        AtomicCheckpointIO().load_checkpoint(other)
    assert AtomicCheckpointIO().load_checkpoint(other, weights_only=False)["when"].year == 2026
    assert "--weights_only false: " in caplog.text and "any code it holds runs" in caplog.text
