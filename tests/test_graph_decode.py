"""The decode step that CUDA graphs replay, checked on CPU where it runs eagerly: no host sync, no tensor built
from Python data, no graph break, every write into a persistent buffer; the engine's tokens against HF
``generate`` (LoRA merged into rollout copies, repetition penalty, minimum length); the reference untouched; the
inductor-compiled fused step against the plain loop (greedy and seeded samples). GPU-marked tests capture the step
and compare replays with the eager loop."""
import logging
from collections import Counter

import pytest
import torch
from peft import LoraConfig
from torch.utils._python_dispatch import TorchDispatchMode

from tests.video_batches import UNEQUAL, prompt_batch
from vcap.grpo.decode import Sampling, decode_step, draw_noise, fused_decode_step
from vcap.grpo.engines import HFEngine, VcapEngine
from vcap.grpo.graphs import DecodeRunner
from vcap.grpo.rollout import token_logprobs, vision_token_ids
from vcap.grpo.engines import sample_completions
from vcap.grpo.vision import encode_videos
from vcap.model.loading import load_policy, load_processor

SFT = "vcap-tiny-sft"
VIEWS = {"view", "_unsafe_view", "expand", "unsqueeze", "squeeze", "t", "transpose", "slice", "select", "permute",
         "reshape", "alias", "detach", "split", "as_strided", "unbind", "_reshape_alias"}


