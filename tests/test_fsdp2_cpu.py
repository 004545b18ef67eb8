"""FSDP2 (torch ``fully_shard``) on CPU/gloo with 2 processes: vcap's rollout and log-prob code on a sharded
tiny policy. Greedy generation under sharding equals the unsharded model's, one fp32-master AdamW step
on the sharded model equals the same step taken unsharded, and the export written from the shards (what
``on_train_end`` runs under FSDP) equals the single-process export, full fine-tuning and LoRA. (Lightning's FSDP
strategies need CUDA; this checks the model-side code those recipes run.)"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)
fully_shard = fsdp.fully_shard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollout_and_step(model, inputs, eos, pad):
    from vcap.grpo.rollout import token_logprobs
    from vcap.grpo.engines import sample_completions

    rollout = sample_completions(model, inputs, 1, 6, eos, pad, do_sample=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logp = token_logprobs(model, rollout.inputs, rollout.completion_ids, rollout.completion_mask)
    loss = -(logp * rollout.completion_mask).sum() / rollout.completion_mask.sum()
    loss.backward()
    opt.step()
    return rollout.completion_ids, float(loss)


def worker(rank: int, port: int, tiny: str, batch_file: str, out_file: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from vcap.model.loading import load_policy, load_processor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = load_policy(tiny)
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        for block in model.model.visual.blocks:
            fully_shard(block)
        fully_shard(model)
        inputs = torch.load(batch_file)
        tok = load_processor(tiny).tokenizer
        ids, loss = rollout_and_step(model, inputs, [tok.eos_token_id], tok.pad_token_id)
        full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save({"ids": ids, "loss": loss, "params": full}, out_file)
    finally:
        dist.destroy_process_group()


def test_fsdp2_generation_and_step_match_unsharded(tmp_path, tiny_path, shapes_manifest):
    from vcap.data.datamodule import CaptionDataModule
    from vcap.model.loading import load_policy, load_processor

    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=2, num_workers=0,
                             nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    data.setup("fit")
    inputs = next(iter(data.train_dataloader()))["inputs"]
    torch.save(inputs, tmp_path / "batch.pt")
    mp.spawn(worker, args=(free_port(), str(tiny_path), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")),
             nprocs=2, join=True)
    sharded = torch.load(tmp_path / "out.pt")

    torch.manual_seed(0)
    model = load_policy(str(tiny_path))
    tok = load_processor(str(tiny_path)).tokenizer
    ids, loss = rollout_and_step(model, inputs, [tok.eos_token_id], tok.pad_token_id)
    assert torch.equal(sharded["ids"], ids)  # generation saw the full weights
    assert sharded["loss"] == pytest.approx(loss, abs=1e-5)
    moved = 0
    for name, param in model.named_parameters():
        torch.testing.assert_close(sharded["params"][name], param.detach(), rtol=1e-5, atol=1e-6, msg=name)
        moved += int(param.requires_grad)
    assert moved > 0


def shard(model) -> None:
    """FSDP2 as the recipe wraps it: each decoder layer and vision block, then the root."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in core.model.language_model.layers:
        fully_shard(layer)
    for block in core.model.visual.blocks:
        fully_shard(block)
    fully_shard(model)


def trained_module(tiny: str, lora: bool, inputs, sharded: bool):
    """The policy module (full fine-tuning or LoRA) after one AdamW step on ``inputs``."""
    from peft import LoraConfig

    from vcap.methods.policy import CaptionPolicyModule

    torch.manual_seed(0)
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False) if lora else None
    module = CaptionPolicyModule(name_or_path=tiny, peft=peft)
    module.configure_model()
    if sharded:
        shard(module.model)
    tok = module.processor.tokenizer
    rollout_and_step(module.model, inputs, [tok.eos_token_id], tok.pad_token_id)
    return module


