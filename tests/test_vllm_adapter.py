"""What VLLMEngine asks of vLLM, in-process: a stand-in ``vllm`` module records every call, so the adapter's own
logic (the LLM's options and saved config, weight pushes and cache resets, SamplingParams per prompt, seeds, sleep
mode, the padded output) is checked here by value. That real vLLM accepts these calls and samples the same tokens
as HF is checked by tests/test_vllm_engine.py in the vLLM venv.
"""
import hashlib
import json
import logging
import os
import pickle
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.video_batches import prompt_batch
import vcap.grpo.vllm_engine as vllm_engine
from vcap.grpo.rollout import vision_token_ids
from vcap.grpo.vision import encode_videos
from vcap.grpo.vllm_engine import VLLMEngine, join_training_ranks, merged_weights, unsharded_class
from vcap.model.loading import load_policy, load_processor


@pytest.fixture(autouse=True)
def restored_environment():
    """The adapter sets process-wide variables with setdefault (RANK, LOCAL_RANK, VLLM_*), which monkeypatch cannot
    undo when they were unset before: a leaked RANK would make later tests in this worker another rank."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class FakeLLM:
    """Records what the engine asks for and answers ``generate`` with the completions queued in ``replies``."""

    def __init__(self, **options):
        self.options = options
        self.calls: list[tuple] = []
        self.replies: list[list[list[list[int]]]] = []  # per generate call: per prompt, its G completions
        self.llm_engine = SimpleNamespace(reset_encoder_cache=lambda: self.calls.append(("reset_encoder_cache",)))
        with open(f"{options['model']}/config.json") as f:  # read now: the folder is temporary
            self.saved_config = json.load(f)

    def collective_rpc(self, method, kwargs):
        self.calls.append((method, dict(kwargs, weights_iterator=dict(kwargs["weights_iterator"]))))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def generate(self, prompts, params, use_tqdm):
        self.calls.append(("generate", prompts, params, use_tqdm))
        reply = self.replies.pop(0)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(ids)) for ids in group]) for group in reply]


@pytest.fixture
def fake_vllm(monkeypatch):
    made = []

    def llm(**options):
        made.append(FakeLLM(**options))
        return made[-1]

    module = SimpleNamespace(LLM=llm, SamplingParams=lambda **options: dict(options))
    monkeypatch.setattr(vllm_engine, "import_vllm", lambda: module)
    return made


@pytest.fixture(scope="module")
def policy(tiny_path):
    processor = load_processor(str(tiny_path))
    return load_policy(str(tiny_path)).eval(), processor, prompt_batch(processor)


def generate(engine, policy, version, do_sample=True, features=None, **options):
    model, processor, prompts = policy
    return engine.completion_ids(model, prompts, 2, 5, [2, 3], 9, options.pop("temperature", 0.7), 0.8, do_sample,
                                 features, processor=processor, weights_version=version, **options)


def test_the_llm_starts_from_the_policy_s_config_with_dummy_weights_then_gets_them(policy, fake_vllm, caplog,
                                                                                  monkeypatch):
    model, processor, _ = policy
    engine = VLLMEngine(gpu_memory_utilization=0.4, max_model_len=512, enforce_eager=True, seed=5,
                        enable_sleep_mode=True, llm_kwargs={"max_num_seqs": 16, "seed": 9})
    with pytest.raises(ValueError, match=r"^engine 'vllm' needs the processor \(GRPOModule passes it\)$"):
        engine.start(model, None)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setattr(model.config, "quantization_config", {"load_in_4bit": True}, raising=False)  # as QLoRA's
    with caplog.at_level(logging.INFO, logger="vcap.grpo.vllm_engine"):
        engine.start(model, processor)
    assert caplog.messages == [
        "engine 'vllm': enable_sleep_mode is skipped on CPU (vLLM sleeps through CUDA's memory allocator; the CPU "
        "backend has none); rollouts run without it",
        f"starting vLLM ({type(model).__name__}, float32) for rollouts"]
    assert engine.enable_sleep_mode is False and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    llm = fake_vllm[-1]
    options = dict(llm.options)
    assert options.pop("model") == engine._model_dir.name
    assert os.path.basename(engine._model_dir.name).startswith("vcap-vllm-")
    assert engine.pushed_version is None
    assert options == dict(load_format="dummy", dtype="float32", enable_mm_embeds=True,
                           limit_mm_per_prompt={"video": 0, "image": 0}, generation_config="vllm", seed=9,
                           enforce_eager=True, max_model_len=512, enable_sleep_mode=False,
                           gpu_memory_utilization=0.4, max_num_seqs=16)  # llm_kwargs win
    saved = llm.saved_config
    assert saved["architectures"] == [type(model).__name__] and saved["dtype"] == "float32"
    assert saved["tie_word_embeddings"] is False and saved["text_config"]["tie_word_embeddings"] is False
    assert "quantization_config" not in saved  # the weights arrive dequantized
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vcap.grpo.vllm_engine"):
        VLLMEngine().start(model, processor)
    assert caplog.messages == []  # no sleep mode asked for: nothing to warn of
    defaults = fake_vllm[-1].options
    assert (defaults["enforce_eager"], defaults["seed"], defaults["enable_sleep_mode"], defaults["max_model_len"],
            defaults["gpu_memory_utilization"]) == (False, 0, False, None, 0.3)
    VLLMEngine(dtype="bfloat16").start(model, processor)
    assert fake_vllm[-1].options["dtype"] == "bfloat16" and fake_vllm[-1].saved_config["dtype"] == "bfloat16"


def test_weights_are_pushed_without_the_tower_and_the_caches_reset_when_the_version_changes(policy, fake_vllm):
    model, processor, _ = policy
    engine = VLLMEngine()
    engine.start(model, processor)
    llm = fake_vllm[-1]
    llm_calls, llm_params = [], []
    for version in (0, 0, 1, None, None):
        llm.replies.append([[[5]] * 2] * 3)
        generate(engine, policy, version)
        llm_calls.append([c[0] for c in llm.calls])
        llm_params.append(llm.calls[-1][2])
        llm.calls.clear()
        if version in (0, None):  # no optimizer step yet, or unknown: the seeds of step 0
            assert [p["seed"] for p in llm_params[-1]] == hand_seeds(0, 0, 0, 3)
    pushed = ["reload_weights", "reset_prefix_cache", "reset_encoder_cache", "generate"]
    # pushed at start, not again for the same version, again for a new one, always when the version is unknown
    assert llm_calls == [pushed, ["generate"], pushed, pushed, pushed]
    assert engine.pushed_version is None
    engine.push_weights(model, version=4)
    method, kwargs = fake_vllm[-1].calls[0]
    want = {name: t for name, t in merged_weights(model) if "visual." not in name}
    assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
    assert kwargs["weights_iterator"].keys() == want.keys() and "lm_head.weight" in want
    assert all(torch.equal(kwargs["weights_iterator"][n], t) for n, t in want.items())
    assert not any("visual." in n for n in kwargs["weights_iterator"]) and engine.pushed_version == 4


def test_sampling_params_per_prompt_and_the_padded_output(policy, fake_vllm):
    model, processor, prompts = policy
    engine = VLLMEngine(seed=11, sampling={"min_new_tokens": 2, "repetition_penalty": 1.1, "top_k": 7})
    engine.start(model, processor)
    llm = fake_vllm[-1]
    llm.replies.append([[[4, 5, 2], [6]], [[7, 8], []], [[1, 1, 1, 1], [2]]])
    ids = generate(engine, policy, 3)
    assert torch.equal(ids, torch.tensor([[4, 5, 2, 9], [6, 9, 9, 9], [7, 8, 9, 9], [9, 9, 9, 9],
                                          [1, 1, 1, 1], [2, 9, 9, 9]]))  # padded with pad_token_id 9
    _, sent, params, use_tqdm = llm.calls[-1]
    assert use_tqdm is False and len(sent) == len(params) == 3
    assert all("multi_modal_data" in p for p in sent)  # the pixels were encoded here: features, not pixels
    vocab = model.get_input_embeddings().num_embeddings
    banned = set(vision_token_ids(model))
    assert banned
    # each prompt's seed from (engine seed, optimizer step, rank, position): 56-bit blake2b, by hand
    for param, seed in zip(params, hand_seeds(11, 3, 0, 3)):
        assert param == dict(n=2, max_tokens=5, stop_token_ids=[2, 3], temperature=0.7, top_p=0.8,
                             allowed_token_ids=[t for t in range(vocab) if t not in banned], detokenize=False,
                             skip_special_tokens=False, min_tokens=2, repetition_penalty=1.1, top_k=7, seed=seed)
    assert engine.allowed_token_ids(model) is engine.allowed_token_ids(model)  # built once per model
    # greedy, one fixed seed for every prompt, and no completion token at all
    fixed = VLLMEngine(sampling={"seed": 4})
    fixed.start(model, processor)
    fake_vllm[-1].replies.append([[[]], [[]], [[]]])
    features = encode_videos(model, prompts)
    ids = fixed.completion_ids(model, prompts, 1, 5, [2], 9, 0.7, 0.8, False, features, processor=processor,
                               weights_version=None)
    assert torch.equal(ids, torch.full((3, 1), 9))
    _, sent, params, _ = fake_vllm[-1].calls[-1]
    assert all(p == params[0] for p in params) and params[0]["seed"] == 4
    assert (params[0]["temperature"], params[0]["top_p"], params[0]["n"]) == (0.0, 1.0, 1)
    assert all(torch.equal(p["multi_modal_data"]["video"]["video_embeds"], f)
               for p, f in zip(sent, features.pooler_output))


def test_sleep_mode_wakes_the_llm_before_a_rollout_and_sleeps_it_after(policy, fake_vllm):
    engine = VLLMEngine()
    engine.start(*policy[:2])
    engine.enable_sleep_mode = True  # as on CUDA, where start keeps it
    llm = fake_vllm[-1]
    llm.replies += [[[[5]] * 2] * 3] * 2
    generate(engine, policy, 0)
    generate(engine, policy, 0)
    assert [c[0] for c in llm.calls] == ["wake_up", "reload_weights", "reset_prefix_cache", "reset_encoder_cache",
                                         "generate", "sleep", "wake_up", "generate", "sleep"]
    assert llm.calls[5] == llm.calls[-1] == ("sleep", 1)


def test_each_rank_joins_the_training_job_s_group_on_its_own_device(monkeypatch):
    monkeypatch.setattr(vllm_engine.dist, "get_rank", lambda: 3)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def on(device: str):  # a model whose weights sit on ``device`` (no GPU needed to name one)
        return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))

    assert join_training_ranks(on("cpu")) == dict(distributed_executor_backend="external_launcher",
                                                  tensor_parallel_size=1)
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("3", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"^engine 'vllm': LOCAL_RANK=0 but this rank trains on cuda:1; launch with "
                                         r"Lightning, torchrun or SLURM so that each rank's LOCAL_RANK is its GPU$"):
        join_training_ranks(on("cuda:1"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert join_training_ranks(on("cuda:1"))["tensor_parallel_size"] == 1


def test_vllm_gets_the_model_s_own_class_under_fsdp2():
    from torch.distributed.fsdp import FSDPModule

    sharded_type = type("FSDPLinear", (FSDPModule, torch.nn.Linear), {})  # what fully_shard makes of a Linear
    assert unsharded_class(object.__new__(sharded_type)) is torch.nn.Linear
    assert unsharded_class(torch.nn.Linear(2, 2)) is torch.nn.Linear


def hand_seeds(seed: int, step: int, rank: int, count: int) -> list[int]:
    return [int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{rank}/{i}".encode(), digest_size=7).digest(), "big")
            for i in range(count)]


def test_a_fresh_engine_starts_its_llm_on_the_first_rollout_and_copies_start_empty(policy, fake_vllm, monkeypatch):
    model, processor, prompts = policy
    engine = VLLMEngine()
    original = FakeLLM.__init__

    def with_a_reply_queued(self, **options):  # the LLM is made inside the rollout: queue its answer there
        original(self, **options)
        self.replies.append([[[5]]] * 3)

    monkeypatch.setattr(FakeLLM, "__init__", with_a_reply_queued)
    ids = engine.completion_ids(model, prompts, 1, 4, [2], 0, 1.0, 1.0, True, None, processor=processor,
                                weights_version=0)
    assert ids.tolist() == [[5]] * 3 and len(fake_vllm) == 1 and engine.llm is fake_vllm[0]
    assert fake_vllm[0].saved_config["architectures"] == [type(model).__name__]
    engine.llm = None  # a copy never carries the running engine nor what belongs to it
    copy = pickle.loads(pickle.dumps(engine))
    assert engine._model_dir is not None and engine._allowed is not None
    assert (copy._model_dir, copy._allowed_key, copy._allowed, copy.pushed_version) == (None, None, None, None)


def test_under_ddp_each_rank_s_llm_joins_the_job_and_seeds_by_its_rank(policy, fake_vllm, monkeypatch):
    model, processor, _ = policy
    monkeypatch.setattr(vllm_engine, "is_distributed", lambda: True)
    monkeypatch.setattr(vllm_engine.dist, "get_rank", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    engine = VLLMEngine(seed=2)
    engine.start(model, processor)
    assert fake_vllm[-1].options["distributed_executor_backend"] == "external_launcher"
    fake_vllm[-1].replies.append([[[5]] * 2] * 3)
    generate(engine, policy, 6)
    assert [p["seed"] for p in fake_vllm[-1].calls[-1][2]] == hand_seeds(2, 6, 1, 3)


def test_a_lora_policy_starts_vllm_as_its_base_model(tiny_path, fake_vllm):
    from peft import LoraConfig

    model = load_policy(str(tiny_path), peft=LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0))
    VLLMEngine().start(model, load_processor(str(tiny_path)))
    assert fake_vllm[-1].saved_config["architectures"] == [type(model.get_base_model()).__name__]


def test_import_vllm_quiets_vllm_s_log_and_options_are_checked(monkeypatch):
    fake = SimpleNamespace(__name__="vllm")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    assert vllm_engine.import_vllm() is fake and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    for bad in (0.0, 1.01, -0.5):
        with pytest.raises(ValueError, match=r"^gpu_memory_utilization must be in \(0, 1\]$"):
            VLLMEngine(gpu_memory_utilization=bad)
    assert VLLMEngine(gpu_memory_utilization=1.0).gpu_memory_utilization == 1.0


def test_prompts_without_video_carry_no_features_and_unknown_feature_kinds_are_refused(policy, monkeypatch):
    from vcap.grpo.vllm_engine import collapse_runs, vllm_prompts

    model, _, prompts = policy
    text_only = {k: prompts[k] for k in ("input_ids", "attention_mask")}
    sent = vllm_prompts(model, text_only, None)
    assert [set(p) for p in sent] == [{"prompt_token_ids"}] * 3
    tower = vllm_engine.core_model(model)
    real = tower.get_video_features

    def with_deepstack(*args, **kwargs):  # e.g. Qwen3-VL's per-layer features, which vLLM cannot take as input
        out = real(*args, **kwargs)
        out["deepstack_features"] = [out.pooler_output[0]]
        return out

    monkeypatch.setattr(tower, "get_video_features", with_deepstack)
    with pytest.raises(ValueError, match=r"^engine 'vllm' cannot pass this model's video features "
                                         r"\(\['deepstack_features'\]\); use 'vcap'$"):
        vllm_prompts(model, prompts, None)
    monkeypatch.setattr(vllm_engine, "vision_token_ids", lambda model: [])
    assert VLLMEngine().allowed_token_ids(model) is None  # nothing to ban: no list of 152k ids
    # placeholder runs at the start and the end of a prompt
    assert collapse_runs([6, 6, 1, 6], 6) == [6, 1, 6] and collapse_runs([1, 6, 6], 6) == [1, 6]
    assert collapse_runs([6, 1, 6], 6) == [6, 1, 6]  # the first token is not the run of the last
