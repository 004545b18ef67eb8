"""``SFTModule``: supervised warm start on structured-thinking targets built from the manifest."""
from __future__ import annotations

from typing import Literal

import torch

from vcap.grpo.rollout import token_logprobs
from vcap.methods.policy import CaptionPolicyModule
from vcap.training.rank_metrics import Tally, all_ranks
from vcap.rewards.parsing import format_target, subjects_from_json


class SFTModule(CaptionPolicyModule):
    """Teacher-forced NLL of ``<think>{structure}</think><answer>{caption}</answer><eos>``.

    Args:
        max_target_length: targets longer than this many tokens are truncated.
        learning_rate: peak learning rate of AdamW (higher than GRPO's: SFT targets are exact).
        target_source: 'sft' trains on a record's ``sft_structure`` / ``sft_caption`` when present (e.g. human
            captions that omit details, while ``structure`` / ``caption`` hold the complete ground truth that
            the rewards score against), else on ``structure`` / ``caption``; 'reference' always on the latter.
    """

    def __init__(self, max_target_length: int = 512, learning_rate: float = 1e-5,
                 target_source: Literal["sft", "reference"] = "sft", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if target_source not in ("sft", "reference"):
            raise ValueError(f"--model.init_args.target_source must be 'sft' or 'reference', got {target_source!r}")

    def target_fields(self, record: dict) -> tuple[list, str]:
        """(structure, caption) that this record teaches."""
        use_sft = self.hparams.target_source == "sft"
        structure = record.get("sft_structure", record.get("structure")) if use_sft else record.get("structure")
        caption = record.get("sft_caption", record.get("caption")) if use_sft else record.get("caption")
        if structure is None or caption is None:
            raise KeyError(f"SFT needs 'structure' and 'caption' (or 'sft_structure' and 'sft_caption') in every "
                           f"record; {record.get('id')} lacks one")
        return structure, caption

    def targets(self, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = []
        for r in records:
            structure, caption = self.target_fields(r)
            texts.append(format_target(subjects_from_json(structure), caption) + self.tokenizer.eos_token)
        enc = self.tokenizer(texts, add_special_tokens=False, padding="longest", padding_side="right",
                             truncation=True, max_length=self.hparams.max_target_length, return_tensors="pt")
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def training_step(self, batch: dict, batch_idx: int):
        self.count_skips(batch)
        if batch["inputs"] is None:
            self.log_dict(all_ranks(self.skipped_tally()), batch_size=1)  # joins the other ranks' exchange
            return None
        ids, mask = self.targets(batch["records"])
        logp = token_logprobs(self.model, batch["inputs"], ids, mask)
        loss = -(logp * mask).sum() / mask.sum()
        # the token mean over every rank's targets: each rank's mean weighted by its tokens
        tokens = float(mask.sum())
        metrics = all_ranks({"train/loss": Tally(float(loss.detach()) * tokens, tokens), **self.skipped_tally()})
        self.log("train/loss", metrics.pop("train/loss"), prog_bar=True, batch_size=1)
        self.log_dict(metrics, batch_size=1)
        return loss
