"""The checks the CLI runs before building anything, one by one."""
import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import RepositoryNotFoundError
from jsonargparse import Namespace

from vcap.cli import preflight
from vcap.cli.preflight import accelerator_problem, ckpt_problem, model_problem, required_fields


def test_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator_problem("gpu").startswith("trainer.accelerator is 'gpu' but this machine has no usable CUDA")
    assert accelerator_problem("cpu") is None and accelerator_problem("auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accelerator_problem("cuda") is None


def test_model_names_folders_and_placeholder(tmp_path):
    assert model_problem("vcap-tiny") is None and model_problem("vcap-tiny-sft") is None
    assert model_problem(preflight.MODEL_NOT_SET).startswith("this benchmark needs the model to evaluate")
    assert "no such folder" in model_problem(str(tmp_path / "missing"))
    assert "has no config.json" in model_problem(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert model_problem(str(tmp_path)) is None


def test_hub_ids_offline_and_online(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = model_problem("Org/Some-VL-Model")
    assert "not in the local Hugging Face cache" in offline and "`hf download Org/Some-VL-Model`" in offline
    assert "huggingface-cli" not in offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def missing(repo_id, filename):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its constructor wants an HTTP response
        Exception.__init__(error, "404")
        raise error
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    assert model_problem("Org/Typo-Model").startswith("no model 'Org/Typo-Model' on the Hugging Face hub")

    def no_network(repo_id, filename):
        raise ConnectionError("unreachable")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    assert "cannot fetch 'Org/Some-VL-Model' from the Hugging Face hub (ConnectionError)" in \
        model_problem("Org/Some-VL-Model")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(tmp_path / "config.json"))
    assert model_problem("Org/Some-VL-Model") is None


def test_checkpoint(tmp_path):
    assert ckpt_problem(None) is None and ckpt_problem("last") is None
    assert ckpt_problem(str(tmp_path / "x.ckpt")).startswith(f"--ckpt_path {tmp_path / 'x.ckpt'}: no such checkpoint")
    torch.save({"global_step": 1}, tmp_path / "x.ckpt")
    assert ckpt_problem(str(tmp_path / "x.ckpt")) is None
    whole = (tmp_path / "x.ckpt").read_bytes()
    (tmp_path / "x.ckpt").write_bytes(whole[: len(whole) // 2])  # cut short, as by a full disk
    assert ckpt_problem(str(tmp_path / "x.ckpt")).startswith(f"--ckpt_path {tmp_path / 'x.ckpt'}: not a whole checkpoint")
    (tmp_path / "x.ckpt").write_bytes(b"")
    assert "not a whole checkpoint" in ckpt_problem(str(tmp_path / "x.ckpt"))


@pytest.mark.parametrize("class_path, init_args, subcommand, expected", [
    ("vcap.grpo.module.GRPOModule", {}, "fit", {"structure", "events"}),
    ("vcap.grpo.module.GRPOModule", {"rewards": {"format": 1.0}}, "fit", set()),
    ("vcap.grpo.module.GRPOModule", {"rewards": {"format": 1.0, "cnscore": 1.0}}, "fit", {"caption"}),
    ("vcap.methods.sft.SFTModule", {}, "fit", {"structure", "caption"}),
])
def test_required_fields_follow_the_recipe(class_path, init_args, subcommand, expected):
    fields = required_fields(Namespace(class_path=class_path, init_args=Namespace(**init_args)), subcommand)
    assert set(fields["fit"]) == expected and set(fields["validate"]) == {"structure", "events"}
    assert required_fields(Namespace(class_path=class_path, init_args=Namespace()), "predict") == {}
