"""``--print_config`` prints the config the run would use: flags given after it count, dotted flags into mapping
options (``--model.init_args.reward_options.caption.judge_options.base_url``) included."""
import sys

import pytest
import yaml

from tests.test_cli import ROOT
from vcap.cli import main


def printed(capsys, monkeypatch, tmp_path, *args) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vcap"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/demo.yaml"), *args])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_flags_given_after_it(capsys, monkeypatch, tmp_path):
    cfg = printed(capsys, monkeypatch, tmp_path, "--print_config", "--model.init_args.learning_rate", "0.5",
                  "--model.init_args.reward_options.caption.judge_options.base_url", "http://judge:8000/v1",
                  "--trainer.max_steps", "7")
    init = cfg["model"]["init_args"]
    assert init["learning_rate"] == 0.5 and cfg["trainer"]["max_steps"] == 7
    # the leaf is set inside the demo's caption options, which stay as they are
    assert init["reward_options"] == {"caption": {"judge": "lexical", "mode": "linear", "metric": "f1",
                                                  "judge_options": {"base_url": "http://judge:8000/v1"}}}
    assert "processor" not in cfg["data"]["init_args"]  # a linked option is not printed, as without the leaf
    assert not list(tmp_path.iterdir())  # printing writes nothing


def test_print_config_with_a_leaf_before_it_matches_the_one_after(capsys, monkeypatch, tmp_path):
    leaf = ["--model.init_args.generation_kwargs.repetition_penalty", "1.2"]
    before = printed(capsys, monkeypatch, tmp_path, *leaf, "--print_config")
    after = printed(capsys, monkeypatch, tmp_path, "--print_config", *leaf)
    assert before == after and before["model"]["init_args"]["generation_kwargs"] == {"repetition_penalty": 1.2}
