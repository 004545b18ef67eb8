"""The shared-prefix engine equals the repeated layout: log-probs and every parameter's gradient (fp32, CPU).

Videos differ in size and prompts in length within one batch, completions end early, and every micro-batch size
1..N is tried, so a wrong pixel-row offset, position, mask or slot mapping shows up as a mismatch.
"""
import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.video_batches import prompt_batch, random_completions
from vcap.grpo.logprobs import selected_logprobs
from vcap.grpo.prefix import check_shared_prefix_support, group_slots
from vcap.grpo.rollout import Rollout, chunked_logprobs, sequence_logprobs
from vcap.grpo.vision import encode_videos, tower_is_frozen
from vcap.model.loading import load_policy, load_processor

G, WIDTH = 3, 6


def assert_close(actual, expected, what="", rel=1e-5):
    scale = expected.abs().max().clamp(min=1e-12)
    err = (actual - expected).abs().max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module")
def processor(tiny_path):
    return load_processor(str(tiny_path))


@pytest.fixture(scope="module")
def prompts(processor):
    return prompt_batch(processor)


def make_rollout(model, prompts, processor, with_features=True):
    tok = processor.tokenizer
    ids, mask = random_completions(len(prompts["input_ids"]) * G, WIDTH, tok.eos_token_id, tok.pad_token_id)
    features = encode_videos(model, prompts) if with_features else None
    return Rollout(prompts, G, ids, mask, features)


def logprobs_and_grads(model, rollout, micro_batch_size, shared_prefix):
    """Per-token log-probs and the gradients of a weighted token sum, accumulated over micro-batches."""
    n = rollout.completion_ids.shape[0]
    weights = torch.linspace(-1.0, 1.0, n * WIDTH).view(n, WIDTH) * rollout.completion_mask
    model.zero_grad(set_to_none=True)
    parts = []
    for start in range(0, n, micro_batch_size):
        stop = min(start + micro_batch_size, n)
        logp = sequence_logprobs(model, rollout, start, stop, shared_prefix=shared_prefix)
        (logp * weights[start:stop]).sum().backward()
        parts.append(logp.detach())
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return torch.cat(parts), grads


def assert_same(model, rollout, micro_batch_sizes):
    mask = rollout.completion_mask.bool()
    expected, expected_grads = logprobs_and_grads(model, rollout, len(mask), shared_prefix=False)
    assert expected_grads
    for mb in micro_batch_sizes:
        logp, grads = logprobs_and_grads(model, rollout, mb, shared_prefix=True)
        assert_close(logp[mask], expected[mask], f"log-probs, micro_batch_size={mb}")
        assert grads.keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            assert_close(grads[name], grad, f"grad {name}, micro_batch_size={mb}")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_full_model_frozen_tower_matches_repeated_for_every_micro_batch(tiny_path, processor, prompts, attn,
                                                                       checkpointing):
    model = load_policy(str(tiny_path), attn_implementation=attn, gradient_checkpointing=checkpointing).train()
    rollout = make_rollout(model, prompts, processor)
    assert rollout.video_features is not None
    assert_same(model, rollout, range(1, len(rollout.completion_ids) + 1))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainable_tower_gets_the_same_gradient(tiny_path, processor, prompts, checkpointing):
    model = load_policy(str(tiny_path), freeze_vision=False, gradient_checkpointing=checkpointing).train()
    assert not tower_is_frozen(model) and encode_videos(model, prompts) is None
    rollout = make_rollout(model, prompts, processor)
    expected, grads = logprobs_and_grads(model, rollout, 9, shared_prefix=False)
    assert any(".visual." in name for name in grads)
    assert_same(model, rollout, [1, 2, 3, 4, 9])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_policy_and_reference_with_adapters_disabled(tiny_path, processor, prompts, checkpointing):
    torch.manual_seed(1)
    base = load_policy(str(tiny_path), gradient_checkpointing=checkpointing).train()
    model = load_policy(str(tiny_path), gradient_checkpointing=checkpointing,
                        peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)).train()
    rollout = make_rollout(model, prompts, processor)
    assert_same(model, rollout, [1, 2, 4, 5, 9])
    with torch.no_grad():
        with model.disable_adapter():
            reference = chunked_logprobs(model, rollout, 4, shared_prefix=True)
            repeated = chunked_logprobs(model, rollout, 9, shared_prefix=False)
        policy = chunked_logprobs(model, rollout, 4, shared_prefix=True)
        base_logp = chunked_logprobs(base, rollout, 4, shared_prefix=True)
    mask = rollout.completion_mask.bool()
    assert_close(reference[mask], repeated[mask], "reference")
    assert torch.equal(reference, base_logp)  # adapters off is the base model, bit for bit
    assert not torch.allclose(policy[mask], reference[mask])  # the random adapters do change the policy


def test_precomputed_video_features_equal_encoding_in_the_forward(tiny_path, processor, prompts):
    model = load_policy(str(tiny_path)).eval()
    with_features = make_rollout(model, prompts, processor, with_features=True)
    from_pixels = make_rollout(model, prompts, processor, with_features=False)
    mask = with_features.completion_mask.bool()
    with torch.no_grad():
        for shared in (True, False):
            a = chunked_logprobs(model, with_features, 4, shared_prefix=shared)
            b = chunked_logprobs(model, from_pixels, 4, shared_prefix=shared)
            assert_close(a[mask], b[mask], f"shared_prefix={shared}")


def test_group_slots_map_sequences_to_rows_and_slots():
    prompt, row, slot = group_slots(2, 8, 3)  # sequences 2..7 of groups of 3
    assert prompt.tolist() == [0, 1, 1, 1, 2, 2]
    assert row.tolist() == [0, 1, 1, 1, 2, 2]
    assert slot.tolist() == [0, 0, 1, 2, 0, 1]


def test_selected_logprobs_equal_log_softmax_in_chunks_with_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, requires_grad=True)
    positions, targets = torch.tensor([0, 2, 3, 6]), torch.randint(0, 11, (2, 4))
    dense = (logits[:, positions] / 0.7).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    chunked = selected_logprobs(logits, positions, targets, temperature=0.7, chunk_elements=22)  # 1 position a chunk
    assert torch.allclose(chunked, dense, atol=1e-6)
    (g_dense,) = torch.autograd.grad(dense.sum(), logits)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    assert torch.allclose(g_chunked, g_dense, atol=1e-6)


def test_unsupported_attention_is_a_clear_error(tiny_path):
    model = load_policy(str(tiny_path))
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="shared_prefix"):
        check_shared_prefix_support(model)
