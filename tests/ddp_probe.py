"""Probes loaded by `vcap fit/validate` subprocesses in tests/test_distributed.py (class_path targets).

Each appends JSON lines to the file named by $VCAP_PROBE_LOG, tagged with the process's global rank.
"""
from __future__ import annotations

import json
import os


import lightning as L

from vcap.grpo.engines import HFEngine
from vcap.grpo.module import GRPOModule
from vcap.judges.lexical import LexicalJudge


def probe(kind: str, **fields) -> None:
    path = os.environ.get("VCAP_PROBE_LOG")
    if path:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "rank": rank, **fields}) + "\n")


class RecordingGRPOModule(GRPOModule):
    """GRPOModule that logs each training batch's record ids and, at the end, a checksum of its weights."""

    def training_step(self, batch, batch_idx):
        probe("batch", step=self.global_step, ids=[r["id"] for r in batch["records"]])
        return super().training_step(batch, batch_idx)

    def log_rollout(self, rollout, rewards, *args, **kwargs):
        probe("local_reward", step=self.global_step, mean=float(rewards.scores.mean()), n=len(rewards.scores))
        return super().log_rollout(rollout, rewards, *args, **kwargs)

    def on_train_end(self) -> None:
        total = sum(p.detach().double().sum().item() for p in self.model.parameters())
        probe("weights", checksum=total, step=self.global_step)
        super().on_train_end()


class CountingJudge(LexicalJudge):
    """The lexical judge, logging every premise it is asked about."""

    def entail_many(self, requests):
        for premise, hypotheses in requests:
            probe("judge", premise=premise, n=len(hypotheses))
        return super().entail_many(requests)


class GreedyGroupsEngine(HFEngine):
    """Rollouts that do not depend on the random state, so that two runs can be compared number for number: each
    prompt's greedy completion, its g-th copy with the last 2g tokens padded away (lengths, hence LengthReward,
    differ within the group)."""

    def completion_ids(self, model, inputs, num_generations, max_new_tokens, eos_token_ids, pad_token_id, *args,
                       **context):
        temperature, top_p, do_sample, video_features = args
        greedy = super().completion_ids(model, inputs, 1, max_new_tokens, eos_token_ids, pad_token_id, temperature,
                                        top_p, False, video_features, **context)
        rows = greedy.repeat_interleave(num_generations, dim=0)
        for g in range(1, num_generations):
            rows[g::num_generations, max(rows.shape[1] - 2 * g, 1):] = pad_token_id
        return rows


class LoggedMetrics(L.Callback):
    """What rank 0 logs at each training step: the numbers a logger writes."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            probe("logged", step=trainer.global_step, metrics={k: float(v) for k, v in trainer.logged_metrics.items()})
