"""Kernels per decode step (``vcap.grpo.kernel_count``, the counter of ``benchmarks/decode_kernels.py``) and the
step written for the compiler (``fused_decode_step``): the counter against functions counted by hand, the compiled
step's kernels per layer of the tiny Qwen2-VL pinned, and the fused step equal to the plain one bit for bit."""
import copy

import pytest
import torch

from tests.video_batches import prompt_batch
from vcap.grpo.decode import Sampling, decode_step, draw_noise, fusable, fused_decode_step
from vcap.grpo.decode_attention import decode_attention
from vcap.grpo.graphs import DecodeRunner
from vcap.grpo.kernel_count import compiled_kernels, decode_step_kernels, eager_kernels, wrapper_launches
from vcap.grpo.rollout import vision_token_ids
from vcap.grpo.vision import core_model, encode_videos
from vcap.model.loading import load_policy, load_processor

SFT = "vcap-tiny-sft"
SETTINGS = [Sampling(do_sample=False), Sampling(True, 0.7, 0.9, 3, 1.3, 0)]
IDS = ["greedy", "temperature-top_p-min_length-penalty"]
# What inductor (torch 2.14) makes of one decoder layer of fused_decode_step, counted by hand from its generated
# code: 7 GEMMs (q, k, v, o, gate, up, down) + 2 attention products = 9 extern kernels, and 5 of its own: the
# residual add + RMSNorm (twice), rotary of queries and keys + the cache write of keys and values, the masked
# softmax, SiLU * up. decode_step (the model's own forward) compiles to 16: rotate_half's concatenation of the
# queries is a kernel of its own and the values are written to the cache in one more.
FUSED_KERNELS_PER_LAYER = 14


def hand_counted(a, w, out):
    """Eager: mm, relu, mul, copy_, sort = 5 kernels (t, view, expand, empty_like launch none). Compiled: the mm (an
    extern kernel), relu * 2 and its copy into ``out`` (one kernel inductor writes), the sort (an ATen fallback) =
    3."""
    scratch = torch.empty_like(out)  # an allocation, never filled: no kernel
    h = a @ w.t().t()  # two views
    out.copy_(torch.relu(h) * 2)
    return torch.sort(a.view(-1).expand(2, -1), dim=-1).values, scratch


def test_the_eager_counter_counts_kernels_and_skips_views_and_allocations():
    a, w, out = torch.randn(8, 16), torch.randn(16, 4), torch.zeros(8, 4)
    assert eager_kernels(hand_counted, a, w, out) == {"mm": 1, "relu": 1, "mul": 1, "copy_": 1, "sort": 1}


GENERATED = '''
cpp_fused_relu_0 = async_compile.cpp_pybinding(['float*'], r"""kernel""")
triton_poi_fused_add_1 = async_compile.triton('triton_poi_fused_add_1', """kernel""")
async_compile.wait(globals())


class Runner:
    def call(self, args):
        arg0_1, arg1_1 = args
        buf0 = empty_strided_cpu((8, 4), (4, 1), torch.float32)
        buf1 = reinterpret_tensor(buf0, (4, 8), (8, 1), 0)  # alias
        assert_size_stride(arg0_1, (8, 4), (4, 1), 'input')
        extern_kernels.mm(arg0_1, arg1_1, out=buf0)
        cpp_fused_relu_0(buf0)
        triton_poi_fused_add_1.run(buf0, 32, stream=stream0)
        buf2 = torch.ops.aten.sort.stable(buf0, dim=-1)
        buf3 = aten.cumsum.default(buf0, 1)
        arg0_1.copy_(buf0)
        del buf0
        return (buf2[0], self.partition_0(buf1))

    def partition_0(self, buf1):
        extern_kernels.bmm(buf1, buf1, out=buf1)
        return buf1


def get_args():
    cpp_fused_relu_0(None)  # not a launch of call()
'''


def test_the_wrapper_counter_counts_each_launch_of_call_by_kind():
    """A hand-written wrapper in inductor's form (C++ and Triton kernels, a graph partition): allocations, views,
    asserts and ``del`` are not launches, nor are calls outside ``call`` and its partitions."""
    assert wrapper_launches(GENERATED) == {"generated": 2, "extern": 2, "aten": 2, "copy": 1}


@pytest.mark.traces
def test_the_compiled_counter_reads_inductors_generated_code():
    a, w, out = torch.randn(8, 16), torch.randn(16, 4), torch.zeros(8, 4)
    assert compiled_kernels(hand_counted, a, w, out) == {"extern": 1, "generated": 1, "aten": 1}
    assert torch.equal(out, torch.relu(a @ w) * 2)  # the compiled function really ran


def tiny_qwen2_vl(layers: int):
    from transformers import Qwen2VLForConditionalGeneration

    from vcap.model.tiny import build_config, build_tokenizer

    config = build_config(build_tokenizer(), layers=layers)
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval()


