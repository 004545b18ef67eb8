"""A benchmark validated on several ranks: each rank captions its share, rank 0 judges them all, once."""
from __future__ import annotations

import torch.distributed as dist

from vcap.training.distributed import is_distributed


def finish_benchmark(evaluator, records: list[dict], model: str) -> dict[str, float]:
    """The benchmark's flat metrics, the same on every rank. Under DDP/FSDP every rank holds only the captions of
    its own shard: they are gathered to rank 0, which alone judges and writes the results (a judge call per
    sample, not one per rank, and no rank reports another's samples as missing). A collective."""
    if not is_distributed():
        results = evaluator.finish(records, model)
        evaluator.check_scored(results)  # every sample failed: a non-zero exit, not a table of 0s
        return evaluator.metrics(results)
    shards: list = [None] * dist.get_world_size()
    dist.all_gather_object(shards, evaluator.generations)
    metrics = None
    if dist.get_rank() == 0:
        for shard in shards:  # the sampler's padding captioned a sample twice: the first caption stays
            for sample_id, text in shard.items():
                evaluator.generations.setdefault(sample_id, text)
        results = evaluator.finish(records, model)
        try:
            evaluator.check_scored(results)
            metrics = evaluator.metrics(results)
        except Exception as err:  # noqa: BLE001 - every rank raises it, instead of waiting for rank 0
            metrics = err
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
