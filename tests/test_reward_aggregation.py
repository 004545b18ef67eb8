"""``reward_aggregation``: ``sum`` (the weighted sum of raw scores, unchanged) and ``normalize_then_sum`` (each reward
normalised within its group, then the weighted sum; GDPO / TRL's option of that name), by hand-computed value, with
failed, excluded, n/a and NaN scores, through a GRPOModule step, and through the CLI with the shipped
configs/demo/rewards/escore_length_normalized.yaml. Every expected number is worked out in the comments.

Per reward k and group g (counted completions only): z = (r - mean) / (std + 1e-4), std Bessel-corrected; z = 0 where
the group's counted scores are all equal. S = sum_k w_k z_k; the advantage is group_advantages(S) as under ``sum``.
"""
import csv
import math
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.test_cli import ROOT, small_shapes, vcap
from vcap.cli import main
from vcap.errors import UsageError
from vcap.grpo.losses import aggregate_rewards, group_advantages, normalize_then_sum
from vcap.rewards import Reward, RewardOutput, RewardSet, parse_completion

EPS = 1e-4
OVERLAY = ROOT / "configs/demo/rewards/escore_length_normalized.yaml"


class Given(Reward):
    """Scores (and failure marks) read from the sample, ``{"given": {key: {"scores": [...], "failed": [...], ...}}}``,
    one entry per completion in order, so a test states every value. One subclass per key: a RewardSet holds each
    reward name once."""

    key = ""

    def __init__(self, on_failure: str = "zero"):
        self.on_failure = on_failure

    def score(self, parsed, samples):
        spec = samples[0]["given"][self.key]
        n = len(parsed)
        failed = torch.tensor(spec.get("failed", [False] * n))
        no_reference = torch.tensor(spec.get("no_reference", [False] * n))
        scores = torch.tensor(spec["scores"], dtype=torch.float32)
        scores = scores.masked_fill(failed | no_reference, 0.0)  # the contract: what the update uses
        excluded = failed if self.on_failure == "exclude" else torch.zeros(n, dtype=torch.bool)
        return RewardOutput(scores, {"raw": scores.masked_fill(failed | no_reference, float("nan"))},
                            [(i, "judge failed: test") for i in range(n) if failed[i]], excluded, failed, no_reference)


class GivenA(Given):
    key = "a"


class GivenB(Given):
    key = "b"


class GivenF(Given):
    key = "f"


class GivenJ(Given):
    key = "j"


class GivenX(Given):
    key = "x"


class ExcludeFirst(Reward):
    """Weight 0, scores 0: drops the first completion of every group of 4 from its group (a judge failure under
    on_failure: exclude), so the module must pass ``valid`` to the aggregation and to the advantage."""

    def score(self, parsed, samples):
        n = len(parsed)
        excluded = torch.tensor([i % 4 == 0 for i in range(n)])
        return RewardOutput(torch.zeros(n), {}, [(i, "judge failed: test") for i in range(n) if excluded[i]],
                            excluded, excluded.clone())


class DistinctCharacters(Reward):
    """A second reward that varies on a random tiny model's completions: distinct characters / 20."""

    def score(self, parsed, samples):
        return RewardOutput(torch.tensor([len(set(p.text)) / 20.0 for p in parsed]))


def reward_set(weights, given, options=None):
    """Score ``len(scores)`` dummy completions with ``Given`` rewards, named by key: {key: weight}, {key: spec}.
    Returns the RewardSet's output and its per-reward scores and weights keyed by the short names."""
    names = {key: f"{__name__}:Given{key.upper()}" for key in weights}
    rewards = RewardSet({names[k]: w for k, w in weights.items()},
                        {names[k]: opts for k, opts in (options or {}).items()})
    n = len(next(iter(given.values()))["scores"])
    out = rewards([parse_completion("x")] * n, [{"given": given}] * n)
    short = {v: k for k, v in names.items()}
    return out, {short[k]: v for k, v in out.scores_by.items()}, {short[k]: w for k, w in rewards.weights.items()}


