"""The GRPO loss, its KL term, its gradient and the advantages against a plain per-token reference.

The reference below is written from the formulas with Python floats and loops (no vcap code, no torch autograd):
its gradient is derived by hand, so a wrong sign, a wrong normaliser or a clipping bound on the wrong side shows
up as a mismatch in the value or in ``logp.grad``. Non-default settings are the point: beta > 0, epsilon_high,
every loss_type, several micro-batch sizes, scale 'none' and excluded samples.
"""
import math
import statistics

import pytest
import torch

from vcap.grpo.losses import clipped_surrogate, group_advantages, grpo_loss, k3_kl


def reference_advantages(rewards, num_generations, scale="group", eps=1e-4, valid=None):
    """(advantages, zero_std, group_std) with the statistics module: the sample std of the valid members."""
    valid = [True] * len(rewards) if valid is None else valid
    advantages, zero_std, stds = [], [], []
    for g in range(0, len(rewards), num_generations):
        members = [r for r, ok in zip(rewards[g:g + num_generations], valid[g:g + num_generations]) if ok]
        mean = statistics.fmean(members) if members else 0.0
        std = statistics.stdev(members) if len(members) > 1 else 0.0
        stds.append(std)
        zero_std.append(std < 1e-8)
        for r, ok in zip(rewards[g:g + num_generations], valid[g:g + num_generations]):
            if not ok or std < 1e-8:
                advantages.append(0.0)
            else:
                advantages.append((r - mean) / (std + eps) if scale == "group" else r - mean)
    return advantages, zero_std, stds


def reference_token(lp, old, ref, adv, eps, eps_high, beta):
    """Per-token loss and its derivative d loss / d lp, derived by hand.

    PPO: loss = -min(r A, clip(r, 1 - eps, 1 + eps_high) A), r = exp(lp - old). For A > 0 the clip only binds
    above (r > 1 + eps_high: constant, zero gradient), for A < 0 only below (r < 1 - eps). k3 KL:
    k = exp(ref - lp) - (ref - lp) - 1, dk/dlp = 1 - exp(ref - lp).
    """
    r = math.exp(lp - old)
    if adv >= 0:
        clipped = adv > 0 and r > 1 + eps_high  # with A = 0 no bound changes the objective
        loss, grad = -adv * min(r, 1 + eps_high), 0.0 if clipped else -adv * r
    else:
        clipped = r < 1 - eps
        loss, grad = -adv * max(r, 1 - eps), 0.0 if clipped else -adv * r
    kl = math.exp(ref - lp) - (ref - lp) - 1
    return loss + beta * kl, grad + beta * (1 - math.exp(ref - lp)), clipped, kl


def reference_loss(lp, old, ref, adv, mask, loss_type, beta, eps, eps_high, max_len):
    """(loss, d loss / d lp, clip fraction, mean KL) of the whole batch, token weights spelled out per loss type."""
    n = len(lp)
    tokens = sum(sum(row) for row in mask)
    loss, clipped_count, kl_sum = 0.0, 0, 0.0
    grad = [[0.0] * len(row) for row in lp]
    for i in range(n):
        length = max(sum(mask[i]), 1)
        weight = {"grpo": 1 / (n * length), "dapo": 1 / tokens, "dr_grpo": 1 / (n * max_len)}[loss_type]
        for t in range(len(lp[i])):
            if not mask[i][t]:
                continue
            value, d, clipped, kl = reference_token(lp[i][t], old[i][t], ref[i][t], adv[i], eps, eps_high, beta)
            loss += weight * value
            grad[i][t] = weight * d
            clipped_count += clipped
            kl_sum += kl
    return loss, grad, clipped_count / tokens, kl_sum / tokens


def batch(seed=0, n=6, length=5):
    """Ratios spread over [0.5, 1.6] so both clip bounds bind; mixed-sign advantages; ragged masks."""
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(n, length, generator=gen, dtype=torch.float64) * 0.5 - 1.5
    ratio = 0.5 + 1.1 * torch.rand(n, length, generator=gen, dtype=torch.float64)
    logp = old + ratio.log()
    ref = logp + torch.randn(n, length, generator=gen, dtype=torch.float64) * 0.4
    adv = torch.tensor([1.3, -0.7, 0.4, -1.9, 0.0, 2.2], dtype=torch.float64)[:n]
    lengths = torch.tensor([5, 5, 4, 2, 3, 5])[:n]
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).double()
    return logp, old, ref, adv, mask


