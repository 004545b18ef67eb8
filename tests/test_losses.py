"""GRPO math against numbers computed by hand."""
import math

import pytest
import torch

from vcap.grpo.losses import (LOSS_AGGREGATIONS, clipped_surrogate, get_loss_aggregation, group_advantages, grpo_loss,
                              k3_kl)


def test_group_advantages_by_hand():
    # groups [1, 0] and [0, 1]: mean 0.5, sample std sqrt(0.5) -> advantages +-0.5/0.70711 = +-0.70711
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), num_generations=2, eps=0.0)
    assert torch.allclose(adv.advantages, torch.tensor([1, -1, -1, 1]) / math.sqrt(2), atol=1e-6)
    assert adv.zero_std.tolist() == [False, False]


def test_group_advantages_three_members():
    # [3, 1, 2]: mean 2, sample std 1 -> [1, -1, 0] (eps 1e-4 shrinks by 1/(1+1e-4))
    adv = group_advantages(torch.tensor([3.0, 1.0, 2.0]), num_generations=3)
    assert torch.allclose(adv.advantages, torch.tensor([1.0, -1.0, 0.0]) / 1.0001, atol=1e-6)


def test_zero_std_group_gets_zero_advantage_and_is_reported():
    adv = group_advantages(torch.tensor([2.0, 2.0, 0.0, 1.0]), num_generations=2)
    assert adv.advantages[:2].tolist() == [0.0, 0.0]
    assert adv.zero_std.tolist() == [True, False]
    assert adv.zero_std.float().mean().item() == 0.5


def test_equal_rewards_whose_float_mean_rounds_away_still_get_zero_advantage():
    # eight float32 0.91s: their float mean is not 0.91 (r - mean = 6e-8), so a std threshold saw a spread and gave
    # advantages of (r - mean) / (6e-8 + 1e-4) instead of 0
    rewards = torch.full((8,), 0.91)
    assert (rewards - rewards.sum() / 8).abs().max() > 0  # the rounding this guards against
    for scale in ("group", "none"):
        adv = group_advantages(torch.cat([rewards, torch.tensor([0.0, 1.0] * 4)]), 8, scale=scale)
        assert adv.advantages[:8].tolist() == [0.0] * 8 and adv.zero_std.tolist() == [True, False]
        assert adv.group_std[0].item() == 0.0
    # one member left out of its group (valid false) does not make the others' equal rewards a spread
    adv = group_advantages(torch.tensor([0.91, 0.91, 0.91, 5.0]), 4, valid=torch.tensor([True, True, True, False]))
    assert adv.advantages.tolist() == [0.0] * 4 and adv.zero_std.tolist() == [True]


def test_scale_none_only_centres():
    adv = group_advantages(torch.tensor([3.0, 1.0]), num_generations=2, scale="none")
    assert adv.advantages.tolist() == [1.0, -1.0]


def test_excluded_samples_leave_group_statistics():
    # third member excluded: group [4, 0] -> mean 2, std sqrt(8) = 2.8284; excluded gets 0
    adv = group_advantages(torch.tensor([4.0, 0.0, 100.0]), 3, eps=0.0, valid=torch.tensor([True, True, False]))
    assert torch.allclose(adv.advantages, torch.tensor([2 / math.sqrt(8), -2 / math.sqrt(8), 0.0]), atol=1e-6)


def test_bad_shapes_and_names_raise():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="valid"):
        group_advantages(torch.ones(4), 2, scale="batch")
    with pytest.raises(ValueError, match=r"valid: \['dapo', 'dr_grpo', 'grpo'\]"):
        get_loss_aggregation("ppo")


def test_clipped_surrogate_all_four_quadrants():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, epsilon=0.2)
    # r=1.5,A=+1 -> -1.2 (clipped); r=1.5,A=-1 -> +1.5; r=0.5,A=+1 -> -0.5; r=0.5,A=-1 -> +0.8 (clipped)
    assert torch.allclose(loss, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_epsilon_high_widens_upper_clip_only():
    loss, _ = clipped_surrogate(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]),
                                epsilon=0.2, epsilon_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8]]), atol=1e-6)


def test_k3_kl_by_hand():
    # pi = 0.5, ref = 0.25: delta = log 0.5; exp(delta) - delta - 1 = 0.5 + 0.693147 - 1
    kl = k3_kl(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    assert torch.allclose(kl, torch.tensor([0.5 + math.log(2) - 1, 0.0]), atol=1e-6)


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("loss_type, expected", [("grpo", 3.0), ("dapo", 2.5), ("dr_grpo", 1.25)])
def test_aggregations_by_hand(loss_type, expected):
    # grpo: mean(2, 4) = 3; dapo: 10 / 4 tokens = 2.5; dr_grpo: 10 / (2 seqs * L=4) = 1.25
    value = LOSS_AGGREGATIONS[loss_type](PER_TOKEN, MASK, max_completion_length=4)
    assert value.item() == pytest.approx(expected)


@pytest.mark.parametrize("loss_type", sorted(LOSS_AGGREGATIONS))
def test_micro_batches_sum_to_full_batch_loss(loss_type):
    torch.manual_seed(0)
    logp, old, ref = torch.randn(6, 5) * 0.1, torch.randn(6, 5) * 0.1, torch.randn(6, 5) * 0.1
    adv, mask = torch.randn(6), (torch.rand(6, 5) > 0.3).float()
    kw = dict(loss_type=loss_type, beta=0.04, epsilon=0.2, max_completion_length=5)
    full, full_stats = grpo_loss(logp, old, ref, adv, mask, **kw)
    totals = dict(total_sequences=6, total_tokens=mask.sum().item())
    parts = [grpo_loss(logp[s:s + 2], old[s:s + 2], ref[s:s + 2], adv[s:s + 2], mask[s:s + 2], **kw, **totals)
             for s in (0, 2, 4)]
    assert sum(p[0] for p in parts).item() == pytest.approx(full.item(), abs=1e-6)
    assert sum(p[1]["kl"] for p in parts).item() == pytest.approx(full_stats["kl"].item(), abs=1e-6)


def test_grpo_loss_on_policy_value_and_gradient():
    # ratio 1 everywhere: loss = -mean_seq(mean_tok(A)) + beta * KL; gradient of -A*ratio w.r.t. logp is -A
    logp = torch.zeros(2, 2, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logp, logp.detach(), None, adv, torch.ones(2, 2), loss_type="grpo", beta=0.0)
    assert loss.item() == pytest.approx(0.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))
    assert stats["clip_fraction"].item() == 0.0 and "kl" not in stats


def test_beta_without_reference_raises():
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.ones(1), torch.ones(1, 1), beta=0.1)
