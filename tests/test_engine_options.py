"""The rollout engines' own settings: VcapEngine's option checks, defaults, graph and runner choices, and what
HFEngine hands to HF ``generate`` (recorded around the real call on the tiny model), with its rollout stats.
"""
import inspect
import pickle
from contextlib import contextmanager

import pytest
import torch

from tests.video_batches import prompt_batch
from vcap.grpo.decode import decode_step, fused_decode_step
from vcap.grpo.engines import HFEngine, VcapEngine
from vcap.grpo.rollout import vision_token_ids
from vcap.grpo.vision import encode_videos
from vcap.model.loading import load_policy, load_processor


@pytest.mark.parametrize("options, message", [
    (dict(length_bucket=0), "length_bucket must be >= 1"),
    (dict(stop_check_interval=0), r"stop_check_interval must be >= 1 \(or null: 8 on CUDA, 1 elsewhere\)"),
    (dict(compile=True, compile_mode="reduce-overhead"),
     r"compile_mode 'reduce-overhead' makes CUDA graphs of its own; vcap captures the decode step itself "
     r"\(cuda_graph\): leave compile_mode null, or set cuda_graph: false"),
    (dict(batch_buckets=[]), "batch_buckets must be a list of prompt counts >= 1"),
    (dict(batch_buckets=[4, 0]), "batch_buckets must be a list of prompt counts >= 1"),
])
def test_vcap_engine_options_are_checked_with_one_line_each(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        VcapEngine(**options)


def test_vcap_engine_defaults_bounds_and_copies():
    engine = VcapEngine()
    assert engine.batch_buckets == [1, 2, 4, 8, 16, 32, 64] and engine.length_bucket == 256
    assert engine.compile_backend == "inductor" and engine.cuda_graph is None and engine.merge_lora is None
    edge = VcapEngine(length_bucket=1, stop_check_interval=1, batch_buckets=[8, 1, 2], merge_lora=False,
                      compile_mode="max-autotune", cuda_graph=False)
    assert (edge.length_bucket, edge.stop_check_interval, edge.batch_buckets) == (1, 1, [1, 2, 8])
    assert (edge.merge_lora, edge.compile_mode, edge.cuda_graph) == (False, "max-autotune", False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert [VcapEngine(cuda_graph=g).graphs_on(cuda) for g in (None, True, False)] == [True, True, False]
    assert [VcapEngine(cuda_graph=g).graphs_on(cpu) for g in (None, True, False)] == [False, False, False]
    plain = engine.runner(cpu)
    assert (plain.cuda_graph, plain.step, plain.max_buckets) == (False, decode_step, 1) and engine.runner(cpu) is plain
    compiled = VcapEngine(compile=True, compile_backend="eager").runner(cpu)
    assert compiled.step is not decode_step and compiled.max_buckets == 4  # a few shape buckets, each compiled
    assert repr(VcapEngine(sampling={"min_new_tokens": 3})) == "VcapEngine(sampling={'min_new_tokens': 3})"
    engine._weights = object()
    copy = pickle.loads(pickle.dumps(engine))
    assert (copy._runner, copy._weights, copy.batch_buckets) == (None, None, engine.batch_buckets)


@pytest.fixture(scope="module")
def recorded():
    processor = load_processor("vcap-tiny-sft")
    model = load_policy("vcap-tiny-sft").eval()
    calls = []
    real = model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    model.generate = generate  # records what the engine asks for, then runs HF's generate
    return model, processor.tokenizer, prompt_batch(processor), calls


def test_hf_engine_samples_with_the_rollout_settings_and_the_features(recorded):
    model, tok, prompts, calls = recorded
    engine = HFEngine(sampling={"top_k": 5, "repetition_penalty": 1.3})
    features = encode_videos(model, prompts)
    rollout = engine.generate(model, prompts, 2, 6, [tok.eos_token_id], tok.pad_token_id, temperature=0.7,
                              top_p=0.9, video_features=features)
    kwargs = calls[-1]
    assert "pixel_values_videos" not in kwargs and set(kwargs["mm_encoder_outputs"]) == {"video"}
    assert torch.equal(kwargs["input_ids"], prompts["input_ids"])
    assert {k: kwargs[k] for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                                   "max_new_tokens", "num_return_sequences", "eos_token_id", "pad_token_id",
                                   "use_cache")} == dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=5,
                                                         repetition_penalty=1.3, max_new_tokens=6,
                                                         num_return_sequences=2, eos_token_id=[tok.eos_token_id],
                                                         pad_token_id=tok.pad_token_id, use_cache=True)
    assert kwargs["suppress_tokens"] == vision_token_ids(model) and kwargs["suppress_tokens"]
    assert rollout.completion_ids.shape[0] == 2 * prompts["input_ids"].shape[0]
    assert rollout.video_features is features
    tokens, stats = int(rollout.completion_mask.sum()), engine.last_stats
    assert set(stats) == {"seconds", "tokens_per_s"} and 0 < stats["seconds"] < 600  # a duration, not a clock
    assert stats["tokens_per_s"] == pytest.approx(tokens / stats["seconds"])