@pytest.mark.traces
def test_the_compiled_fused_step_launches_14_kernels_per_layer_of_the_tiny_qwen2_vl():
    """Per layer = step(2 layers) - step(1 layer), as benchmarks/decode_kernels.py counts it; more means a piece of
    the layer no longer fuses (a regression), fewer means this number and docs/speed.md need updating."""
    greedy = Sampling(do_sample=False)
    one, two = (decode_step_kernels(tiny_qwen2_vl(layers), greedy, step=fused_decode_step) for layers in (1, 2))
    assert two["compiled"] - one["compiled"] == FUSED_KERNELS_PER_LAYER, (one, two)
    assert two["eager"] - one["eager"] > 2 * FUSED_KERNELS_PER_LAYER  # eagerly every op is a launch


@pytest.fixture(scope="module")
def setup():
    processor = load_processor(SFT)
    model = load_policy(SFT).eval()
    return model, processor, prompt_batch(processor)


def rollout(model, prompts, sampling, eos, step, new_tokens=12):
    runner = DecodeRunner(step=step)
    ids = runner.generate(model, prompts, 2, new_tokens, eos, sampling, video_features=encode_videos(model, prompts),
                          suppress_tokens=vision_token_ids(model), generator=torch.Generator().manual_seed(5),
                          cache_len=prompts["input_ids"].shape[1] + 16)
    return runner, ids


@pytest.mark.parametrize("sampling", SETTINGS, ids=IDS)
def test_the_fused_step_computes_the_plain_steps_numbers_bit_for_bit(setup, sampling):
    """Eagerly, on unequal prompts and videos: the same completions, and after one more step from the same state
    every state tensor and every cache tensor equal bit for bit."""
    model, processor, prompts = setup
    eos = [processor.tokenizer.eos_token_id]
    assert fusable(model)
    runner, plain = rollout(model, prompts, sampling, eos, decode_step)
    assert torch.equal(rollout(model, prompts, sampling, eos, fused_decode_step)[1], plain)
    bucket = next(iter(runner.buckets.values()))
    assert all(layer.kv is not None and layer.keys.data_ptr() == layer.kv.data_ptr() for layer in bucket.cache.layers)
    draw_noise(bucket.state, torch.Generator().manual_seed(1))
    twin = copy.deepcopy((bucket.state, bucket.cache))
    with torch.no_grad(), decode_attention(model):
        decode_step(model, bucket.state, bucket.cache, sampling)
        fused_decode_step(model, *twin, sampling)
    for ours, theirs in zip(bucket.state.tensors(), twin[0].tensors()):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(bucket.cache.layers, twin[1].layers):
        assert torch.equal(ours.kv, theirs.kv) and torch.equal(ours.cumulative_length, theirs.cumulative_length)


def test_the_fused_step_under_bf16_autocast_writes_keys_and_values_of_two_dtypes(setup):
    """fp32 weights in ``bf16-mixed``: fp32 keys, bf16 values, so no joint tensor; each is written on its own."""
    model, processor, prompts = setup
    eos = [processor.tokenizer.eos_token_id]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runner, plain = rollout(model, prompts, SETTINGS[0], eos, decode_step, new_tokens=20)
        fused = rollout(model, prompts, SETTINGS[0], eos, fused_decode_step, new_tokens=20)[1]
    layer = next(iter(runner.buckets.values())).cache.layers[0]
    assert layer.keys.dtype == torch.float32 and layer.values.dtype == torch.bfloat16
    assert getattr(layer, "kv", None) is None
    assert torch.equal(fused, plain)


def test_a_model_the_fused_step_cannot_run_takes_its_own_forward(setup):
    """A decoder layer of another class (FSDP2's fully_shard makes one: its forward gathers the weights) sends the
    whole step through the model's forward: the same ATen ops as decode_step."""
    model, processor, prompts = setup
    eos = [processor.tokenizer.eos_token_id]
    layer = core_model(model).language_model.layers[1]
    cls = type(layer)
    runner, _ = rollout(model, prompts, SETTINGS[0], eos, decode_step, new_tokens=2)
    bucket = next(iter(runner.buckets.values()))
    twin = copy.deepcopy((bucket.state, bucket.cache))
    layer.__class__ = type("FSDP" + cls.__name__, (cls,), {})
    try:
        assert not fusable(model)
        with torch.no_grad(), decode_attention(model):
            plain = eager_kernels(decode_step, model, bucket.state, bucket.cache, SETTINGS[0])
            fallback = eager_kernels(fused_decode_step, model, *twin, SETTINGS[0])
    finally:
        layer.__class__ = cls
    assert fusable(model)
    assert fallback == plain
    assert torch.equal(twin[0].completions, bucket.state.completions)
