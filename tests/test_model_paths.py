"""A model folder that is not there (issue "no silently wrong number", item 4): a name with one ``/`` looks like a
hub id, but ``runs/sft-stage1`` with a ``runs/`` folder here, or the export a shipped recipe starts from, is a local
path; the message says the folder is missing and what writes it, never ``hf download``."""
import re

import pytest

from tests.test_cli import ROOT, user_error_in_process  # noqa: F401  (fixture)
from vcap.model.loading import RECIPE_EXPORTS, ModelNotFoundError, load_policy, load_processor, missing_local_model

STAGE_1 = "vcap fit --config configs/demo/sft.yaml --model.init_args.export_dir runs/sft-stage1"


def test_the_stage_one_command_is_the_one_the_recipes_name():
    for name in ("sft.yaml", "sft_human.yaml"):
        text = (ROOT / "configs/demo" / name).read_text()
        assert STAGE_1 in text and "runs/sft-stage1" in text
    assert RECIPE_EXPORTS["runs/sft-stage1"][0] == STAGE_1
    assert "name_or_path: runs/sft-stage1" in (ROOT / "configs/demo/sft_human.yaml").read_text()


def test_missing_local_folders_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert missing_local_model("Qwen/Qwen2-VL-7B-Instruct") is None  # a hub id: no runs/ or Qwen/ folder here
    assert missing_local_model("runs/sft-x") is None
    (tmp_path / "runs").mkdir()
    assert missing_local_model("runs/sft-x").startswith(
        "runs/sft-x does not exist (runs/ is a folder here, so this is a local path, not a hub id); a run with "
        "--model.init_args.export_dir runs/sft-x writes it")
    assert missing_local_model("./runs/sft-stage1") == f"./runs/sft-stage1 does not exist; `{STAGE_1}` writes it " \
        "(stage 1 of the demo warm start; configs/demo/sft_human.yaml, stage 2, starts from it)"
    (tmp_path / "runs/sft-x").mkdir()
    assert missing_local_model("runs/sft-x") is None  # there: whatever is wrong with it is another message


def test_loading_a_missing_local_folder_says_so_not_hf_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=re.escape(f"the local folder runs/sft-stage1 does not exist; "
                                                           f"`{STAGE_1}` writes it")) as err:
        load_processor("runs/sft-stage1")  # no runs/ yet: the recipe's export is known by name
    assert "hf download" not in str(err.value) and "huggingface.co" not in str(err.value)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelNotFoundError, match=re.escape("runs/mine does not exist (runs/ is a folder here")) as err:
        load_policy("runs/mine")
    assert "hf download" not in str(err.value)
    with pytest.raises(ModelNotFoundError, match="hf download nobody/not-a-model-xyz"):
        load_policy("nobody/not-a-model-xyz")  # a hub id still gets the download advice


def test_fit_on_a_missing_folder_under_runs_says_the_folder_is_missing(user_error_in_process, tmp_path):
    (tmp_path / "runs").mkdir()
    (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo.yaml",
                                    "--model.init_args.name_or_path", "runs/sft-x")
    assert line.startswith("--model.init_args.name_or_path runs/sft-x does not exist (runs/ is a folder here, so "
                           "this is a local path, not a hub id); a run with --model.init_args.export_dir runs/sft-x "
                           "writes it"), line
    assert "hf download" not in line


def test_sft_human_without_stage_one_names_the_command_that_exports_it(user_error_in_process):
    (line,) = user_error_in_process("fit", "--config", ROOT / "configs/demo/sft_human.yaml")
    assert line == (f"--model.init_args.name_or_path runs/sft-stage1 does not exist; `{STAGE_1}` writes it (stage 1 "
                    "of the demo warm start; configs/demo/sft_human.yaml, stage 2, starts from it)")