def test_hf_engine_greedy_and_default_top_k(recorded):
    model, tok, prompts, calls = recorded
    HFEngine().generate(model, prompts, 1, 4, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    kwargs = calls[-1]
    assert kwargs["do_sample"] is False and "temperature" not in kwargs and "top_k" not in kwargs
    assert "pixel_values_videos" in kwargs and "mm_encoder_outputs" not in kwargs  # no features: the pixels
    HFEngine().generate(model, prompts, 1, 4, [tok.eos_token_id], tok.pad_token_id, temperature=1.3)
    assert (calls[-1]["do_sample"], calls[-1]["temperature"], calls[-1]["top_k"]) == (True, 1.3, 0)  # no top-k cut


class GreedyOnly(VcapEngine):
    """A user's engine: a subclass outside vcap, with a constructor of its own (no ``sampling``)."""

    def __init__(self, budget: int = 3):
        super().__init__()
        self.budget = budget


def test_user_engines_by_dotted_path_colon_path_and_bad_specs():
    from vcap.grpo.engines import build_engine

    by_dots = build_engine({"class_path": "tests.test_engine_options.GreedyOnly", "init_args": {"budget": 5}})
    assert type(by_dots) is GreedyOnly and by_dots.budget == 5
    by_colon = build_engine("tests.test_engine_options:GreedyOnly")  # no sampling given: none passed on
    assert type(by_colon) is GreedyOnly and by_colon.budget == 3
    assert type(build_engine({"class_path": "tests.test_engine_options:GreedyOnly"})) is GreedyOnly
    assert build_engine("hf", sampling={"top_k": 2}).sampling == {"top_k": 2}
    with pytest.raises(ValueError, match=r"^rollout must be an engine name \['hf', 'vcap', 'vllm'\] or a "
                                         r"class_path/init_args mapping, not int$"):
        build_engine(3)
    with pytest.raises(ValueError, match=r"^unknown rollout engine ''; valid: \['hf', 'vcap', 'vllm'\]"):
        build_engine({"init_args": {}})
    with pytest.raises(ValueError, match=r"^rollout engine 'vcap' cannot honour sampling options \['top_k'\]; it "
                                         r"supports \['min_new_tokens', 'repetition_penalty'\] \(engine 'hf' takes "
                                         r"any generate option\)$"):
        VcapEngine(sampling={"top_k": 2})
    with pytest.raises(ValueError, match=r"^rollout engine 'hf': set \['temperature'\] through GRPOModule "
                                         r"\(temperature, top_p, max_completion_length, num_generations\), not "
                                         r"sampling$"):
        HFEngine(sampling={"temperature": 0.5})


@pytest.mark.parametrize("mode, backend, options", [
    ("max-autotune", "inductor", {"mode": "max-autotune"}),
    (None, "inductor", {}),
    ("max-autotune", "aot_eager", {}),  # a mode is an inductor option: other backends do not get it
])
def test_compile_gets_the_whole_decode_step_with_static_shapes(monkeypatch, mode, backend, options):
    calls = []

    def recording_compile(fn, **kwargs):
        calls.append((fn, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    runner = VcapEngine(compile=True, compile_mode=mode, compile_backend=backend).runner(torch.device("cpu"))
    # the step written for fusion (it takes the model's own forward where it cannot run the layers itself)
    assert calls == [(fused_decode_step, dict(backend=backend, dynamic=False, fullgraph=True, **options))]
    assert runner.max_buckets == 4 and not runner.cuda_graph


@pytest.mark.parametrize("buckets, padded", [([2, 5, 9], 5), ([4], 4), ([2, 3, 9], 3), ([1], 3)])
def test_the_bucketed_path_pads_prompts_and_cache_to_their_buckets_and_keeps_the_tokens(recorded, monkeypatch,
                                                                                       buckets, padded):
    """The compiled path's shape buckets, run eagerly (torch.compile replaced by the identity, since mutation runs
    cannot trace): the prompt count padded to the smallest bucket that holds it (or kept when none does), the
    cache length rounded up to length_bucket, and the real prompts' greedy tokens equal to the plain loop's."""
    model, tok, prompts, _ = recorded
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    runs = record_runner_calls(monkeypatch)
    engine = VcapEngine(compile=True, cuda_graph=False, length_bucket=16, batch_buckets=buckets)
    batch, prompt_len = prompts["input_ids"].shape
    assert batch == 3
    generations, budget = 2, 7
    args = (model, prompts, generations, budget, [tok.eos_token_id], tok.pad_token_id)
    for features in (encode_videos(model, prompts), None):
        plain = VcapEngine().generate(*args, do_sample=False, video_features=features)
        fast = engine.generate(*args, do_sample=False, video_features=features)
        assert fast.completion_ids.shape[0] == batch * generations
        assert torch.equal(fast.completion_ids, plain.completion_ids)
        assert torch.equal(fast.completion_mask, plain.completion_mask)
        handed = runs[-1]
        assert handed["inputs"]["input_ids"].shape[0] == padded
        if features is not None:  # the features are padded with the prompts, not dropped (then encoded again)
            assert len(handed["video_features"].pooler_output) == padded
    cache_len = (prompt_len + budget + 15) // 16 * 16
    assert cache_len % 16 == 0 and cache_len >= prompt_len + budget > cache_len - 16
    assert [key[1:3] for key in engine._runner.buckets] == [(padded * generations, cache_len)]


def record_runner_calls(monkeypatch) -> list[dict]:
    """What VcapEngine hands its DecodeRunner, by argument name, each call (the real runner still runs)."""
    from vcap.grpo.graphs import DecodeRunner

    real, runs = DecodeRunner.generate, []

    def generate(self, *args, **kwargs):
        runs.append(inspect.signature(real).bind(self, *args, **kwargs).arguments)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DecodeRunner, "generate", generate)
    return runs


def test_vcap_engine_hands_the_runner_its_sampling_features_suppressed_ids_and_weights_version(recorded,
                                                                                              monkeypatch):
    from vcap.grpo.decode import Sampling
    from vcap.grpo.lora_merge import RolloutWeights

    model, tok, prompts, _ = recorded
    runs, merges = record_runner_calls(monkeypatch), []

    @contextmanager
    def applied(self, model, version=None):
        merges.append(version)
        yield

    monkeypatch.setattr(RolloutWeights, "applied", applied)
    features = encode_videos(model, prompts)
    engine = VcapEngine(sampling={"min_new_tokens": 2, "repetition_penalty": 1.2})
    pad = 7  # not the tokenizer's 0, which is also Sampling's default
    engine.generate(model, prompts, 2, 5, [tok.eos_token_id], pad, temperature=0.7, top_p=0.9,
                    video_features=features, weights_version=7)
    handed = runs[-1]
    assert handed["sampling"] == Sampling(True, 0.7, 0.9, 2, 1.2, pad)
    assert handed["video_features"] is features and handed["inputs"] is prompts
    assert handed["suppress_tokens"] == vision_token_ids(model) and handed["suppress_tokens"]
    assert handed["eos_token_ids"] == [tok.eos_token_id] and handed["num_generations"] == 2
    assert (handed.get("cache_len"), handed["stop_check_interval"], handed.get("allow_graph", True)) == (None, 1, True)
    assert merges == [7]  # merged LoRA copies are refreshed by the policy's weights version
    VcapEngine(merge_lora=False, stop_check_interval=3).generate(model, prompts, 1, 3, [tok.eos_token_id],
                                                                 tok.pad_token_id, do_sample=False)
    assert merges == [7]  # merge_lora: false never merges
    assert runs[-1]["stop_check_interval"] == 3 and runs[-1]["sampling"].do_sample is False
    assert VcapEngine().runner(torch.device("cuda")).cuda_graph is True  # a runner object needs no GPU
