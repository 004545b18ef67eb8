"""--help is complete: every argument has a description, choices are listed, annotate is listed, short names work."""
import re
import sys

import pytest

from vcap.cli import main


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vcap"])  # LightningCLI warns when both sys.argv and args are given


def run_help(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def undocumented(help_text: str) -> list[str]:
    """Options whose help is only the automatic '(type: ..., default: ...)' part, or nothing."""
    entries, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-[-\w.]+(?:[ ,][^ ].*?)?)(?:\s{2,}(.*))?$", line)
        if m and not line.startswith("   "):
            current = m[1].split()[0].rstrip(",")
            entries[current] = (m[2] or "").strip()
        elif current and line.startswith("    "):
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return [opt for opt, text in entries.items() if not text or text.startswith(("(type:", "(required, type:"))]


@pytest.mark.parametrize("args", [
    ("fit", "--help"), ("validate", "--help"), ("predict", "--help"),
    ("fit", "--model.help", "GRPOModule"), ("fit", "--model.help", "SFTModule"),
    ("fit", "--model.help", "CaptionPolicyModule"),
    ("fit", "--data.help", "CaptionDataModule"), ("fit", "--data.help", "ShapesDataModule"),
])
def test_every_argument_is_documented(capsys, args):
    text = run_help(capsys, *args)
    assert undocumented(text) == []


def test_undocumented_detector_can_fail():
    text = "options:\n  --a A                 (type: int, default: 1)\n  --b B                 Says what b is.\n"
    assert undocumented(text) == ["--a"]


def test_choices_are_listed(capsys):
    text = run_help(capsys, "fit", "--model.help", "GRPOModule")
    squashed = " ".join(text.split())
    assert "{grpo,dapo,dr_grpo}" in squashed and "{group,none}" in squashed
    assert "{float32,bfloat16,float16}" in squashed
    data = " ".join(run_help(capsys, "fit", "--data.help", "CaptionDataModule").split())
    assert "{skip,error}" in data


def test_top_level_help_lists_every_subcommand_with_its_own_description(capsys):
    text = run_help(capsys, "--help")
    for name in ("fit", "validate", "test", "predict", "annotate"):
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), name
    predict = re.search(r"^\s+predict\s+(.*)$", text, re.M)[1]
    assert predict.startswith("Caption videos")  # not the docstring of its `output` argument


def test_optimizer_and_scheduler_are_not_offered(capsys):
    text = run_help(capsys, "fit", "--help")
    assert "--optimizer" not in text and "--lr_scheduler" not in text
    assert "learning_rate" in run_help(capsys, "fit", "--model.help", "GRPOModule")
