"""Rollout engine selection, options and errors; the vLLM engine's pure parts (no vLLM needed here)."""
import copy
import importlib.util
import pickle

import pytest
import torch
from peft import LoraConfig

from tests.video_batches import prompt_batch
from vcap.grpo.engines import ENGINES, HFEngine, VcapEngine, build_engine, engine_config
from vcap.grpo.module import GRPOModule
from vcap.grpo.vllm_engine import VLLMEngine, collapse_runs, merged_weights, vllm_prompts
from vcap.grpo.vision import encode_videos
from vcap.model.loading import load_policy, load_processor


def test_engines_by_short_name_class_name_path_and_instance():
    assert sorted(ENGINES) == ["hf", "vcap", "vllm"]
    assert type(build_engine("vllm")) is VLLMEngine
    assert type(build_engine({"class_path": "HFEngine"})) is HFEngine
    engine = build_engine({"class_path": "vcap.grpo.vllm_engine.VLLMEngine",
                           "init_args": {"gpu_memory_utilization": 0.5, "sampling": {"min_new_tokens": 4}}})
    assert engine.gpu_memory_utilization == 0.5 and engine.sampling == {"min_new_tokens": 4}
    mine = VcapEngine()
    assert build_engine(mine) is mine


@pytest.mark.parametrize("spec, match", [
    ("fast", r"valid: \['hf', 'vcap', 'vllm'\]"),
    ({"class_path": "VcapEngine", "init_args": {"sampling": {"top_k": 5}}}, "cannot honour .*top_k"),
    ({"class_path": "VLLMEngine", "init_args": {"sampling": {"num_beams": 2}}}, "cannot honour .*num_beams"),
    ({"class_path": "HFEngine", "init_args": {"sampling": {"min_new_token": 2}}}, "not generate options"),
    ({"class_path": "HFEngine", "init_args": {"sampling": {"temperature": 0.5}}}, "through GRPOModule"),
    ({"class_path": "VLLMEngine", "init_args": {"gpu_memory_utilisation": 0.5}}, "bad options"),
])
def test_bad_engine_or_option_is_one_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        GRPOModule(rollout=spec)


def test_module_keeps_engine_options_in_hparams_and_rebuilds_from_them():
    module = GRPOModule(rollout={"class_path": "VLLMEngine", "init_args": {"enable_sleep_mode": True}})
    saved = pickle.loads(pickle.dumps(dict(module.hparams)))  # what a checkpoint stores
    assert saved["rollout"]["class_path"] == "vcap.grpo.vllm_engine.VLLMEngine"
    again = GRPOModule(**saved).rollout_engine
    assert type(again) is VLLMEngine and again.enable_sleep_mode
    assert engine_config(again) == engine_config(module.rollout_engine)
    assert type(GRPOModule().rollout_engine) is VcapEngine  # the default
    with pytest.raises(ValueError, match="rollout: hf"):
        GRPOModule(rollout_engine="hf")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_is_one_line_naming_the_install(tiny_path):
    model, processor = load_policy(str(tiny_path)), load_processor(str(tiny_path))
    prompts = prompt_batch(processor)
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMEngine().generate(model, prompts, 2, 4, [2], 0, processor=processor)


def test_engine_copies_never_carry_a_running_llm():
    engine = VLLMEngine()
    engine.llm, engine.pushed_version = object(), 3
    for clone in (copy.deepcopy(engine), pickle.loads(pickle.dumps(engine))):
        assert clone.llm is None and clone.pushed_version is None


def test_collapse_runs_keeps_one_placeholder_per_video():
    assert collapse_runs([1, 3, 6, 6, 6, 4, 9, 6, 6, 2], 6) == [1, 3, 6, 4, 9, 6, 2]
    assert collapse_runs([1, 2], None) == [1, 2]


def test_prompts_drop_left_padding_and_carry_each_video_s_features(tiny_path):
    model, processor = load_policy(str(tiny_path)).eval(), load_processor(str(tiny_path))
    prompts = prompt_batch(processor)
    features = encode_videos(model, prompts)
    out = vllm_prompts(model, prompts, features)
    video = model.config.video_token_id
    for i, prompt in enumerate(out):
        ids = prompts["input_ids"][i][prompts["attention_mask"][i].bool()].tolist()
        assert prompt["prompt_token_ids"] == collapse_runs(ids, video) and ids.count(video) > 1
        data = prompt["multi_modal_data"]["video"]
        assert torch.equal(data["video_embeds"], features.pooler_output[i])
        assert torch.equal(data["video_grid_thw"], prompts["video_grid_thw"][i:i + 1])
    # a trainable tower: the engine encodes the pixels itself, to the same features
    again = vllm_prompts(model, prompts, None)
    embeds = [[p["multi_modal_data"]["video"]["video_embeds"] for p in prompts_] for prompts_ in (out, again)]
    assert all(torch.allclose(a, b) for a, b in zip(*embeds))


def test_merged_weights_equal_peft_merge_under_checkpoint_names(tiny_path):
    model = load_policy(str(tiny_path), peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    pushed = dict(merged_weights(model))
    adapters_before = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    plain = load_policy(str(tiny_path))
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(pushed) == set(plain.state_dict())  # HF checkpoint names, lm_head included although tied
    for name, tensor in pushed.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    assert any(not torch.equal(pushed[n], plain.state_dict()[n]) for n in pushed)  # the adapters are in
    assert all(torch.equal(p, adapters_before[n]) for n, p in model.named_parameters() if "lora_" in n)


def test_engine_options_of_older_checkpoints_still_build():
    """Checkpoints from before the CUDA-graph decode stored compile: false with compile_mode: reduce-overhead."""
    engine = build_engine({"class_path": "vcap.grpo.engines.VcapEngine",
                           "init_args": {"sampling": {}, "compile": False, "compile_mode": "reduce-overhead",
                                         "compile_backend": "inductor", "length_bucket": 256, "batch_buckets": None}})
    assert engine.cuda_graph is None and not engine.compile
    with pytest.raises(ValueError, match="reduce-overhead"):
        VcapEngine(compile=True, compile_mode="reduce-overhead")
    assert VcapEngine(compile=True, compile_mode="reduce-overhead", cuda_graph=False).compile

def test_vllm_request_seeds_differ_per_rank_step_and_prompt_and_repeat():
    engine = VLLMEngine(seed=7)
    seeds = {(step, rank): engine.request_seeds(4, step, rank) for step in (0, 1) for rank in (0, 1)}
    assert seeds[0, 0] == VLLMEngine(seed=7).request_seeds(4, 0, 0)  # reproducible
    assert seeds[0, 0] != VLLMEngine(seed=8).request_seeds(4, 0, 0)
    every = sorted(s for group in seeds.values() for s in group)
    # vLLM seeds a prompt's G completions seed, seed + 1, ...: no two prompts' ranges may overlap
    assert all(b - a > 1024 for a, b in zip(every, every[1:])) and max(every) < 2**63
