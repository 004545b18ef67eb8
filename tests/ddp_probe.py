"""Probes loaded by `vcap fit/validate` subprocesses in tests/test_distributed.py (class_path targets).

Each appends JSON lines to the file named by $VCAP_PROBE_LOG, tagged with the process's global rank.
"""
from __future__ import annotations

import json
import os


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
