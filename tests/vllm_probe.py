"""``engine: vllm`` against ``engine: hf`` on CPU; run inside the vLLM venv by tests/test_vllm_engine.py.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=<repo> <venv>/bin/python tests/vllm_probe.py WORKDIR CHECK

The model is vcap-demo's geometry (head_dim 32: vLLM's CPU attention has no kernel for vcap-tiny's 16) with
its random weights spread out so that greedy text varies with the video and the prompt: a model that repeats one
token would let a wrong video, a stale cache or a missed weight push pass unseen. Prints one JSON line per check.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# small: on CPU vLLM reserves gpu_memory_utilization x the machine's memory; no CUDA graphs to capture
ENGINE = dict(max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.08)


def spread_weights(model, seed: int, scale: float = 2.0) -> None:
    """Re-draw the language model's matrices with a wide seeded init: a new, distinct policy whose greedy text
    varies token by token (vcap-demo's own init repeats one token)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[1] ** 0.5)


# unequal videos whose temporal grid never exceeds the merged spatial one: transformers 5.x places the text after
# a video at start + max(h, w) / merge, the original Qwen2-VL and vLLM at start + max(t, h / merge, w / merge)
SPECS = [("Describe.", 4, 56), ("Describe the video in great detail, every subject and what it does.", 4, 84),
         ("Caption it", 2, 112)]


def report(name: str, **values) -> None:
    print(json.dumps({"check": name, **values}), flush=True)


def rollouts_match(a, b) -> bool:
    import torch

    return a.completion_ids.shape == b.completion_ids.shape and torch.equal(a.completion_ids, b.completion_ids) \
        and torch.equal(a.completion_mask, b.completion_mask)


def check_greedy_and_pushes(workdir: str) -> None:
    """Greedy vllm == hf token for token; after a push of new weights vllm follows them; the same videos again
    after the push (encoder cache reset, not stale); unchanged weights are not pushed again."""
    import torch

    from tests.video_batches import prompt_batch
    from vcap.grpo.engines import HFEngine
    from vcap.grpo.vision import encode_videos
    from vcap.grpo.vllm_engine import VLLMEngine
    from vcap.model.loading import load_policy, load_processor

    processor = load_processor("vcap-demo")
    model = load_policy("vcap-demo").eval()
    spread_weights(model, 0)
    prompts = prompt_batch(processor, SPECS)
    tok = processor.tokenizer
    args = (prompts, 1, 24, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
    hf, vllm = HFEngine(), VLLMEngine(**ENGINE)

    def both(version):
        features = encode_videos(model, prompts)
        want = hf.generate(model, *args, do_sample=False, video_features=features)
        start = time.perf_counter()
        got = vllm.generate(model, *args, do_sample=False, video_features=features, processor=processor,
                            weights_version=version)
        return want, got, time.perf_counter() - start

    start = time.perf_counter()
    want, got, _ = both(0)
    distinct = len(set(map(tuple, want.completion_ids.tolist())))
    report("greedy_before_push", equal=rollouts_match(want, got), distinct_texts=distinct,
           tokens=want.completion_ids.tolist(), vllm_tokens=got.completion_ids.tolist(),
           first_rollout_s=round(time.perf_counter() - start, 1))
    spread_weights(model, 1)
    pushes = []
    original = vllm.push_weights
    vllm.push_weights = lambda *a, **k: (pushes.append(1), original(*a, **k))
    after, got_after, seconds = both(1)
    report("greedy_after_push", equal=rollouts_match(after, got_after), pushed=len(pushes),
           changed=not rollouts_match(want, after), tokens=after.completion_ids.tolist(),
           vllm_tokens=got_after.completion_ids.tolist(), rollout_s=round(seconds, 2))
    again, got_again, _ = both(1)  # same videos, same weights: no push, cached encoder outputs stay valid
    report("same_videos_no_push", equal=rollouts_match(again, got_again), pushed=len(pushes))


def check_lora_merge(workdir: str) -> None:
    """A LoRA policy's greedy rollout in vllm (adapters merged into the pushed weights) equals hf's with peft."""
    import torch
    from peft import LoraConfig

    from tests.video_batches import prompt_batch
    from vcap.grpo.engines import HFEngine
    from vcap.grpo.vllm_engine import VLLMEngine
    from vcap.model.loading import load_policy, load_processor

    processor = load_processor("vcap-demo")
    model = load_policy("vcap-demo", peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)).eval()
    spread_weights(model.get_base_model(), 2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    prompts = prompt_batch(processor, SPECS, seed=1)
    tok = processor.tokenizer
    args = (prompts, 1, 16, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
    want = HFEngine().generate(model, *args, do_sample=False)
    with model.disable_adapter():
        base = HFEngine().generate(model, *args, do_sample=False)
    got = VLLMEngine(**ENGINE).generate(model, *args, do_sample=False,
                                                                     processor=processor, weights_version=0)
    report("lora_merged", equal=rollouts_match(want, got), adapters_matter=not rollouts_match(want, base))


def check_qlora(workdir: str) -> None:
    """A QLoRA policy (4-bit base, LoRA adapters): its weights are pushed dequantized with the adapters merged in;
    greedy vllm equals hf with bitsandbytes and peft."""
    import torch
    from peft import LoraConfig

    from tests.video_batches import prompt_batch
    from vcap.grpo.engines import HFEngine
    from vcap.grpo.vllm_engine import VLLMEngine
    from vcap.model.loading import load_policy, load_processor

    processor = load_processor("vcap-demo")
    spread = load_policy("vcap-demo")
    spread_weights(spread, 4)
    path = os.path.join(workdir, "spread")
    spread.save_pretrained(path)
    processor.save_pretrained(path)
    model = load_policy(path, peft=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0), load_in_4bit=True).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    prompts = prompt_batch(processor, SPECS, seed=2)
    tok = processor.tokenizer
    args = (prompts, 1, 16, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
    want = HFEngine().generate(model, *args, do_sample=False)
    with model.disable_adapter():
        base = HFEngine().generate(model, *args, do_sample=False)
    got = VLLMEngine(**ENGINE).generate(model, *args, do_sample=False, processor=processor, weights_version=0)
    report("qlora_merged", equal=rollouts_match(want, got), adapters_matter=not rollouts_match(want, base),
           four_bit=any(type(p).__name__ == "Params4bit" for p in model.parameters()))


def check_sampling(workdir: str) -> None:
    """G sampled completions per prompt: the Rollout layout, EOS masking, padding, no vision tokens, min length."""
    import torch

    from tests.video_batches import prompt_batch
    from vcap.grpo.rollout import completion_mask, vision_token_ids
    from vcap.grpo.vllm_engine import VLLMEngine
    from vcap.model.loading import load_policy, load_processor

    processor = load_processor("vcap-demo")
    model = load_policy("vcap-demo").eval()
    spread_weights(model, 0)
    prompts = prompt_batch(processor, SPECS)
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    engine = VLLMEngine(**ENGINE, sampling={"min_new_tokens": 5})
    out = engine.generate(model, prompts, 4, 12, eos, tok.pad_token_id, temperature=1.0, top_p=0.9,
                          processor=processor, weights_version=0)
    ids, mask = out.completion_ids, out.completion_mask
    groups = ids.view(3, 4, -1)
    report("sampling", shape=list(ids.shape), mask_ok=torch.equal(mask, completion_mask(ids, eos)),
           pad_ok=bool((ids[mask == 0] == tok.pad_token_id).all()),
           no_vision=not torch.isin(ids, torch.tensor(vision_token_ids(model))).any().item(),
           min_length_ok=not torch.isin(ids[:, :5], torch.tensor(eos)).any().item(),
           independent=any(len(set(map(tuple, g.tolist()))) > 1 for g in groups))


def check_grpo_steps(workdir: str) -> None:
    """A few GRPO optimizer steps with rollout: vllm; each step's rollout runs on the weights of the step before."""
    import lightning as L
    import torch

    from vcap.data.datamodule import CaptionDataModule
    from vcap.data.synthetic import ShapesSpec, build_shapes_dataset
    from vcap.grpo.module import GRPOModule
    from vcap.model.loading import load_policy, load_processor

    model_dir = os.path.join(workdir, "policy")
    model, processor = load_policy("vcap-demo"), load_processor("vcap-demo")
    spread_weights(model, 0)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    manifest = build_shapes_dataset(os.path.join(workdir, "shapes"), ShapesSpec(num_train=6, num_val=2, seed=1))
    module = GRPOModule(name_or_path=model_dir, num_generations=2, max_completion_length=8, max_new_tokens=8,
                        learning_rate=5e-2, micro_batch_size=4, beta=0.1, log_completions_every=0,
                        rewards={"tests.helpers:LengthReward": 1.0, "format": 1.0},
                        rollout={"class_path": "VLLMEngine",
                                 "init_args": ENGINE})
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    versions = []
    original = module.rollout_engine.push_weights
    module.rollout_engine.push_weights = lambda m, v=None: (versions.append(v), original(m, v))
    data = CaptionDataModule(manifest=str(manifest), processor=model_dir, batch_size=2, val_batch_size=2,
                             num_workers=0, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    start = time.perf_counter()
    L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
              limit_val_batches=0, enable_checkpointing=False, default_root_dir=workdir).fit(module, datamodule=data)
    changed = any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters())
    report("grpo_steps", steps=module.global_step, pushes=versions, weights_changed=changed,
           seconds=round(time.perf_counter() - start, 1))


CHECKS = {"greedy": check_greedy_and_pushes, "lora": check_lora_merge, "qlora": check_qlora,
          "sampling": check_sampling, "grpo": check_grpo_steps}

if __name__ == "__main__":  # vLLM's in-process engine still needs the guard
    CHECKS[sys.argv[2]](sys.argv[1])  # one check per process: each starts its own vLLM
