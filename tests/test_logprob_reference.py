"""Log-probs on every path against a plain full forward with ``torch.log_softmax(logits / T)`` (tests/reference.py).

Paths: the shared prefix (every micro-batch size, sdpa and eager), the repeated layout, with and without grad,
with precomputed video features and with pixels encoded in the forward (trainable tower), chunked
``selected_logprobs`` (one position per chunk, checkpointed under grad), and the module's old-policy and
reference passes. Temperature is 0.7 throughout: a pass that forgets it is off by far more than fp32 noise.
"""
import pytest
import torch
from peft import LoraConfig

from tests.reference import assert_close, reference_logprobs
from tests.video_batches import prompt_batch, random_completions
from vcap.grpo import logprobs as logprobs_module
from vcap.grpo.module import GRPOModule
from vcap.grpo.rollout import Rollout, chunked_logprobs, completion_mask, sequence_logprobs, vision_token_ids
from vcap.grpo.vision import encode_videos
from vcap.model.loading import load_policy, load_processor

MODEL = "vcap-tiny-sft"  # shipped: no build, and trained, so its distributions are far from uniform
G, WIDTH, T = 3, 6, 0.7


@pytest.fixture(scope="module")
def processor():
    return load_processor(MODEL)


@pytest.fixture(scope="module")
def prompts(processor):
    return prompt_batch(processor)


def completions(processor, n):
    tok = processor.tokenizer
    return random_completions(n, WIDTH, tok.eos_token_id, tok.pad_token_id)


def rollout_for(model, prompts, processor, features=True):
    ids, mask = completions(processor, len(prompts["input_ids"]) * G)
    return Rollout(prompts, G, ids, mask, encode_videos(model, prompts) if features else None)


def expected(model, rollout, temperature=T):
    with torch.no_grad():
        return reference_logprobs(model, rollout.prompts, rollout.completion_ids, rollout.completion_mask, G,
                                  temperature)


# (layout, micro-batch sizes) per (attention, video source): every size on the main path, a few elsewhere
NO_GRAD_PASSES = {("sdpa", "features"): [(True, 1), (True, 2), (True, 4), (True, 9), (False, 2), (False, 9)],
                  ("sdpa", "pixels"): [(True, 4), (False, 9)],
                  ("eager", "features"): [(True, 1), (True, 4)]}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_grad_passes_equal_the_full_forward(processor, prompts, attn):
    model = load_policy(MODEL, attn_implementation=attn).eval()
    rollouts = {"features": rollout_for(model, prompts, processor),
                "pixels": rollout_for(model, prompts, processor, features=False)}
    want = expected(model, rollouts["features"])
    kept = rollouts["features"].completion_mask.bool()
    with torch.no_grad():
        for (attn_, source), passes in NO_GRAD_PASSES.items():
            for shared, mb in passes if attn_ == attn else ():
                got = chunked_logprobs(model, rollouts[source], mb, T, shared_prefix=shared)
                assert_close(got[kept], want[kept], f"{source}, shared_prefix={shared}, micro_batch_size={mb}",
                             rel=1e-5)
    if attn == "sdpa":
        assert not torch.allclose(want[kept], expected(model, rollouts["features"], 1.0)[kept], atol=1e-2)


def test_completion_mask_keeps_tokens_up_to_the_first_eos_of_any_eos_id():
    ids = torch.tensor([[5, 2, 7, 2], [2, 2, 3, 4], [4, 5, 6, 7], [4, 9, 2, 8]])
    assert completion_mask(ids, [2]).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert completion_mask(ids, [2, 9]).tolist()[3] == [1, 1, 0, 0]


def test_vision_placeholders_are_the_tokens_a_completion_may_not_contain():
    model = load_policy(MODEL)
    assert vision_token_ids(model) == [3, 4, 5, 6]  # vision start/end, image and video placeholders (config.json)


def weighted_grads(model, logp_fn, weights):
    """Gradients of sum(weights * log-probs) accumulated over the passes ``logp_fn`` yields."""
    model.zero_grad(set_to_none=True)
    for rows, logp in logp_fn():
        (logp * weights[rows]).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("freeze_vision, attn", [(True, "sdpa"), (False, "eager")])
def test_gradients_equal_the_full_forward_gradients(processor, prompts, monkeypatch, freeze_vision, attn):
    model = load_policy(MODEL, attn_implementation=attn, freeze_vision=freeze_vision).train()
    rollout = rollout_for(model, prompts, processor)
    assert (rollout.video_features is None) == (not freeze_vision)
    n = rollout.completion_ids.shape[0]
    weights = torch.linspace(-1.0, 1.5, n * WIDTH).view(n, WIDTH) * rollout.completion_mask

    def full():
        yield slice(0, n), reference_logprobs(model, prompts, rollout.completion_ids, rollout.completion_mask, G, T)
    want = weighted_grads(model, full, weights)
    assert any(".visual." in name for name in want) == (not freeze_vision)

    def passes(mb, shared):
        def run():
            for start in range(0, n, mb):
                stop = min(start + mb, n)
                yield slice(start, stop), sequence_logprobs(model, rollout, start, stop, T, shared_prefix=shared)
        return run

    # one position per fp32 chunk: the chunked, checkpointed log-softmax path is the one that runs
    monkeypatch.setattr(logprobs_module.selected_logprobs, "__defaults__", (1.0, 600))
    for mb, shared in ((2, True), (4, True), (9, True), (9, False)):
        got = weighted_grads(model, passes(mb, shared), weights)
        assert got.keys() == want.keys()
        for name in want:
            assert_close(got[name], want[name], f"{name}: micro_batch_size={mb}, shared_prefix={shared}")