def reference_group_advantages(values, G, scale="group", valid=None):
    """Independent of vcap: numpy, group by group, (v - mean) / (std(ddof=1) + 1e-4), 0 for all-equal groups and
    for completions left out (their group's statistics skip them)."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.ones(len(values), bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros(len(values))
    for start in range(0, len(values), G):
        idx = [i for i in range(start, start + G) if valid[i]]
        group = values[idx]
        if len(idx) < 2 or np.all(group == group[0]):
            continue
        centred = group - group.mean()
        out[idx] = centred / (group.std(ddof=1) + EPS) if scale == "group" else centred
    return out


# -- normalize_then_sum by hand ---------------------------------------------------------------------------------
# Two groups of G = 4, rewards a (weight 1) and b (weight 2).
# Group 1: a = [1, 0, 1, 0]: mean 0.5, deviations ±0.5, sample var 4 * 0.25 / 3 = 1/3, std 0.577350
#            z_a = ±0.5 / 0.577450 = [0.865875, -0.865875, 0.865875, -0.865875]
#          b = [0.2, 0.4, 0.6, 0.8]: mean 0.5, deviations [-0.3, -0.1, 0.1, 0.3], var 0.2 / 3, std 0.258199
#            z_b = dev / 0.258299 = [-1.161445, -0.387148, 0.387148, 1.161445]
#          S = z_a + 2 z_b = [-1.457015, -1.640172, 1.640172, 1.457015]
#          advantage (scale group): mean 0, std sqrt((2 * 1.457015^2 + 2 * 1.640172^2) / 3) = 1.791286,
#            S / 1.791386 = [-0.813345, -0.915588, 0.915588, 0.813345]
# Group 2: a = [1, 1, 1, 1]: zero std -> z_a = 0 (not 0/1e-4 noise, not NaN)
#          b = [0, 0, 0, 1]: mean 0.25, deviations [-0.25, -0.25, -0.25, 0.75], var 0.75 / 3 = 0.25, std 0.5
#            z_b = dev / 0.5001 = [-0.499900, -0.499900, -0.499900, 1.499700]
#          S = 2 z_b = [-0.999800, -0.999800, -0.999800, 2.999400]
#          advantage: std sqrt((3 * 0.9998^2 + 2.9994^2) / 3) = 1.999600, S / 1.999700
#            = [-0.499975, -0.499975, -0.499975, 1.499925]
# Under sum instead: group 1 total a + 2b = [1.4, 0.8, 2.2, 1.6], mean 1.5, std sqrt(1/3) = 0.577350,
#   advantage [-0.173175, -1.212225, 1.212225, 0.173175]: a's 0/1 swing (std 0.58) outweighs b's (std 0.26 * 2).
A = [1, 0, 1, 0, 1, 1, 1, 1]
B = [0.2, 0.4, 0.6, 0.8, 0, 0, 0, 1]
Z_A = [0.865875, -0.865875, 0.865875, -0.865875, 0, 0, 0, 0]
Z_B = [-1.161445, -0.387148, 0.387148, 1.161445, -0.499900, -0.499900, -0.499900, 1.499700]
S = [-1.457015, -1.640172, 1.640172, 1.457015, -0.999800, -0.999800, -0.999800, 2.999400]
ADVANTAGE = [-0.813345, -0.915588, 0.915588, 0.813345, -0.499975, -0.499975, -0.499975, 1.499925]


def test_normalize_then_sum_by_hand():
    out = normalize_then_sum({"a": torch.tensor(A, dtype=torch.float32), "b": torch.tensor(B)}, {"a": 1.0, "b": 2.0}, 4)
    assert out.normalized["a"].tolist() == pytest.approx(Z_A, abs=2e-6)
    assert out.normalized["b"].tolist() == pytest.approx(Z_B, abs=2e-6)
    assert out.values.tolist() == pytest.approx(S, abs=2e-6)
    assert out.normalized["a"][4:].tolist() == [0.0] * 4  # the zero-std group: exactly 0
    # the exact formulas behind the rounded numbers above
    assert out.normalized["a"][0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + EPS), rel=1e-6)
    assert out.normalized["b"][7].item() == pytest.approx(0.75 / (0.5 + EPS), rel=1e-6)
    adv = group_advantages(out.values, 4, "group")
    assert adv.advantages.tolist() == pytest.approx(ADVANTAGE, abs=2e-6)
    assert adv.zero_std.tolist() == [False, False]


def test_module_aggregation_goes_through_a_reward_set_by_hand():
    out, scores_by, weights = reward_set({"a": 1.0, "b": 2.0}, {"a": {"scores": A}, "b": {"scores": B}})
    values = aggregate_rewards("normalize_then_sum", out.scores, scores_by, weights, 4, ~out.excluded)
    assert values.values.tolist() == pytest.approx(S, abs=2e-6)
    assert set(values.normalized) == {"a", "b"}
    # under sum the same rewards give the raw total, [1.4, 0.8, 2.2, 1.6] for group 1 (see above)
    assert out.scores[:4].tolist() == pytest.approx([1.4, 0.8, 2.2, 1.6])
    assert group_advantages(out.scores[:4], 4).advantages.tolist() == pytest.approx(
        [-0.173175, -1.212225, 1.212225, 0.173175], abs=2e-6)


def test_a_constant_reward_gives_exactly_zero_even_when_its_float_mean_rounds():
    # eight float32 0.91s: their float32 mean is 6e-8 away from 0.91 and their std 6.4e-8, so (r - mean) / (std + 1e-4)
    # would be 6e-4 for every completion; a group whose scores are all equal carries no signal: z = 0 exactly
    constant = torch.full((8,), 0.91)
    assert (constant - constant.sum() / 8).abs().max() > 0  # the rounding this guards against is real
    out = normalize_then_sum({"c": constant, "b": torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1])}, {"c": 5.0, "b": 1.0}, 8)
    assert out.normalized["c"].tolist() == [0.0] * 8
    # b: mean 0.5, deviations ±0.5, sample var 8 * 0.25 / 7 = 2/7, std 0.534522; z = ±0.5 / 0.534622 = ±0.935239
    assert out.values.tolist() == pytest.approx([-0.935239, 0.935239] * 4, abs=2e-6)
    # every reward constant (and a one-member group): S = 0 exactly, and so is its advantage
    flat = normalize_then_sum({"c": constant, "d": torch.zeros(8)}, {"c": 1.0, "d": 1.0}, 4)
    assert flat.values.tolist() == [0.0] * 8
    assert group_advantages(flat.values, 4).advantages.tolist() == [0.0] * 8
    alone = normalize_then_sum({"b": torch.tensor([3.0, 1.0, 2.0, 5.0])}, {"b": 1.0}, 2,
                               valid=torch.tensor([True, False, True, True]))
    # group 1 has one counted completion: z = 0 (not NaN from a 0/0 std); group 2: [2, 5] -> mean 3.5, std 2.121320,
    # z = ±1.5 / 2.121420 = ±0.707073
    assert alone.values.tolist() == pytest.approx([0.0, 0.0, -0.707073, 0.707073], abs=2e-6)


def test_failed_excluded_and_no_reference_count_as_under_sum_and_no_nan_leaks():
    # Group 1 (G = 4): format-like f = [1, 1, 0, 1]; judged j = [0.5, fail (zero -> 0), 1.0, fail (exclude)].
    #   j's fourth completion is dropped from its group (excluded) as under sum, so only completions 0..2 count:
    #   f over them [1, 1, 0]: mean 2/3, deviations [1/3, 1/3, -2/3], var (1/9 + 1/9 + 4/9) / 2 = 1/3, std 0.577350
    #     z_f = [0.333333, 0.333333, -0.666667] / 0.577450 = [0.577250, 0.577250, -1.154500], and 0 for the dropped one
    #   j over them [0.5, 0 (the failed-to-zero score, as sum uses it), 1.0]: mean 0.5, deviations [0, -0.5, 0.5],
    #     var 0.5 / 2 = 0.25, std 0.5: z_j = [0, -0.999800, 0.999800], 0 for the dropped one
    #   S = z_f + z_j = [0.577250, -0.422550, -0.154700, 0]
    # Group 2: j n/a for the record (no reference: scores 0, the same for all four) -> z_j = 0;
    #   f = [0, 1, 1, 1]: mean 0.75, deviations [-0.75, 0.25, 0.25, 0.25], var 0.75 / 3 = 0.25, std 0.5
    #   z_f = [-1.499700, 0.499900, 0.499900, 0.499900] = S
    given = {
        "f": {"scores": [1, 1, 0, 1, 0, 1, 1, 1]},
        "j": {"scores": [0.5, 0.9, 1.0, 0.7, 0.3, 0.6, 0.2, 0.8],  # the failed and n/a ones are zeroed by Given
              "failed": [False, True, False, True] + [False] * 4,
              "no_reference": [False] * 4 + [True] * 4},
    }
    # one RewardSet cannot hold zero and exclude for the same reward: j's fourth completion is excluded via a third
    # reward that fails there under on_failure: exclude (weight 0, constant otherwise)
    given["x"] = {"scores": [0.0] * 8, "failed": [False, False, False, True] + [False] * 4}
    out, scores_by, weights = reward_set({"f": 1.0, "j": 1.0, "x": 0.0}, given, {"x": {"on_failure": "exclude"}})
    assert out.excluded.tolist() == [False, False, False, True] + [False] * 4
    assert out.components[f"{__name__}:GivenJ"].isnan().sum() == 6  # the logged components hold NaN ...
    valid = ~out.excluded
    values = aggregate_rewards("normalize_then_sum", out.scores, scores_by, weights, 4, valid)
    assert torch.isfinite(values.values).all()  # ... the normalised sum never does
    assert all(torch.isfinite(z).all() for z in values.normalized.values())
    expected = [0.577250, -0.422550, -0.154700, 0.0, -1.499700, 0.499900, 0.499900, 0.499900]
    assert values.values.tolist() == pytest.approx(expected, abs=2e-6)
    assert values.normalized["j"][4:].tolist() == [0.0] * 4 and values.normalized["x"].tolist() == [0.0] * 8
    assert values.normalized["f"][3] == 0 and values.normalized["j"][3] == 0  # the dropped completion
    adv = group_advantages(values.values, 4, "group", valid=valid)
    assert adv.advantages[3] == 0 and torch.isfinite(adv.advantages).all()
    # a reward that breaks the contract with a NaN score: that completion is left out of that reward's statistics
    # nan, 1, 0, 1 -> counted [1, 0, 1]: mean 2/3, std 0.577350, z = [0, 0.577250, -1.154500, 0.577250]
    broken = normalize_then_sum({"n": torch.tensor([float("nan"), 1.0, 0.0, 1.0])}, {"n": 1.0}, 4)
    assert broken.values.tolist() == pytest.approx([0.0, 0.577250, -1.154500, 0.577250], abs=2e-6)


def test_sum_keeps_the_raw_weighted_total_and_its_advantages():
    # weights 1 and 0.5 over G = 4, two groups; the total and the advantages are computed here without vcap's helpers
    a = [0.0, 1.0, 1.0, 0.0, 0.3, 0.3, 0.9, 0.1]
    b = [0.25, 0.5, 1.0, 0.75, 1.0, 0.0, 0.5, 0.5]
    given = {"a": {"scores": a}, "b": {"scores": b}, "x": {"scores": [0.0] * 8, "failed": [False] * 5 + [True] + [False] * 2}}
    out, scores_by, weights = reward_set({"a": 1.0, "b": 0.5, "x": 0.0}, given, {"x": {"on_failure": "exclude"}})
    # bit for bit: the weighted sum in the reward order, from a float32 zero, as before this option existed
    by_hand = torch.zeros(8) + 1.0 * torch.tensor(a) + 0.5 * torch.tensor(b) + 0.0 * torch.zeros(8)
    assert torch.equal(out.scores, by_hand)
    valid = ~out.excluded
    values = aggregate_rewards("sum", out.scores, scores_by, weights, 4, valid)
    assert values.values is out.scores and values.normalized == {}  # handed through untouched
    total = np.array(a) + 0.5 * np.array(b)  # [0.125, 1.25, 1.5, 0.375, 0.8, 0.3, 1.15, 0.35]
    for scale in ("group", "none"):
        adv = group_advantages(values.values, 4, scale, valid=valid)
        expected = reference_group_advantages(total, 4, scale, valid.numpy()).tolist()
        assert adv.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    # one group by hand: [0.125, 1.25, 1.5, 0.375], mean 0.8125, deviations [-0.6875, 0.4375, 0.6875, -0.4375],
    # var (2 * 0.6875^2 + 2 * 0.4375^2) / 3 = 0.442708, std 0.665364 -> dev / 0.665464
    assert group_advantages(values.values, 4).advantages[:4].tolist() == pytest.approx(
        [-1.033115, 0.657437, 1.033115, -0.657437], abs=2e-6)


def test_normalised_rewards_do_not_let_a_wide_reward_drown_a_narrow_one():
    # a spans 0..100, b is 0/1. Under sum, b's flip hardly moves the advantage; after normalising, a reward
    # rescaled by 100 gives the same z (the eps aside), so both count as their weights say
    a = torch.tensor([0.0, 100.0, 50.0, 50.0])
    b = torch.tensor([1.0, 0.0, 0.0, 1.0])
    small = normalize_then_sum({"a": a / 100, "b": b}, {"a": 1.0, "b": 1.0}, 4)
    large = normalize_then_sum({"a": a, "b": b}, {"a": 1.0, "b": 1.0}, 4)
    assert large.values.tolist() == pytest.approx(small.values.tolist(), abs=1e-3)
    summed = group_advantages(a + b, 4).advantages
    assert summed[2] < summed[3] and summed[3] - summed[2] < 0.03  # b's 1 is worth 1% of a's spread
    normed = group_advantages(large.values, 4).advantages
    assert normed[3] - normed[2] > 0.9  # b's 1 is now worth as much as a's spread


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match=r"unknown reward_aggregation 'mean'; valid: \['sum', 'normalize_then_sum'\]"):
        aggregate_rewards("mean", torch.zeros(2), {"a": torch.zeros(2)}, {"a": 1.0}, 2)


# -- through the module --------------------------------------------------------------------------------------------
def run_one_step(tmp_path, tiny_path, shapes_manifest, aggregation, scale="group"):
    """One GRPO step on the random tiny model with two varying rewards; returns the rewards scored and the advantages
    handed to the policy update."""
    import lightning as L

    from vcap.data.datamodule import CaptionDataModule
    from vcap.grpo.module import GRPOModule

    module = GRPOModule(name_or_path=str(tiny_path), num_generations=4, max_completion_length=8, max_new_tokens=8,
                        micro_batch_size=8, beta=0.0, log_completions_every=0, freeze_vision=True,
                        rewards={"tests.helpers:LengthReward": 1.0, f"{__name__}:DistinctCharacters": 2.0,
                                 f"{__name__}:ExcludeFirst": 0.0},
                        reward_aggregation=aggregation, scale_rewards=scale)
    seen = {}
    update, log_rollout = module.policy_update, module.log_rollout

    def updating(rollout, advantages, *args):
        seen["advantages"] = advantages.clone()
        return update(rollout, advantages, *args)

    def logging_rollout(rollout, rewards, *args):  # the step's combined rewards, however they were scored
        seen["rewards"] = rewards
        return log_rollout(rollout, rewards, *args)

    module.policy_update, module.log_rollout = updating, logging_rollout
    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=2, val_batch_size=4,
                             num_workers=0, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
              limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False).fit(module, datamodule=data)
    return seen["rewards"], seen["advantages"], module


def test_module_step_uses_the_aggregation(tmp_path, tiny_path, shapes_manifest):
    valid = np.array([i % 4 != 0 for i in range(8)])  # ExcludeFirst drops completions 0 and 4
    rewards, advantages, module = run_one_step(tmp_path, tiny_path, shapes_manifest, "sum")
    assert (~rewards.excluded).tolist() == valid.tolist()
    # sum: the advantages are the group-normalised raw total, as before the option existed
    total = rewards.scores_by["tests.helpers:LengthReward"].numpy() + 2 * rewards.scores_by[
        f"{__name__}:DistinctCharacters"].numpy()
    assert advantages.tolist() == pytest.approx(reference_group_advantages(total, 4, valid=valid).tolist(), abs=1e-5)
    assert module.hparams.reward_aggregation == "sum"

    rewards, advantages, _ = run_one_step(tmp_path, tiny_path, shapes_manifest, "normalize_then_sum")
    # normalize_then_sum: each reward normalised within its group over the kept completions (numpy, here), weighted
    # sum, then the usual advantage
    z = {name: reference_group_advantages(values.numpy(), 4, valid=valid) for name, values in rewards.scores_by.items()}
    summed = z["tests.helpers:LengthReward"] + 2 * z[f"{__name__}:DistinctCharacters"]
    assert np.abs(summed).max() > 0  # the random completions do differ
    assert advantages.tolist() == pytest.approx(reference_group_advantages(summed, 4, valid=valid).tolist(), abs=1e-5)
    assert advantages[0] == 0 and advantages[4] == 0
    rewards, advantages, _ = run_one_step(tmp_path, tiny_path, shapes_manifest, "normalize_then_sum", scale="none")
    z = {name: reference_group_advantages(values.numpy(), 4, valid=valid) for name, values in rewards.scores_by.items()}
    summed = z["tests.helpers:LengthReward"] + 2 * z[f"{__name__}:DistinctCharacters"]
    assert advantages.tolist() == pytest.approx(summed.tolist(), abs=1e-5)  # scale none: S itself (its group mean is 0)


def test_module_refuses_an_unknown_aggregation(tiny_path):
    from vcap.grpo.module import GRPOModule

    with pytest.raises(UsageError, match=r"^reward_aggregation must be one of \['sum', 'normalize_then_sum'\], got 'avg'$"):
        GRPOModule(name_or_path=str(tiny_path), reward_aggregation="avg")


# -- through the CLI -----------------------------------------------------------------------------------------------
def test_overlay_print_config(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vcap"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/demo.yaml"), "--config", str(OVERLAY), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["reward_aggregation"] == "normalize_then_sum"
    assert set(model["rewards"]) == {"format", "think", "caption", "length"}
    assert model["reward_options"]["caption"] == {"judge": "lexical", "mode": "linear", "metric": "f1"}  # kept
    assert set(model["reward_options"]["length"]) == {"min_words", "max_words", "fall_words"}
    assert printed["model"]["class_path"] == "vcap.grpo.module.GRPOModule"
    assert list(tmp_path.iterdir()) == []  # printing the config writes nothing


def test_bad_aggregation_through_the_cli_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vcap"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/demo.yaml"), "--model.init_args.reward_aggregation", "mean"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "reward_aggregation" in err and "normalize_then_sum" in err, err


def test_overlay_trains_one_step_and_logs_raw_and_normalised_means(tmp_path):
    vcap("fit", "--config", ROOT / "configs/demo.yaml", "--config", OVERLAY, *small_shapes(tmp_path / "shapes"),
         "--trainer.max_steps", "1", "--trainer.validate_before_fit", "false", "--trainer.limit_val_batches", "0",
         "--trainer.log_every_n_steps", "1", "--model.init_args.num_generations", "4",
         "--model.init_args.max_completion_length", "48", "--data.init_args.batch_size", "2", cwd=tmp_path)
    with open(tmp_path / "runs/demo-grpo/version_0/metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    for name in ("format", "think", "caption", "length"):
        raw = float(row[f"train/reward/{name}"])
        assert 0.0 <= raw <= 1.0 and math.isfinite(raw)
        assert abs(float(row[f"train/reward_normalized/{name}"])) < 1e-5  # mean 0 over each group, by construction
        assert 0.0 <= float(row[f"train/reward_normalized_abs/{name}"]) < 2.0
    assert math.isfinite(float(row["train/loss"]))
    # the logged total stays the raw weighted sum: format + think + caption + 0.5 * length (the overlay's weights)
    weights = yaml.safe_load(OVERLAY.read_text())["model"]["init_args"]["rewards"]
    assert float(row["train/reward"]) == pytest.approx(sum(w * float(row[f"train/reward/{n}"]) for n, w in weights.items()),
                                                       abs=1e-5)