def as_lists(*tensors):
    return [t.tolist() for t in tensors]


def test_reference_batch_exercises_every_clip_region():
    logp, old, _, adv, mask = batch()
    ratio = (logp - old).exp()
    a = adv.unsqueeze(1).expand_as(ratio)
    on = mask.bool()
    assert ((a > 0) & (ratio > 1.3) & on).any() and ((a > 0) & (ratio > 1.2) & (ratio < 1.3) & on).any()
    assert ((a < 0) & (ratio < 0.8) & on).any() and ((a < 0) & (ratio > 1.2) & on).any()


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta, eps, eps_high", [(0.0, 0.2, None), (0.1, 0.2, 0.3), (0.5, 0.1, 0.28)])
def test_loss_value_gradient_and_stats_equal_the_reference(loss_type, beta, eps, eps_high):
    logp, old, ref, adv, mask = batch()
    logp.requires_grad_(True)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, loss_type=loss_type, beta=beta, epsilon=eps,
                            epsilon_high=eps_high, max_completion_length=7)
    loss.backward()
    want, want_grad, want_clip, want_kl = reference_loss(*as_lists(logp.detach(), old, ref, adv, mask), loss_type,
                                                         beta, eps, eps if eps_high is None else eps_high, 7)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(logp.grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    assert stats["clip_fraction"].item() == pytest.approx(want_clip, rel=1e-12)
    assert want_clip > 0
    if beta:
        assert stats["kl"].item() == pytest.approx(want_kl, rel=1e-12)
    else:
        assert "kl" not in stats


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("micro_batch_size", [1, 2, 4, 5])
def test_micro_batches_with_batch_totals_equal_the_reference(loss_type, micro_batch_size):
    """Each micro-batch normalised by the whole batch's totals: the losses and gradients add up to the reference
    (not merely to the same function on the full batch)."""
    logp, old, ref, adv, mask = batch(seed=1)
    logp.requires_grad_(True)
    totals = dict(total_sequences=6, total_tokens=mask.sum().item())
    loss = kl = clip = 0.0
    for start in range(0, 6, micro_batch_size):
        part = slice(start, start + micro_batch_size)
        value, stats = grpo_loss(logp[part], old[part], ref[part], adv[part], mask[part], loss_type=loss_type,
                                 beta=0.2, epsilon=0.15, epsilon_high=0.25, max_completion_length=6, **totals)
        value.backward()
        loss, kl, clip = loss + value.item(), kl + stats["kl"].item(), clip + stats["clip_fraction"].item()
    want, want_grad, want_clip, want_kl = reference_loss(*as_lists(logp.detach(), old, ref, adv, mask), loss_type,
                                                         0.2, 0.15, 0.25, 6)
    assert loss == pytest.approx(want, rel=1e-12)
    assert torch.allclose(logp.grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    assert kl == pytest.approx(want_kl, rel=1e-12) and clip == pytest.approx(want_clip, rel=1e-12)


def test_kl_term_by_hand_value_and_gradient():
    # pi = 0.5, ref = 0.25: k3 = 0.5 - ln 0.5 - 1 = 0.5 + ln 2 - 1, d/dlp = 1 - 0.25 / 0.5 = 0.5.
    # pi = 0.2, ref = 0.4: k3 = 2 - ln 2 - 1, d/dlp = 1 - 0.4 / 0.2 = -1. Advantage 0: only the KL term is left,
    # and the two k3 values add up to 0.5, so dapo's token mean with beta 0.3 is 0.3 * 0.5 / 2.
    logp = torch.log(torch.tensor([[0.5, 0.2]], dtype=torch.float64)).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.4]], dtype=torch.float64))
    kl = k3_kl(logp, ref)
    assert kl[0].tolist() == pytest.approx([0.5 + math.log(2) - 1, 2 - math.log(2) - 1], rel=1e-12)
    loss, stats = grpo_loss(logp, logp.detach(), ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2),
                            loss_type="dapo", beta=0.3)
    loss.backward()
    assert loss.item() == pytest.approx(0.3 * 0.5 / 2, rel=1e-12)
    assert logp.grad[0].tolist() == pytest.approx([0.3 * 0.5 / 2, 0.3 * -1.0 / 2], rel=1e-12)
    assert stats["kl"].item() == pytest.approx(0.5 / 2, rel=1e-12)