def export_worker(rank: int, port: int, tiny: str, batch_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vcap.model.export_sharded import export_from_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        inputs = torch.load(batch_file)
        for kind in ("full", "lora"):  # the same sharding code on_train_end runs under FSDP
            module = trained_module(tiny, kind == "lora", inputs, sharded=True)
            export_from_shards(module, module.model, os.path.join(out_dir, kind))
    finally:
        dist.destroy_process_group()


def test_fsdp_export_equals_the_single_process_export(tmp_path, tiny_path, shapes_manifest):
    """2 gloo ranks, FSDP2, one step, then the export from shards: it reloads to the greedy tokens of the same
    model trained in one process, with the same files and weights as that process's export."""
    import json

    from vcap.data.datamodule import CaptionDataModule
    from vcap.grpo.engines import sample_completions
    from vcap.model.loading import load_policy, load_processor

    data = CaptionDataModule(manifest=str(shapes_manifest), processor=str(tiny_path), batch_size=4, num_workers=0,
                             nframes=4, min_pixels=56 * 56, max_pixels=56 * 56)
    data.setup("fit")
    inputs = next(iter(data.train_dataloader()))["inputs"]
    torch.save(inputs, tmp_path / "batch.pt")
    mp.spawn(export_worker, args=(free_port(), str(tiny_path), str(tmp_path / "batch.pt"), str(tmp_path / "sharded")),
             nprocs=2, join=True)
    for kind in ("full", "lora"):
        module = trained_module(str(tiny_path), kind == "lora", inputs, sharded=False)
        single, sharded = tmp_path / "single" / kind, tmp_path / "sharded" / kind
        module.export(single)
        assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in single.iterdir())
        for name in ("vcap_preprocessing.json", "chat_template.jinja", "config.json"):
            assert (sharded / name).read_text() == (single / name).read_text(), name
        served, reference = load_policy(str(sharded)).eval(), load_policy(str(single)).eval()
        assert not any("lora_" in n for n, _ in served.named_parameters())  # merged
        expected = dict(reference.named_parameters())
        for name, param in served.named_parameters():
            torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6, msg=name)
        base = dict(load_policy(str(tiny_path)).named_parameters())
        assert any(not torch.allclose(p, base[n]) for n, p in served.named_parameters())  # the step is in it
        tok = load_processor(str(sharded)).tokenizer
        greedy = [sample_completions(m, inputs, 1, 8, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
                  .completion_ids for m in (served, module.model.eval())]
        assert torch.equal(*greedy), kind
        assert json.loads((sharded / "config.json").read_text())["architectures"] == ["Qwen2VLForConditionalGeneration"]


def vcap_engine_worker(rank: int, port: int, sft: str, batch_file: str, out_file: str, eos: int) -> None:
    import datetime

    import torch.distributed as dist

    from vcap.grpo.engines import VcapEngine
    from vcap.model.loading import load_policy, load_processor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left waiting in an all-gather fails within a minute instead of hanging the suite
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        model = load_policy(sft).eval()
        shard(model)
        from vcap.grpo.rollout import select

        inputs = select(torch.load(batch_file), rank, rank + 1)  # each rank its own video
        tok = load_processor(sft).tokenizer
        ids = VcapEngine().generate(model, inputs, 1, 48, [eos], tok.pad_token_id,
                                    do_sample=False).completion_ids
        torch.save(ids, f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp_vcap_engine_ranks_whose_completions_end_at_different_steps(tmp_path, shapes_manifest):
    """The default engine under FSDP: rank 0's completion ends before rank 1's (checked on the unsharded model),
    yet both ranks finish, each with the unsharded model's greedy tokens."""
    from vcap.data.datamodule import CaptionDataModule
    from vcap.grpo.engines import VcapEngine
    from vcap.grpo.rollout import select
    from vcap.model.loading import load_policy, load_processor, resolve_model_path

    sft = str(resolve_model_path("vcap-tiny-sft"))
    data = CaptionDataModule(manifest=str(shapes_manifest), processor=sft, batch_size=8, num_workers=0,
                             nframes=8, min_pixels=56 * 56, max_pixels=56 * 56, shuffle=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))["inputs"]
    model, tok = load_policy(sft).eval(), load_processor(sft).tokenizer
    greedy = [VcapEngine().generate(model, select(batch, i, i + 1), 1, 48, [tok.eos_token_id], tok.pad_token_id,
                                    do_sample=False).completion_ids[0].tolist() for i in range(8)]
    # the warm start's captions all take 28 tokens: a word of one caption that another lacks serves as the EOS,
    # so the two ranks' completions end at different decode steps
    eos, pair = next((t, (i, j)) for t in sorted({t for g in greedy for t in g}) for i in range(8) for j in range(8)
                     if t in greedy[i] and t not in greedy[j])
    alone = {i: VcapEngine().generate(model, select(batch, i, i + 1), 1, 48, [eos], tok.pad_token_id,
                                      do_sample=False) for i in pair}
    assert int(alone[pair[0]].completion_mask.sum()) < int(alone[pair[1]].completion_mask.sum())
    two = {k: torch.cat([select(batch, i, i + 1)[k] for i in pair]) for k in select(batch, 0, 1)}
    torch.save(two, tmp_path / "batch.pt")
    mp.spawn(vcap_engine_worker, args=(free_port(), sft, str(tmp_path / "batch.pt"), str(tmp_path / "ids"), eos),
             nprocs=2, join=True)
    for rank, i in enumerate(pair):
        got = torch.load(tmp_path / f"ids.{rank}")
        want = alone[i].completion_ids
        assert torch.equal(got[:, :want.shape[1]], want) and (got[:, want.shape[1]:] == tok.pad_token_id).all()


def perturbed_module(tiny: str):
    """The policy module with its language model's matrices re-drawn from a seed: weights no checkpoint has."""
    from vcap.methods.policy import CaptionPolicyModule

    module = CaptionPolicyModule(name_or_path=tiny)
    module.configure_model()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.model.model.language_model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


def fsdp1_worker(rank: int, port: int, tiny: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLVisionBlock

    from vcap.grpo.vllm_engine import merged_weights
    from vcap.model.export_sharded import export_from_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        module = perturbed_module(tiny)
        # as Lightning's FSDPStrategy (grpo_fsdp.yaml) wraps: the LightningModule is the root, decoder layers and
        # vision blocks are units, original parameters kept; training_step runs inside the root's forward
        module.forward = lambda: {n: t.clone() for n, t in merged_weights(module.model)}  # the vLLM push's tensors
        root = FullyShardedDataParallel(module, auto_wrap_policy=ModuleWrapPolicy({Qwen2VLDecoderLayer,
                                                                                   Qwen2VLVisionBlock}),
                                        use_orig_params=True, device_id=torch.device("cpu"))
        pushed = root()
        torch.save(pushed, os.path.join(out_dir, f"pushed.{rank}.pt"))
        export_from_shards(module, root, os.path.join(out_dir, "export"))  # what on_train_end runs
    finally:
        dist.destroy_process_group()


def test_fsdp1_as_lightning_wraps_it_pushes_and_exports_full_weights(tmp_path, tiny_path):
    """FSDP1 (Lightning's FSDPStrategy, which refuses a CPU accelerator, wraps this way) on 2 gloo ranks: inside
    the root's forward the vLLM push gets every full weight under its checkpoint name, and the export from shards
    equals the single-process export."""
    from vcap.grpo.vllm_engine import merged_weights
    from vcap.model.loading import load_policy

    mp.spawn(fsdp1_worker, args=(free_port(), str(tiny_path), str(tmp_path)), nprocs=2, join=True)
    module = perturbed_module(str(tiny_path))
    expected = dict(merged_weights(module.model))
    for rank in (0, 1):
        pushed = torch.load(tmp_path / f"pushed.{rank}.pt")
        assert set(pushed) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(pushed[name], tensor), name
    module.export(tmp_path / "single")
    served, single = load_policy(str(tmp_path / "export")), dict(load_policy(str(tmp_path / "single")).named_parameters())
    for name, param in served.named_parameters():
        assert torch.equal(param, single[name]), name
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