class OpLog(TorchDispatchMode):
    """Every aten op dispatched, and the storages that ops write in place, other than those of tensors the logged
    code created itself (temporaries live in a graph's private pool; only the inputs' addresses must hold)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.written: set[int] = set()
        self.created: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[func.overloadpacket.__name__] += 1
        for i, arg in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, torch.Tensor):
                storage = value.untyped_storage().data_ptr()
                if storage not in self.created:
                    self.written.add(storage)
        out = func(*args, **kwargs)
        aliases = any(r.alias_info is not None for r in func._schema.returns)
        if not aliases:  # a new tensor (views and in-place results alias their input)
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.created.add(t.untyped_storage().data_ptr())
        return out

    def compute_ops(self) -> int:
        return sum(n for name, n in self.ops.items() if name not in VIEWS)


@pytest.fixture(scope="module")
def setup():
    processor = load_processor(SFT)
    model = load_policy(SFT).eval()
    return model, processor, prompt_batch(processor)


def one_step(model, prompts, sampling, eos):
    """A runner after one rollout, and the op log of one more (eager) decode step of it."""
    runner = DecodeRunner()
    runner.generate(model, prompts, 2, 4, eos, sampling, video_features=encode_videos(model, prompts),
                    suppress_tokens=vision_token_ids(model), cache_len=prompts["input_ids"].shape[1] + 16)
    bucket = next(iter(runner.buckets.values()))
    log = OpLog()
    with torch.no_grad(), log:
        draw_noise(bucket.state)
        decode_step(model, bucket.state, bucket.cache, sampling)
    return runner, bucket, log


SETTINGS = [Sampling(do_sample=False), Sampling(True, 0.7, 0.9, 3, 1.3, 0)]


@pytest.mark.parametrize("sampling", SETTINGS, ids=["greedy", "temperature-top_p-min_length-penalty"])
def test_a_decode_step_never_syncs_with_the_host_nor_builds_tensors_from_python_data(setup, sampling):
    model, processor, prompts = setup
    _, _, log = one_step(model, prompts, sampling, [processor.tokenizer.eos_token_id])
    assert log.ops["_local_scalar_dense"] == 0  # .item() / bool(): a host sync on CUDA
    assert log.ops["lift_fresh"] == 0 and log.ops["lift_fresh_copy"] == 0  # a Python value copied to the device
    assert log.ops["nonzero"] == 0  # a data-dependent shape
    assert log.compute_ops() > 20  # the step really ran under the log


def test_a_decode_step_dispatches_no_more_ops_than_a_generate_step(setup):
    """The eager loop's CPU proxy for launch overhead: compute ops per decode step, vcap vs HF generate (greedy,
    one completion per prompt, minimum length on in both)."""
    model, processor, prompts = setup
    tok = processor.tokenizer

    def generate_ops(steps):
        log = OpLog()
        with torch.no_grad(), log:
            sample_completions(model, prompts, 1, steps, [tok.eos_token_id], tok.pad_token_id, do_sample=False,
                               min_new_tokens=steps)
        return log.compute_ops()

    per_generate_step = (generate_ops(14) - generate_ops(4)) / 10
    _, _, ours = one_step(model, prompts, Sampling(False, min_new_tokens=8, pad_token_id=tok.pad_token_id),
                          [tok.eos_token_id])
    assert ours.compute_ops() <= per_generate_step, (ours.compute_ops(), per_generate_step)


@pytest.mark.parametrize("sampling", SETTINGS, ids=["greedy", "temperature-top_p-min_length-penalty"])
def test_every_tensor_a_step_writes_is_a_persistent_buffer_of_the_runner(setup, sampling):
    """A CUDA graph replays writes to the addresses it captured: the step may write only into the runner's own
    buffers (state and static cache), and a second rollout of the same shape must reuse them in place."""
    model, processor, prompts = setup
    eos = [processor.tokenizer.eos_token_id]
    runner, bucket, log = one_step(model, prompts, sampling, eos)
    buffers = bucket.state.tensors() + [t for layer in bucket.cache.layers
                                        for t in (layer.keys, layer.values, layer.cumulative_length)]
    storages = {t.untyped_storage().data_ptr() for t in buffers}
    assert log.written and log.written <= storages
    before = [t.data_ptr() for t in buffers]
    other = prompt_batch(processor, UNEQUAL[::-1], seed=4)  # other prompts and videos, the same shape bucket
    cache_len = prompts["input_ids"].shape[1] + 16
    assert other["input_ids"].shape[1] < cache_len - 4
    runner.generate(model, other, 2, 4, eos, sampling, video_features=encode_videos(model, other),
                    suppress_tokens=vision_token_ids(model), cache_len=cache_len)
    assert len(runner.buckets) == 1
    assert [t.data_ptr() for t in buffers] == before


@pytest.mark.traces
def test_the_whole_step_compiles_without_a_graph_break(setup):
    model, processor, prompts = setup
    runner, bucket, _ = one_step(model, prompts, SETTINGS[1], [processor.tokenizer.eos_token_id])
    explained = torch._dynamo.explain(decode_step)(model, bucket.state, bucket.cache, SETTINGS[1])
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.fixture(scope="module")
def lora_model():
    model = load_policy(SFT, peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # adapters that change the text
    return model


@pytest.mark.parametrize("options", [{}, {"min_new_tokens": 6, "repetition_penalty": 1.6}])
@pytest.mark.parametrize("use_lora", [False, True])
def test_engine_greedy_equals_hf_generate_on_unequal_prompts(setup, lora_model, options, use_lora):
    model, processor, prompts = setup
    model = lora_model if use_lora else model
    tok = processor.tokenizer
    args = (model, prompts, 1, 30, [tok.eos_token_id], tok.pad_token_id)
    hf = HFEngine(sampling=options).generate(*args, do_sample=False)
    ours = VcapEngine(sampling=options).generate(*args, do_sample=False, video_features=encode_videos(model, prompts))
    assert len(set(map(tuple, hf.completion_ids.tolist()))) > 1
    assert torch.equal(ours.completion_ids, hf.completion_ids)
    if use_lora:
        base = load_policy(SFT).eval()
        plain = HFEngine(sampling=options).generate(base, prompts, 1, 30, [tok.eos_token_id], tok.pad_token_id,
                                                    do_sample=False)
        assert not torch.equal(plain.completion_ids, hf.completion_ids)  # the adapters change the text


def test_lora_rollout_copies_leave_the_reference_bit_identical_and_follow_the_adapters(setup):
    model, processor, prompts = setup
    tok = processor.tokenizer
    policy = load_policy(SFT, peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)).eval()
    base = load_policy(SFT).eval()
    before = {n: p.clone() for n, p in policy.named_parameters()}
    engine = VcapEngine()
    args = (prompts, 2, 10, [tok.eos_token_id], tok.pad_token_id)
    rollout = engine.generate(policy, *args, temperature=0.8, weights_version=0)
    assert engine._weights.copies  # the rollout really decoded from merged copies
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())  # nothing written into the model
    with torch.no_grad(), policy.disable_adapter():
        ref = token_logprobs(policy, rollout.inputs, rollout.completion_ids, rollout.completion_mask, 0.8)
    with torch.no_grad():
        expected = token_logprobs(base, rollout.inputs, rollout.completion_ids, rollout.completion_mask, 0.8)
    assert torch.equal(ref, expected)  # bit for bit

    with torch.no_grad():  # an optimizer step: the next version's rollouts must use the new adapters
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    greedy = dict(do_sample=False, video_features=encode_videos(policy, prompts))
    new = engine.generate(policy, prompts, 1, 30, [tok.eos_token_id], tok.pad_token_id, weights_version=1, **greedy)
    hf = HFEngine().generate(policy, prompts, 1, 30, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    assert torch.equal(new.completion_ids, hf.completion_ids)


@pytest.mark.traces
@pytest.mark.parametrize("use_lora", [False, True])
def test_the_inductor_compiled_step_gives_the_plain_steps_greedy_tokens(setup, lora_model, use_lora):
    """VcapEngine(compile=True) with inductor (the fused step, its kernels generated and run) against the plain
    eager loop, greedy, on unequal prompts; the LoRA policy decodes from merged copies."""
    model, processor, prompts = setup
    model = lora_model if use_lora else model
    tok = processor.tokenizer
    args = (model, prompts, 2, 30, [tok.eos_token_id], tok.pad_token_id)
    greedy = dict(do_sample=False, video_features=encode_videos(model, prompts), weights_version=0)
    plain = VcapEngine(cuda_graph=False).generate(*args, **greedy)
    compiled = VcapEngine(cuda_graph=False, compile=True).generate(*args, **greedy)
    assert len(set(map(tuple, plain.completion_ids.tolist()))) > 1
    assert torch.equal(compiled.completion_ids, plain.completion_ids)


@pytest.mark.traces
def test_the_inductor_compiled_step_gives_the_plain_steps_seeded_samples(setup):
    """The same runner shape and the same seed: the compiled fused step samples the plain step's tokens
    (temperature, top-p, minimum length and repetition penalty)."""
    model, processor, prompts = setup
    eos = [processor.tokenizer.eos_token_id]
    sampling = SETTINGS[1]
    compiled = torch.compile(fused_decode_step, backend="inductor", fullgraph=True, dynamic=False)
    out = []
    for step in (decode_step, compiled):
        runner = DecodeRunner(step=step)
        out.append(runner.generate(model, prompts, 2, 24, eos, sampling, video_features=encode_videos(model, prompts),
                                   suppress_tokens=vision_token_ids(model), generator=torch.Generator().manual_seed(9),
                                   cache_len=prompts["input_ids"].shape[1] + 32))
    assert any(len(set(map(tuple, group.tolist()))) == 2 for group in out[0].view(3, 2, -1))  # really sampled
    assert torch.equal(out[1], out[0])


def test_stop_checks_every_k_steps_give_the_same_completions(setup):
    model, processor, prompts = setup
    tok = processor.tokenizer
    features = encode_videos(model, prompts)
    out = []
    for interval in (1, 5):
        torch.manual_seed(3)
        out.append(VcapEngine(stop_check_interval=interval).generate(
            model, prompts, 2, 40, [tok.eos_token_id], tok.pad_token_id, temperature=0.9, video_features=features))
    assert out[0].completion_ids.shape[1] < 120  # every row ended before the budget
    assert torch.equal(out[0].completion_ids, out[1].completion_ids)


@pytest.mark.gpu
@pytest.mark.parametrize("do_sample", [False, True])
def test_cuda_graph_replays_equal_the_eager_loop(setup, do_sample):
    model, processor, prompts = setup
    model = model.cuda()
    prompts = {k: v.cuda() for k, v in prompts.items()}
    tok = processor.tokenizer
    features = encode_videos(model, prompts)
    engines = {"eager": VcapEngine(cuda_graph=False, stop_check_interval=8, length_bucket=64),
               "graph": VcapEngine(cuda_graph=True, stop_check_interval=8, length_bucket=64)}
    out = {}
    for name, engine in engines.items():
        for _ in range(2):  # the second rollout replays the graph captured by the first
            torch.manual_seed(7)
            out[name] = engine.generate(model, prompts, 4, 24, [tok.eos_token_id], tok.pad_token_id,
                                        do_sample=do_sample, temperature=0.8, video_features=features)
    assert engines["graph"].last_stats["cuda_graph"] == 1.0 and engines["eager"].last_stats["cuda_graph"] == 0.0
    assert torch.equal(out["graph"].completion_ids, out["eager"].completion_ids)


@pytest.mark.gpu
def test_a_failed_capture_warns_once_and_runs_eagerly(setup, caplog):
    model, processor, prompts = setup
    model = model.cuda()
    prompts = {k: v.cuda() for k, v in prompts.items()}
    tok = processor.tokenizer

    def syncing_step(model, state, cache, sampling):
        decode_step(model, state, cache, sampling)
        if bool(state.finished.any()):  # a host sync: not capturable
            pass

    runner = DecodeRunner(cuda_graph=True, step=syncing_step)
    with caplog.at_level(logging.WARNING):
        ids = runner.generate(model, prompts, 2, 12, [tok.eos_token_id], Sampling(False, pad_token_id=tok.pad_token_id))
    assert runner.last_stats["cuda_graph"] == 0.0
    assert "CUDA graph capture of the decode step failed" in caplog.text
    plain = DecodeRunner().generate(model, prompts, 2, 12, [tok.eos_token_id], Sampling(False, pad_token_id=tok.pad_token_id))
    assert torch.equal(ids, plain)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_grouped_decode_attention_equals_sdpa_over_repeated_heads(mask_kind):
    """One query token per row, 6 query heads per key head, padding masked: the same output as SDPA on the key
    and value heads repeated for every query head (what HF's sdpa attention computes)."""
    from vcap.grpo.decode_attention import grouped_query_attention

    gen = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, length, dim = 5, 12, 2, 37, 16
    q = torch.randn(rows, heads, 1, dim, generator=gen)
    k, v = (torch.randn(rows, kv_heads, length, dim, generator=gen) for _ in range(2))
    visible = torch.rand(rows, 1, 1, length, generator=gen) > 0.3
    visible[..., 0] = True
    mask = {"bool": visible, "float": torch.zeros(visible.shape).masked_fill(~visible, float("-inf")),
            "none": None}[mask_kind]
    repeat = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1), attn_mask=mask, scale=0.3)
    ours, _ = grouped_query_attention(None, q, k, v, mask, scaling=0.3)
    assert ours.shape == (rows, 1, heads, dim)
    assert torch.allclose(ours, expected.transpose(1, 2), atol=1e-5)
