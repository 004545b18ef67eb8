"""Logged rollout statistics: truncation counted by missing EOS, and μ > 1 stats averaged over iterations."""
import lightning as L
import pytest
import torch

from tests.test_grpo_module import make_data, make_module
from vcap.grpo.stats import mean_over_iterations, truncated

EOS, PAD = 2, 0


def test_truncated_means_no_eos_not_a_full_last_position():
    ids = torch.tensor([[5, 6, EOS, PAD],   # finished early
                        [5, 6, 7, EOS],     # finished exactly at the budget: not truncated
                        [5, 6, 7, 8],       # ran out of budget
                        [5, EOS, EOS, EOS]])  # pad == eos after the first EOS
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert truncated(ids, mask, [EOS]).tolist() == [False, False, True, False]
    assert truncated(ids, mask, [EOS]).float().mean().item() == 0.25
    # the example: nothing truncated, the old `mask[:, -1] == 1` said 0.5
    assert truncated(ids[:2], mask[:2], [EOS]).float().mean().item() == 0.0
    assert (mask[:2, -1] == 1).float().mean().item() == 0.5


def test_truncated_ignores_eos_outside_the_mask_and_accepts_several_eos_ids():
    ids = torch.tensor([[5, 6, 7, EOS], [5, 9, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0's EOS lies outside its kept tokens
    assert truncated(ids, mask, [EOS]).tolist() == [True, True]
    assert truncated(ids, mask, [EOS, 9]).tolist() == [True, False]


def test_mean_over_iterations_by_hand():
    stats = mean_over_iterations([{"loss": torch.tensor(1.0), "kl": torch.tensor(0.0)},
                                  {"loss": torch.tensor(3.0), "kl": torch.tensor(0.5)}])
    assert stats["loss"].item() == 2.0 and stats["kl"].item() == 0.25
    assert mean_over_iterations([]) == {}


def test_mean_over_iterations_of_one_step_and_of_integer_or_double_stats():
    one = mean_over_iterations([{"loss": torch.tensor(2.5)}])
    assert one == {"loss": torch.tensor(2.5)}
    mixed = mean_over_iterations([{"count": 1, "kl": torch.tensor(0.5, dtype=torch.float64)},
                                  {"count": 2, "kl": torch.tensor(1.0, dtype=torch.float64)}])
    assert mixed["count"].item() == 1.5 and mixed["kl"].item() == 0.75  # integers are averaged as floats
    assert mixed["count"].dtype == mixed["kl"].dtype == torch.float32  # logged as float32 whatever came in


def test_mu_2_logs_the_mean_of_both_iterations(tmp_path, tiny_path, shapes_manifest):
    module = make_module(tiny_path, num_iterations=2, beta=0.1, micro_batch_size=8)
    per_iteration, logged = [], {}
    update, log_rollout = module.policy_update, module.log_rollout

    def spy_update(*args):
        stats = update(*args)
        per_iteration.append({k: float(v) for k, v in stats.items()})
        return stats

    def spy_log(rollout, rewards, adv, stats, texts, records, normalized=None):
        logged.update({k: float(v) for k, v in stats.items()})
        logged["clipped"] = truncated(rollout.completion_ids, rollout.completion_mask,
                                      module.eos_token_ids).float().mean().item()
        return log_rollout(rollout, rewards, adv, stats, texts, records, normalized)

    module.policy_update, module.log_rollout = spy_update, spy_log
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=make_data(tiny_path, shapes_manifest))
    assert len(per_iteration) == 2 and trainer.global_step == 2  # one rollout, two optimizer steps
    first, second = per_iteration
    assert first["kl"] == 0.0 and second["kl"] > 0.0  # the second step starts from moved weights
    for key in ("loss", "kl", "clip_fraction"):
        expected = (first[key] + second[key]) / 2
        assert logged[key] == pytest.approx(expected)
        assert trainer.callback_metrics[f"train/{key}"].item() == pytest.approx(expected)
    assert trainer.callback_metrics["train/clipped_completions"].item() == pytest.approx(logged["clipped"])
