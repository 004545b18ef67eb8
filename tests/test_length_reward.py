"""The ``length`` reward by value (word counts at, inside and outside the band, at both fall edges), its option
checks, and a shrunk demo fit that trains on it and logs it.

Band [min_words, max_words] pays 1; below it, 1 - (min_words - n) / fall_words; above it, 1 - (n - max_words) /
fall_words; never below 0. Every expected number is worked out in the comments.
"""
import csv
import sys

import pytest
import torch

from tests.test_cli import ROOT, error_lines, small_shapes, vcap
from vcap.cli import main
from vcap.errors import UsageError
from vcap.rewards import RewardSet, build_reward, parse_completion
from vcap.rewards.length import length_score

THINK = '<think>[{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]</think>'
SAMPLE = {"id": "s", "caption": "A red circle moves.", "events": ["the red circle moves"],
          "structure": [{"subject": "circle", "attributes": ["red"], "actions": ["moves"]}]}


def answer_of(words: int) -> str:
    return THINK + "<answer>" + " ".join(f"w{i}" for i in range(words)) + "</answer>"


def score(texts, **options):
    out = build_reward("length", **options)([parse_completion(t) for t in texts], [SAMPLE] * len(texts))
    return out


# min_words 3, max_words 8, fall_words 4 (the CLI test's options)
#   n = 0: 3 below -> 1 - 3/4 = 0.25      n = 1: 1 - 2/4 = 0.5      n = 2: 1 - 1/4 = 0.75
#   n = 3: lower edge of the band -> 1    n = 5: inside -> 1        n = 8: upper edge -> 1
#   n = 9: 1 above -> 1 - 1/4 = 0.75      n = 10: 0.5               n = 11: 0.25
#   n = 12 = max + fall: 1 - 4/4 = 0 (the upper fall edge)          n = 13, 20: past it, held at 0
@pytest.mark.parametrize("words, expected", [
    (0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (5, 1.0), (8, 1.0), (9, 0.75), (10, 0.5), (11, 0.25), (12, 0.0),
    (13, 0.0), (20, 0.0),
])
def test_band_and_upper_fall(words, expected):
    out = score([answer_of(words)], min_words=3, max_words=8, fall_words=4)
    assert out.scores.tolist() == [expected]  # exact: every value is a multiple of 1/4
    assert out.components["words"].tolist() == [float(words)]
    assert out.failures == []


# min_words 6, max_words 8, fall_words 4: the lower fall edge is reachable
#   n = 2 = min - fall: 1 - 4/4 = 0 (the lower fall edge)   n = 1, 0: below it, held at 0
#   n = 3: 1 - 3/4 = 0.25    n = 5: 1 - 1/4 = 0.75    n = 6: 1
@pytest.mark.parametrize("words, expected", [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.25), (5, 0.75), (6, 1.0)])
def test_lower_fall_edge(words, expected):
    assert score([answer_of(words)], min_words=6, max_words=8, fall_words=4).scores.tolist() == [expected]


def test_words_are_whitespace_separated_and_fractional_falls():
    # "A red  circle\nmoves." -> 4 words (runs of spaces and newlines separate, punctuation stays on its word);
    # band [1, 2], fall 3: 2 above -> 1 - 2/3 = 0.3333...
    text = THINK + "<answer>A red  circle\nmoves.</answer>"
    out = score([text], min_words=1, max_words=2, fall_words=3)
    assert out.components["words"].tolist() == [4.0]
    assert out.scores.item() == pytest.approx(1 / 3)
    assert length_score(0, 0, 0, 1) == 1.0  # an empty answer inside a band [0, 0]
    assert length_score(2.5, 0, 1, 3) == pytest.approx(0.5)  # 1.5 above over 3 words


def test_no_answer_scores_zero_with_a_reason():
    texts = [THINK, "garbage", answer_of(5)]
    out = score(texts, min_words=3, max_words=8, fall_words=4)
    assert out.scores.tolist() == [0.0, 0.0, 1.0]
    assert [i for i, _ in out.failures] == [0, 1] and all(why == "no <answer> block" for _, why in out.failures)
    words = out.components["words"]
    assert words[:2].isnan().all() and words[2] == 5  # no answer: no word count, left out of the logged mean


def test_length_in_a_reward_set_is_weighted_and_logged():
    # format 1 (strict tags, JSON think) + 0.5 * length(9 words in [3, 8], fall 4 -> 0.75) = 1.375
    rewards = RewardSet({"format": 1.0, "length": 0.5}, {"length": {"min_words": 3, "max_words": 8, "fall_words": 4}})
    out = rewards([parse_completion(answer_of(9))], [SAMPLE])
    assert out.scores.tolist() == [1.375]
    assert out.components["length"].tolist() == [0.75] and out.components["length/words"].tolist() == [9.0]
    assert out.scores_by["length"].tolist() == [0.75]


@pytest.mark.parametrize("options, message", [
    ({"min_words": -1}, "reward_options.length.min_words must be >= 0, got -1"),
    ({"min_words": 5, "max_words": 4}, "reward_options.length.max_words must be >= min_words (5), got 4"),
    ({"fall_words": 0}, "reward_options.length.fall_words must be > 0, got 0"),
    ({"fall_words": -2.5}, "reward_options.length.fall_words must be > 0, got -2.5"),
    ({"max_words": "many"}, "reward_options.length.max_words must be a number, got 'many'"),
    ({"min_words": True}, "reward_options.length.min_words must be a number, got True"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(UsageError) as err:
        build_reward("length", **options)
    assert str(err.value) == message


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match=r"^bad options for reward 'length': .*'max_word'"):
        build_reward("length", max_word=3)


def test_bad_option_through_the_cli_is_one_line(capsys, monkeypatch, tmp_path):
    """One line, exit 2, no run folder. (Reward options are checked when the model is built, after the preflight has
    generated the synthetic data, as for every reward's options: only the data folder may appear.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vcap"])
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, ["fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path / "shapes"),
                            "--model.init_args.rewards", "{format: 1.0, length: 1.0}",
                            "--model.init_args.reward_options", "{length: {min_words: 3, max_words: 2}}"])))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert error_lines(err) == ["reward_options.length.max_words must be >= min_words (3), got 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no run folder, no judge cache


def test_demo_fit_trains_on_the_length_reward(tmp_path):
    out = vcap("fit", "--config", ROOT / "configs/demo.yaml", *small_shapes(tmp_path / "shapes"),
               "--model.init_args.rewards", "{format: 1.0, length: 1.0}",
               "--model.init_args.reward_options", "{length: {min_words: 3, max_words: 8, fall_words: 4}}",
               "--trainer.max_steps", "2", "--trainer.validate_before_fit", "false",
               "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
               "--model.init_args.num_generations", "2", "--model.init_args.max_completion_length", "16",
               "--data.init_args.batch_size", "2", cwd=tmp_path)
    run_dir = tmp_path / "runs/demo-grpo/version_0"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"], out.stderr[-2000:]
    for row in rows:
        length = float(row["train/reward/length"])
        assert 0.0 <= length <= 1.0
        assert row["train/reward/length/words"] != ""  # the word count's mean (n/a only if no answer at all)
        # the total is format + length over the same completions (no judge, nothing excluded)
        assert float(row["train/reward"]) == pytest.approx(float(row["train/reward/format"]) + length, abs=1e-5)
        assert "train/reward/caption" not in row or row["train/reward/caption"] == ""
    assert "train/reward_normalized/length" not in rows[0]  # the default aggregation is the plain sum
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