def perturbed(model, seed=3):
    """Moves the language model's weights so the policy differs from its reference copy."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def test_module_old_and_reference_passes_use_the_rollout_temperature(processor, prompts):
    module = GRPOModule(name_or_path=MODEL, num_generations=G, beta=0.1, num_iterations=2, micro_batch_size=4,
                        temperature=T, rewards={"format": 1.0})
    module.configure_model()
    reference_model = load_policy(MODEL).eval()
    perturbed(module.model)
    rollout = rollout_for(module.model, prompts, processor)
    old, ref = module.fixed_logprobs(rollout)
    kept = rollout.completion_mask.bool()
    assert_close(old[kept], expected(module.model, rollout)[kept], "old policy", rel=1e-5)
    assert_close(ref[kept], expected(reference_model, rollout)[kept], "reference", rel=1e-5)
    assert not torch.allclose(old[kept], ref[kept], atol=1e-3)

    module.hparams.num_iterations, module.hparams.beta = 1, 0.0  # neither pass is needed then
    assert module.fixed_logprobs(rollout) == (None, None)


def test_lora_reference_pass_is_the_base_model_at_the_rollout_temperature(processor, prompts):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
    module = GRPOModule(name_or_path=MODEL, num_generations=G, beta=0.2, micro_batch_size=5, temperature=T,
                        peft=lora, rewards={"format": 1.0})
    module.configure_model()
    assert module.ref_model is None
    rollout = rollout_for(module.model, prompts, processor)
    old, ref = module.fixed_logprobs(rollout)
    kept = rollout.completion_mask.bool()
    assert old is None
    assert_close(ref[kept], expected(load_policy(MODEL).eval(), rollout)[kept], "reference = base", rel=1e-5)
    assert not torch.allclose(ref[kept], expected(module.model, rollout)[kept], atol=1e-3)  # adapters matter


def test_selected_logprobs_default_temperature_and_chunk_size(monkeypatch):
    """Temperature 1 by default; each fp32 chunk holds at most ``chunk_elements // (batch * vocab)`` positions."""
    torch.manual_seed(0)
    logits, positions = torch.randn(2, 7, 5), torch.tensor([0, 1, 2, 4, 6])
    targets = torch.randint(0, 5, (2, 5))
    dense = logits[:, positions].log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sizes = []
    chunk = logprobs_module._chunk_logprobs

    def recording(logits_, pos, tgt, temperature):
        sizes.append(len(pos))
        return chunk(logits_, pos, tgt, temperature)
    monkeypatch.setattr(logprobs_module, "_chunk_logprobs", recording)
    for chunk_elements, expected in ((2 * 5, [1] * 5), (2 * 2 * 5, [2, 2, 1]), (2 * 3 * 5 + 9, [3, 2]), (1, [1] * 5)):
        sizes.clear()
        got = logprobs_module.selected_logprobs(logits, positions, targets, chunk_elements=chunk_elements)
        assert torch.allclose(got, dense, atol=1e-6) and sizes == expected, chunk_elements


def test_group_slots_by_hand():
    """Sequences 4..9 of groups of 3 (a micro-batch starting inside prompt 1's group): prompts 1, 1, 2, 2, 2, 3 in
    packed rows 0, 0, 1, 1, 1, 2, each sequence in its own slot counted from its row's first sequence."""
    from vcap.grpo.prefix import group_slots

    prompt, row, slot = group_slots(4, 10, 3)
    assert prompt.tolist() == [1, 1, 2, 2, 2, 3]
    assert row.tolist() == [0, 0, 1, 1, 1, 2]
    assert slot.tolist() == [0, 1, 0, 1, 2, 0]


def test_shared_prefix_with_an_unsupported_attention_names_both_flags():
    from vcap.grpo.prefix import check_shared_prefix_support
    from vcap.grpo.vision import core_model

    model = load_policy("vcap-tiny-sft")
    check_shared_prefix_support(model)  # sdpa: supported
    core_model(model).language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError) as err:
        check_shared_prefix_support(model)
    assert str(err.value) == ("model.init_args.shared_prefix needs attn_implementation in ['sdpa', 'eager'], got "
                              "'flash_attention_2'; pass --model.init_args.attn_implementation sdpa or "
                              "--model.init_args.shared_prefix false")
