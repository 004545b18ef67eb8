"""``SFTModule``: supervised warm start on structured-thinking targets built from the manifest."""
from __future__ import annotations

import torch

from vcap.grpo.rollout import token_logprobs
from vcap.policy import CaptionPolicyModule
from vcap.rewards.parsing import format_target, subjects_from_json


class SFTModule(CaptionPolicyModule):
    """Teacher-forced NLL of ``<think>{structure}</think><answer>{caption}</answer><eos>``.

    Args:
        max_target_length: targets longer than this many tokens are truncated.
        learning_rate: peak learning rate of AdamW (higher than GRPO's: SFT targets are exact).
    """

    def __init__(self, max_target_length: int = 512, learning_rate: float = 1e-5, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)

    def targets(self, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = []
        for r in records:
            if "structure" not in r or "caption" not in r:
                raise KeyError(f"SFT needs 'structure' and 'caption' in every record; {r.get('id')} lacks one")
            texts.append(format_target(subjects_from_json(r["structure"]), r["caption"]) + self.tokenizer.eos_token)
        enc = self.tokenizer(texts, add_special_tokens=False, padding="longest", padding_side="right",
                             truncation=True, max_length=self.hparams.max_target_length, return_tensors="pt")
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def training_step(self, batch: dict, batch_idx: int):
        self.count_skips(batch)
        if batch["inputs"] is None:
            return None
        ids, mask = self.targets(batch["records"])
        logp = token_logprobs(self.model, batch["inputs"], ids, mask)
        loss = -(logp * mask).sum() / mask.sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["records"]))
        return loss
