"""``engine: vllm`` on 2 gloo ranks, in the vLLM venv; run by tests/test_vllm_distributed.py.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=<repo> <venv>/bin/python tests/vllm_distributed_probe.py WORKDIR CHECK

* ``ddp``: ``vcap``'s GRPOModule under Lightning's DDP strategy (2 CPU processes, one vLLM engine each), 3 steps,
  then each rank's greedy vLLM rollout of its own prompts against ``hf``. Writes each rank's weights and the
  metrics rank 0 logged.
* ``joined``: the single-process reference: the same 3 global batches (rank 0's prompts, then rank 1's) with the
  same per-rank seeds, in one process and one engine.
* ``fsdp``: FSDP2 (``fully_shard``, 2 processes): each rank's vLLM engine gets the sharded policy's weights
  gathered one unit at a time; greedy vLLM equals greedy ``hf`` on each rank's own prompts, before and after an
  optimizer step of the sharded model.
"""
from __future__ import annotations

import json
import os
import socket
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402

from tests.vllm_probe import SPECS, rollouts_match, spread_weights  # noqa: E402
from vcap.grpo.vllm_engine import VLLMEngine  # noqa: E402  (vllm itself is imported on the first rollout)

# a fixed, small KV cache: two engines plus training share the test machine's memory
ENGINE = dict(max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.05,
              llm_kwargs={"kv_cache_memory_bytes": 2**27})
STEPS, PER_RANK, WORLD = 3, 2, 2


def write(workdir: str, name: str, value: dict) -> None:
    with open(os.path.join(workdir, name), "w") as f:
        json.dump(value, f)


def prepare(workdir: str) -> tuple[str, str, str]:
    """The policy (vcap-demo's geometry, spread weights), the training clips, and the joined manifest: the clips
    in the order one process must see them to get, per step, rank 0's batch then rank 1's."""
    from vcap.data.synthetic import ShapesSpec, build_shapes_dataset
    from vcap.model.loading import load_policy, load_processor

    model_dir = os.path.join(workdir, "policy")
    if not os.path.isdir(model_dir):
        model, processor = load_policy("vcap-demo"), load_processor("vcap-demo")
        spread_weights(model, 0)
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    manifest = build_shapes_dataset(os.path.join(workdir, "shapes"),
                                    ShapesSpec(num_train=STEPS * PER_RANK * WORLD, num_val=2, seed=1))
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    train = [r for r in records if r.get("split", "train") == "train"]
    for r in records:
        r["video"] = str(manifest.parent / r["video"])
    # unshuffled, rank r takes dataset positions r, r + 2, ...: step s holds 4s, 4s+2 (rank 0) and 4s+1, 4s+3
    joined = [train[4 * s + k] for s in range(STEPS) for k in (0, 2, 1, 3)]
    joined_manifest = os.path.join(workdir, "joined.jsonl")
    with open(joined_manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in joined + [r for r in records if r.get("split") == "val"])
    return model_dir, str(manifest), joined_manifest


def module_and_data(model_dir: str, manifest: str, batch_size: int, engine: str):
    from vcap.data.datamodule import CaptionDataModule
    from vcap.grpo.module import GRPOModule

    module = GRPOModule(name_or_path=model_dir, num_generations=2, max_completion_length=8, max_new_tokens=8,
                        learning_rate=5e-2, micro_batch_size=4, beta=0.1, log_completions_every=0,
                        rewards={"tests.helpers:LengthReward": 1.0, "format": 1.0},
                        rollout={"class_path": engine, "init_args": ENGINE})
    data = CaptionDataModule(manifest=manifest, processor=model_dir, batch_size=batch_size, val_batch_size=2,
                             num_workers=0, nframes=4, min_pixels=56 * 56, max_pixels=56 * 56, shuffle=False)
    return module, data


class JoinedRanksEngine(VLLMEngine):
    """The vLLM engine of the single-process reference: the first half of a joined batch gets rank 0's seeds, the
    second half rank 1's, as the two ranks drew them."""

    def request_seeds(self, count, step, rank):
        assert rank == 0 and count == PER_RANK * WORLD
        per_rank = [super(JoinedRanksEngine, self).request_seeds(PER_RANK, step, r) for r in range(WORLD)]
        return [seed for seeds in per_rank for seed in seeds]