def test_clip_mask_marks_exactly_the_tokens_whose_bound_binds():
    logp, old, ref, adv, mask = batch(seed=2)
    _, was_clipped = clipped_surrogate(logp, old, adv, epsilon=0.1, epsilon_high=0.35)
    want = [[float(reference_token(lp, o, 0.0, a, 0.1, 0.35, 0.0)[2]) for lp, o in zip(row_lp, row_old)]
            for row_lp, row_old, a in zip(logp.tolist(), old.tolist(), adv.tolist())]
    assert was_clipped.tolist() == want


REWARDS = [1.0, 0.0, 3.0, 2.0,   # plain group
           5.0, 5.0, 5.0, 5.0,   # all equal: zero std, zero advantage
           0.5, 2.5, 9.0, 1.0,   # 9.0 is excluded (a failed judge): it must not move the mean or std
           4.0, 7.0, 1.0, 1.0]   # only one valid member: std 0, advantage 0
VALID = [True] * 8 + [True, True, False, True] + [False, True, False, False]


@pytest.mark.parametrize("scale", ["group", "none"])
@pytest.mark.parametrize("eps", [1e-4, 0.5])
def test_advantages_equal_the_statistics_module(scale, eps):
    out = group_advantages(torch.tensor(REWARDS), 4, scale=scale, eps=eps, valid=torch.tensor(VALID))
    want, zero_std, stds = reference_advantages(REWARDS, 4, scale, eps, VALID)
    assert out.advantages.tolist() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert out.zero_std.tolist() == zero_std == [False, True, False, True]
    assert out.group_std.tolist() == pytest.approx(stds, rel=1e-6)


def test_advantages_without_valid_mask_use_every_member():
    out = group_advantages(torch.tensor(REWARDS), 2, eps=0.0)
    want, _, _ = reference_advantages(REWARDS, 2, "group", 0.0)
    assert out.advantages.tolist() == pytest.approx(want, rel=1e-6)
    assert want[10] != 0.0  # without a mask the 9.0 counts


def test_advantage_eps_by_hand():
    # [3, 1, 2]: mean 2, sample std 1 -> (r - 2) / (1 + 0.5)
    out = group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, eps=0.5)
    assert out.advantages.tolist() == pytest.approx([1 / 1.5, -1 / 1.5, 0.0])


def test_defaults_are_grpo_epsilon_0_2_no_kl_and_256_tokens():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]], dtype=torch.float64))
    old, ref = torch.zeros(1, 3, dtype=torch.float64), torch.full((1, 3), -1.0, dtype=torch.float64)
    mask = torch.ones(1, 3)
    adv = torch.tensor([1.0], dtype=torch.float64)
    per_token, _ = clipped_surrogate(logp, old, adv)
    assert per_token[0].tolist() == pytest.approx([-1.2, -0.5, -1.1])  # clipped at 1 + 0.2 above
    per_token, _ = clipped_surrogate(logp, old, -adv)
    assert per_token[0].tolist() == pytest.approx([1.5, 0.8, 1.1])  # and at 1 - 0.2 below
    loss, stats = grpo_loss(logp, old, ref, adv, mask)
    assert loss.item() == pytest.approx((-1.2 - 0.5 - 1.1) / 3) and "kl" not in stats  # grpo, beta 0
    loss, _ = grpo_loss(logp, old, ref, adv, mask, loss_type="dr_grpo")
    assert loss.item() == pytest.approx((-1.2 - 0.5 - 1.1) / 256)  # one sequence x 256 tokens


def test_beta_without_reference_log_probs_names_the_problem():
    with pytest.raises(ValueError, match=r"^beta != 0 needs reference log-probs$"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.ones(1), torch.ones(1, 1), beta=0.1)


def test_token_mean_of_one_token_none_and_a_fractional_share():
    one = torch.tensor([[2.5, 9.0]], dtype=torch.float64)
    assert grpo_loss(one, one, None, torch.zeros(1, dtype=torch.float64), torch.tensor([[1.0, 0.0]]),
                     loss_type="dapo")[1]["clip_fraction"].item() == 0.0
    from vcap.grpo.losses import token_mean

    assert token_mean(one, torch.tensor([[1.0, 0.0]])).item() == 2.5  # one token: divided by 1
    assert token_mean(one, torch.zeros(1, 2)).item() == 0.0  # no token: 0, not nan
    # a rank's share of the global token count (2 ranks, 7 tokens) is used exactly, in the loss's precision
    assert token_mean(one, torch.ones(1, 2), total_tokens=7 / 3).item() == pytest.approx(11.5 * 3 / 7, rel=1e-13)
