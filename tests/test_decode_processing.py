"""The decode step's token choice without a model, by hand values and against HF's own logits processors: the
sampling options' bounds, the vocabulary masks, the repetition penalty on negative, small and large logits, the
minimum length at 1, top-p at an exact tie of probability mass, and the output length after a late stop check.
"""
import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from vcap.grpo.decode import DecodeState, Sampling, output_length, processed_scores, record

VOCAB = 6


def state_for(sampling: Sampling, rows: int = 2, never=(), eos=(5,), cache_len: int = 8) -> DecodeState:
    return DecodeState.allocate(rows, cache_len, VOCAB, sampling, list(never), list(eos), torch.device("cpu"))


@pytest.mark.parametrize("options, message", [
    (dict(temperature=0.0), "temperature must be > 0 when sampling, got 0.0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0, got 0.0"),
    (dict(min_new_tokens=-1), "min_new_tokens must be >= 0, got -1"),
])
def test_sampling_options_are_checked_at_their_bounds(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        Sampling(**options)
    # the values next to the bounds are fine; greedy decoding takes any temperature
    Sampling(temperature=1e-3, top_p=1.0, repetition_penalty=1e-3, min_new_tokens=0)
    Sampling(do_sample=False, temperature=0.0)


def test_vocabulary_masks_hold_exactly_the_ids_inside_the_vocabulary():
    # ids outside [0, VOCAB) (a tokenizer's added tokens past the model's vocabulary, or -1) are left out
    state = state_for(Sampling(), never=[0, VOCAB - 1, VOCAB, VOCAB + 3, -1], eos=[2, VOCAB])
    assert state.never.tolist() == [True, False, False, False, False, True]
    assert state.eos.tolist() == [False, False, True, False, False, False]


def test_repetition_penalty_by_hand_and_as_hf():
    sampling = Sampling(do_sample=False, repetition_penalty=2.0)
    state = state_for(sampling, rows=1)
    state.seen[0, :4] = True  # tokens 0-3 were seen; 4 and 5 were not
    logits = torch.tensor([[-3.0, 0.5, 4.0, 0.0, -1.0, 0.25]])
    # seen: negative x 2, positive / 2 (0.5 -> 0.25 too: a logit below 1 is still divided); unseen unchanged
    expected = [-6.0, 0.25, 2.0, 0.0, -1.0, 0.25]
    assert processed_scores(logits, state, sampling)[0].tolist() == expected
    hf = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[0, 1, 2, 3]]), logits.clone())
    assert hf[0].tolist() == expected


def test_min_new_tokens_one_bans_eos_at_the_first_step_only():
    sampling = Sampling(do_sample=False, min_new_tokens=1)
    state = state_for(sampling, rows=1, eos=[5])
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 9.0]])
    assert processed_scores(logits, state, sampling)[0, 5] == -math.inf  # step 0: no EOS yet
    record(state, torch.tensor([1]), sampling)
    assert processed_scores(logits, state, sampling)[0, 5] == 9.0  # step 1: allowed


def top_p_kept(probabilities: list[float], top_p: float) -> tuple[list[bool], list[bool]]:
    """Which tokens survive top-p: (vcap's step, HF's TopPLogitsWarper) on the same scores."""
    sampling = Sampling(top_p=top_p)
    logits = torch.tensor([probabilities]).log()
    ours = processed_scores(logits, state_for(sampling, rows=1), sampling)
    hf = TopPLogitsWarper(top_p)(None, logits.clone())
    return (ours > -math.inf)[0].tolist(), (hf > -math.inf)[0].tolist()


def test_top_p_drops_a_token_when_the_mass_before_it_reaches_top_p_exactly():
    # powers of two: every sum is exact. At top_p 0.75, 0.5 + 0.25 already reach it, so both 0.125s go; at
    # 0.5 the 0.5 alone does. A strict comparison would keep one more token than HF.
    probabilities = [0.125, 0.5, 0.25, 0.125, 0.0, 0.0]
    ours, hf = top_p_kept(probabilities, 0.75)
    assert ours == hf == [False, True, True, False, False, False]
    ours, hf = top_p_kept(probabilities, 0.5)
    assert ours == hf == [False, True, False, False, False, False]
    ours, hf = top_p_kept(probabilities, 0.8)  # between the sums: 0.5, 0.25 and one of the tied 0.125s
    assert sum(ours) == sum(hf) == 3 and ours[1] and ours[2]


def test_output_length_stops_at_the_last_eos_when_every_row_ended_between_stop_checks():
    sampling = Sampling(do_sample=False)
    state = state_for(sampling, rows=2, eos=[5])
    for tokens in ([1, 5], [5, 0], [2, 0], [3, 0]):  # row 1 ends at step 1, row 0 at step 2; then 2 padded steps
        record(state, torch.tensor(tokens), sampling)
    assert state.finished.tolist() == [True, True] and int(state.step) == 4
    assert output_length(state) == 2
    unfinished = state_for(sampling, rows=2, eos=[5])
    record(unfinished, torch.tensor([5, 1]), sampling)
    assert output_length(unfinished) == 1  # a row still open: every step taken
    assert output_length(state_for(sampling)) == 0


def attention_by_hand(q, k, v, visible, scale):
    """Per query head h, key/value head h // (heads / kv_heads): softmax(q k^T * scale, masked) v, in float64."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k, v = (t.double().repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, -math.inf)
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)  # (rows, q_len, heads, d)


def test_grouped_query_attention_by_hand():
    from vcap.grpo.decode_attention import grouped_query_attention

    gen = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, dim, length = 2, 4, 2, 8, 5
    q = torch.randn(rows, heads, 1, dim, generator=gen)
    k, v = (torch.randn(rows, kv_heads, length, dim, generator=gen) for _ in range(2))
    visible = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool).view(rows, 1, 1, length)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = False, heads // kv_heads
    for scaling, scale in ((None, dim ** -0.5), (0.3, 0.3)):
        want = attention_by_hand(q, k, v, visible, scale)
        for mask in (visible, torch.zeros(visible.shape).masked_fill(~visible, -math.inf)):  # bool and additive
            got, _ = grouped_query_attention(module, q, k, v, mask, scaling=scaling)
            assert got.shape == (rows, 1, heads, dim)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # two query tokens (not a decode step) go to sdpa, with the same result
    q2 = torch.randn(rows, heads, 2, dim, generator=gen)
    got, _ = grouped_query_attention(module, q2, k, v, visible, scaling=0.3)
    torch.testing.assert_close(got.double(), attention_by_hand(q2, k, v, visible, 0.3), rtol=1e-5, atol=1e-6)