class LoggedMetrics(L.Callback):
    """Records what rank 0 logs at every training step (the numbers a logger writes)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            row = {k: float(v) for k, v in trainer.logged_metrics.items()}
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": trainer.global_step, **row}) + "\n")


def fit(workdir: str, manifest: str, model_dir: str, devices: int, batch_size: int, engine: str, name: str):
    import torch

    module, data = module_and_data(model_dir, manifest, batch_size, engine)
    pushes = []
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=STEPS, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_checkpointing=False, default_root_dir=workdir,
                        callbacks=[LoggedMetrics(os.path.join(workdir, f"{name}_metrics.jsonl"))])
    module.configure_model()
    engine = module.rollout_engine
    original, original_seeds = engine.push_weights, engine.request_seeds
    engine.push_weights = lambda m, v=None: (pushes.append(v), original(m, v))
    engine.seeds_used = []
    engine.request_seeds = lambda *a: engine.seeds_used.append(original_seeds(*a)) or engine.seeds_used[-1]
    trainer.fit(module, datamodule=data)
    rank = trainer.global_rank
    torch.save({n: p.detach() for n, p in module.model.named_parameters()},
               os.path.join(workdir, f"{name}_rank{rank}.pt"))
    return module, rank, pushes


def check_ddp(workdir: str) -> None:
    import torch

    from tests.video_batches import prompt_batch
    from vcap.grpo.engines import HFEngine
    from vcap.grpo.vision import encode_videos

    if "LOCAL_RANK" not in os.environ:  # rank 0, before Lightning starts rank 1 (which re-runs this script)
        prepare(workdir)
    model_dir, manifest = os.path.join(workdir, "policy"), os.path.join(workdir, "shapes", "manifest.jsonl")
    module, rank, pushes = fit(workdir, manifest, model_dir, 2, PER_RANK, "VLLMEngine", "ddp")
    # each rank's own prompts, greedy: vLLM (the weights it was last pushed) against hf on the trained policy
    model, processor = module.model.eval(), module.processor
    prompts = prompt_batch(processor, SPECS, seed=10 + rank)
    tok = processor.tokenizer
    args = (prompts, 1, 16, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
    with torch.no_grad():
        features = encode_videos(model, prompts)
    want = HFEngine().generate(model, *args, do_sample=False, video_features=features)
    got = module.rollout_engine.generate(model, *args, do_sample=False, video_features=features,
                                         processor=processor, weights_version=module.global_step)
    write(workdir, f"ddp_rank{rank}.json", {
        "rank": rank, "steps": module.global_step, "pushes": pushes, "greedy_equal": rollouts_match(want, got),
        "seeds": module.rollout_engine.seeds_used,
        "distinct_texts": len(set(map(tuple, want.completion_ids.tolist()))), "tokens": want.completion_ids.tolist(),
        "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}})
    print(json.dumps({"check": f"ddp_rank{rank}", "done": True}), flush=True)


def check_joined(workdir: str) -> None:
    model_dir, _, joined = prepare(workdir)
    module, _, pushes = fit(workdir, joined, model_dir, 1, PER_RANK * WORLD,
                            "tests.vllm_distributed_probe.JoinedRanksEngine", "joined")
    print(json.dumps({"check": "joined", "steps": module.global_step, "pushes": pushes}), flush=True)


def fsdp_worker(rank: int, port: int, workdir: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from tests.video_batches import prompt_batch
    from vcap.training.distributed import full_parameters_for_generation
    from vcap.grpo.engines import HFEngine
    from vcap.grpo.rollout import token_logprobs
    from vcap.grpo.vision import encode_videos
    from vcap.grpo.vllm_engine import VLLMEngine
    from vcap.model.loading import load_policy, load_processor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        processor = load_processor("vcap-demo")
        model = load_policy("vcap-demo")
        spread_weights(model, 0)
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        for block in model.model.visual.blocks:
            fully_shard(block)
        fully_shard(model)
        model.eval()
        tok = processor.tokenizer
        prompts = prompt_batch(processor, SPECS, seed=20 + rank)  # each rank its own prompts
        args = (prompts, 1, 16, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
        engine, hf = VLLMEngine(**ENGINE), HFEngine()
        rounds = []
        for version in (0, 1):
            with torch.no_grad(), full_parameters_for_generation(model):  # the ViT's root weights, for encoding
                features = encode_videos(model, prompts)
            want = hf.generate(model, *args, do_sample=False, video_features=features)
            got = engine.generate(model, *args, do_sample=False, video_features=features, processor=processor,
                                  weights_version=version)
            rounds.append({"equal": rollouts_match(want, got), "tokens": want.completion_ids.tolist()})
            if version == 0:  # one AdamW step on the sharded policy (gradients averaged over both ranks)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
                logp = token_logprobs(model, want.inputs, want.completion_ids, want.completion_mask)
                (-(logp * want.completion_mask).sum() / want.completion_mask.sum()).backward()
                opt.step()
        write(workdir, f"fsdp_rank{rank}.json", {"rank": rank, "rounds": rounds})
        engine.llm.llm_engine.engine_core.shutdown()  # vLLM's teardown ends the default process group too
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_fsdp(workdir: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fsdp_worker, args=(port, workdir), nprocs=2, join=True)
    print(json.dumps({"check": "fsdp", "done": True}), flush=True)


CHECKS = {"ddp": check_ddp, "joined": check_joined, "fsdp": check_fsdp}

if __name__ == "__main__":
    CHECKS[sys.argv[2]](sys.argv[1])
