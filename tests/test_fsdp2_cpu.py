"""FSDP2 (torch ``fully_shard``) on CPU/gloo with 2 processes: vcap's rollout and log-prob code on a sharded
tiny policy. Greedy generation under sharding equals the unsharded model's, and one fp32-master AdamW step
on the sharded model equals the same step taken unsharded. (Lightning's FSDP strategies need CUDA; this
checks the model-side code those recipes run.)"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollout_and_step(model, inputs, eos, pad):
    from vcap.grpo.rollout import sample_completions, token_logprobs

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
