"""``GRPOModule``: group sampling and the GRPO loss, one optimizer step per update."""
from __future__ import annotations

import copy
import json
import logging
import time
from typing import Literal

import torch
from jsonargparse import lazy_instance

from vcap.training.distributed import share_of_global_counts
from vcap.grpo.engines import RolloutEngine, VcapEngine, build_engine, engine_config
from vcap.grpo.losses import REWARD_AGGREGATIONS, aggregate_rewards, get_loss_aggregation, group_advantages, grpo_loss
from vcap.grpo.prefix import check_shared_prefix_support
from vcap.grpo.rollout import Rollout, chunked_logprobs, sequence_logprobs
from vcap.grpo.stats import mean_over_iterations, truncated
from vcap.grpo.vision import encode_videos
from vcap.methods.policy import CaptionPolicyModule
from vcap.training.rank_metrics import Tally, all_ranks, mean_of
from vcap.errors import UsageError
from vcap.rewards import RewardOutput, parse_completion
from vcap.rewards.base import PendingRewards, ScoredRewards

log = logging.getLogger(__name__)
# how each engine statistic merges over ranks (others: mean): the step waits for the slowest rank's rollout, and
# the job's throughput is every rank's tokens per second together
ROLLOUT_REDUCE = {"seconds": "max", "decode_steps": "max", "tokens_per_s": "sum"}


def samples_due(global_step: int, num_iterations: int, every: int) -> bool:
    """Whether a rollout's samples are written: the 1st rollout, then every ``every``-th (0: never). It is asked
    after the rollout's ``num_iterations`` optimizer steps, so ``global_step`` already counts them."""
    return bool(every) and (global_step // num_iterations - 1) % every == 0


class GRPOModule(CaptionPolicyModule):
    """GRPO over structured-thinking captions (names follow TRL where it has one).

    Args:
        num_generations: G completions sampled per prompt.
        beta: k3 KL coefficient; 0 loads no reference model.
        epsilon: lower clip range of the probability ratio (1 - epsilon).
        epsilon_high: upper clip range of the ratio (1 + epsilon_high); null uses epsilon (DAPO's clip-higher: 0.28).
        loss_type: 'grpo' (sequence mean of token means), 'dapo' (token mean) or 'dr_grpo' (token sum / constant).
        scale_rewards: 'group' divides advantages by the group std; 'none' only centres them (Dr. GRPO).
        reward_aggregation: how the rewards combine before the advantage. 'sum' (default): the weighted sum of the
            raw scores. 'normalize_then_sum' (GDPO; TRL's multi_objective_aggregation of that name): each reward is
            first normalised within its group, (r - group mean) / (group std + 1e-4), sample std, 0 where the
            reward is constant in the group, then the weighted sum of those is taken, so a reward with a wide spread
            does not drown the others (``vcap.grpo.losses.normalize_then_sum``). The usual advantage then follows
            from that sum: centring is a no-op (each normalised reward already has group mean 0), and with
            scale_rewards 'group' the sum is divided by its group std, which keeps the advantage at unit scale
            whatever the number of rewards and their weights (so epsilon and beta keep their meaning). TRL divides
            by the std over the whole batch instead, which also keeps how much larger one group's spread is than
            another's; vcap keeps the per-group scaling of its 'sum' path, computed within one rank, independent
            of the number of ranks. Failed judgments and rewards without reference count as under 'sum'; a
            completion dropped from its group (on_failure: exclude) is out of every reward's statistics. Logs
            each reward's raw mean (train/reward/<name>, as always), its normalised mean
            (train/reward_normalized/<name>: 0 up to rounding by construction, a check) and its mean absolute
            normalised score (train/reward_normalized_abs/<name>: how much it moves the advantages; 0 when it is
            constant in every group).
        overlap_rewards: send every reward's work at once right after the rollout and compute the fixed log-prob
            passes (old and reference: they depend only on the tokens and fixed weights) while the judges answer,
            joining just before the advantages; false scores the rewards first, then runs the passes (the
            sequential twin: the same numbers and weights, tests/test_reward_overlap_step.py). Logged:
            step/passes_seconds and step/reward_wait_seconds (the judge time the passes did not hide).
        max_completion_length: new-token budget per completion.
        temperature: sampling temperature of the rollouts (log-probs are computed at the same temperature).
        top_p: nucleus sampling threshold of the rollouts (1.0 disables it).
        num_iterations: μ optimizer steps per rollout, with stored old log-probs.
        micro_batch_size: sequences per forward/backward pass (gradients accumulate over the rollout).
        max_grad_norm: gradient clipping (0 disables).
        log_completions_every: write sample completions every N rollouts to ``samples.jsonl`` (0 disables).
        shared_prefix: log-prob passes run each prompt once per micro-batch, its completions attending to it
            (exact; sdpa/eager); false repeats the prompt per completion. A micro_batch_size that is a multiple
            of num_generations runs each prompt exactly once per pass.
        rollout: the rollout engine with its options (``vcap.grpo.engines``): ``vcap`` prefills each prompt once
            and decodes its G completions from a shared cache; ``hf`` is one ``generate(num_return_sequences=G)``
            call; ``vllm`` is a colocated vLLM. A short name takes the defaults; ``class_path: VLLMEngine`` with
            ``init_args`` sets options (``sampling`` passes extra sampling options, e.g. min_new_tokens).
    """

    def __init__(self, num_generations: int = 8, beta: float = 0.04, epsilon: float = 0.2,
                 epsilon_high: float | None = None, loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo",
                 scale_rewards: Literal["group", "none"] = "group",
                 reward_aggregation: Literal["sum", "normalize_then_sum"] = "sum", overlap_rewards: bool = True,
                 max_completion_length: int = 1024, temperature: float = 1.0, top_p: float = 1.0,
                 num_iterations: int = 1, micro_batch_size: int = 8, max_grad_norm: float = 1.0,
                 log_completions_every: int = 50, shared_prefix: bool = True,
                 rollout: RolloutEngine | str = lazy_instance(VcapEngine),
                 **kwargs):
        if "rollout_engine" in kwargs:
            raise ValueError(f"rollout_engine was renamed: use rollout: {kwargs['rollout_engine']} "
                             "(or class_path/init_args to set the engine's options)")
        super().__init__(**kwargs)
        get_loss_aggregation(loss_type)  # fail at config time on a bad name
        if reward_aggregation not in REWARD_AGGREGATIONS:
            raise UsageError(f"reward_aggregation must be one of {list(REWARD_AGGREGATIONS)}, got {reward_aggregation!r}")
        self.rollout_engine = build_engine(rollout)
        self.hparams["rollout"] = engine_config(self.rollout_engine)  # checkpoints store options, not the engine
        if num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO compares completions within a group")
        if num_iterations < 1 or micro_batch_size < 1:
            raise ValueError("num_iterations and micro_batch_size must be >= 1")
        self.automatic_optimization = False
        self.ref_model = None
        self.pending_rewards: PendingRewards | ScoredRewards | None = None  # this step's rewards (step_timings)
        self.passes_seconds = 0.0  # this step's fixed log-prob passes

    def configure_model(self) -> None:
        super().configure_model()
        if self.hparams.shared_prefix:
            check_shared_prefix_support(self.model)
        if self.hparams.beta != 0 and self.peft_config is None and self.ref_model is None:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    # -- the algorithm ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.count_skips(batch)
        if batch["inputs"] is None:
            self.step_without_data()
            return self.log_global(self.skipped_tally())  # joins the other ranks' metric exchange
        hp = self.hparams
        videos = encode_videos(self.model, batch["inputs"])  # once per step; None when the tower trains
        rollout = self.rollout_engine.generate(self.model, batch["inputs"], hp.num_generations,
                                               hp.max_completion_length, self.eos_token_ids,
                                               self.tokenizer.pad_token_id, hp.temperature, hp.top_p,
                                               video_features=videos, processor=self.processor,
                                               weights_version=self.global_step)
        texts = self.clean(self.decode(rollout.completion_ids))
        records = [r for r in batch["records"] for _ in range(hp.num_generations)]
        pending = self.score_rewards([parse_completion(t) for t in texts], records)  # judges answer meanwhile
        old_logp, ref_logp = self.fixed_logprobs(rollout)
        rewards = pending.result()
        valid = ~rewards.excluded
        values = aggregate_rewards(hp.reward_aggregation, rewards.scores, rewards.scores_by, self.reward_set.weights,
                                   hp.num_generations, valid)
        adv = group_advantages(values.values, hp.num_generations, hp.scale_rewards, valid=valid)
        stats = [self.policy_update(rollout, adv.advantages, old_logp, ref_logp, valid)
                 for _ in range(hp.num_iterations)]
        self.log_rollout(rollout, rewards, adv, mean_over_iterations(stats), texts, records, values.normalized)

    # -- pieces -------------------------------------------------------------------------------------
    def score_rewards(self, parsed: list, records: list[dict]) -> PendingRewards | ScoredRewards:
        """The rewards, sent off (``overlap_rewards``) or scored now; ``.result()`` gives them either way."""
        if self.hparams.overlap_rewards:
            self.pending_rewards = self.reward_set.submit(parsed, records)
        else:
            self.pending_rewards = ScoredRewards(self.reward_set, parsed, records)
        return self.pending_rewards

    @torch.no_grad()
    def fixed_logprobs(self, rollout: Rollout) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Old-policy log-probs (only needed when μ > 1) and reference log-probs (only when beta != 0)."""
        start = time.perf_counter()
        try:
            return self._fixed_logprobs(rollout)
        finally:
            self.passes_seconds = time.perf_counter() - start

    def _fixed_logprobs(self, rollout: Rollout) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        hp = self.hparams
        args = (rollout, hp.micro_batch_size, hp.temperature, hp.shared_prefix)
        old = chunked_logprobs(self.model, *args) if hp.num_iterations > 1 else None
        ref = None
        if hp.beta != 0:
            if self.ref_model is not None:  # shares the frozen tower, hence the rollout's video features
                ref = chunked_logprobs(self.ref_model, *args)
            else:  # PEFT: the base model is the policy with adapters off
                with self.model.disable_adapter():
                    ref = chunked_logprobs(self.model, *args)
        return old, ref

    def policy_update(self, rollout: Rollout, advantages: torch.Tensor, old_logp: torch.Tensor | None,
                      ref_logp: torch.Tensor | None, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step on the whole rollout, accumulated over micro-batches."""
        hp = self.hparams
        opt, sched = self.optimizers(), self.lr_schedulers()
        mask = rollout.completion_mask * valid.to(rollout.completion_mask).unsqueeze(1)
        n, mb = mask.shape[0], hp.micro_batch_size
        # normalise by the whole batch over all ranks (each rank's share), not by this rank's own counts
        sequences, tokens = share_of_global_counts(
            torch.tensor([n, mask.sum().item()], dtype=torch.float64, device=self.device)).tolist()
        totals = dict(total_sequences=sequences, total_tokens=tokens or 1.0)
        advantages = advantages.to(self.device)
        stats: dict[str, torch.Tensor] = {}
        opt.zero_grad()
        for start in range(0, n, mb):
            stop = min(start + mb, n)
            m = mask[start:stop]
            logp = sequence_logprobs(self.model, rollout, start, stop, hp.temperature, hp.shared_prefix)
            old = logp.detach() if old_logp is None else old_logp[start:stop]
            ref = None if ref_logp is None else ref_logp[start:stop]
            loss, part = grpo_loss(logp, old, ref, advantages[start:stop], m, loss_type=hp.loss_type, beta=hp.beta,
                                   epsilon=hp.epsilon, epsilon_high=hp.epsilon_high,
                                   max_completion_length=hp.max_completion_length, **totals)
            self.manual_backward(loss)
            for key, value in {"loss": loss.detach(), **part}.items():
                stats[key] = stats.get(key, 0.0) + value
        self.sync_and_clip_gradients(opt)
        opt.step()
        sched.step()
        return stats

    def log_rollout(self, rollout: Rollout, rewards: RewardOutput, adv, stats: dict, texts: list[str],
                    records: list[dict], normalized: dict[str, torch.Tensor] | None = None) -> None:
        lengths = rollout.completion_mask.sum(dim=1).float()
        grouped = rewards.scores.view(-1, self.hparams.num_generations)
        # loss, KL and clip fraction are already each rank's share of the joined batch's value (normalised by the
        # global counts / world size, see policy_update): the plain mean over ranks is the joined batch's value
        tallies = {
            "train/reward": mean_of(rewards.scores[~rewards.excluded]),  # the rewards the update used
            "train/reward_std": mean_of(grouped.std(dim=1)),
            "train/frac_reward_zero_std": mean_of(adv.zero_std.float()),
            "train/completion_length": mean_of(lengths),
            "train/clipped_completions": mean_of(truncated(rollout.completion_ids, rollout.completion_mask,
                                                           self.eos_token_ids).float()),
            "train/reward_failures": Tally(float(len(rewards.failures)), reduce="sum"),
            "train/judge_failures": Tally(float(rewards.failed.sum()), reduce="sum"),
            # completions whose record has no reference for a reward (events: [] ...): that reward is n/a for them
            **{f"train/{name}_no_reference": Tally(float(mask.sum()), reduce="sum")
               for name, mask in rewards.no_reference_by.items()},
            "train/lr": Tally(self.lr_schedulers().get_last_lr()[0]),
            **{f"train/{k}": Tally(float(v)) for k, v in stats.items()},
            # failed judgments are NaN: unknown, left out of the mean (NaN when the whole batch failed)
            **{f"train/reward/{k}": mean_of(v[~v.isnan()]) for k, v in rewards.components.items()},
            # normalize_then_sum: each reward's group-normalised score over the completions the update used
            **{f"train/reward_normalized/{k}": mean_of(z[~rewards.excluded]) for k, z in (normalized or {}).items()},
            **{f"train/reward_normalized_abs/{k}": mean_of(z[~rewards.excluded].abs())
               for k, z in (normalized or {}).items()},
            **{f"rollout/{k}": Tally(float(v), reduce=ROLLOUT_REDUCE.get(k, "mean"))
               for k, v in getattr(self.rollout_engine, "last_stats", {}).items()},  # a user engine may keep none
            **self.step_timings(),
            **self.skipped_tally(),
        }
        self.log_global(tallies)
        if self.trainer.is_global_zero and samples_due(self.global_step, self.hparams.num_iterations,
                                                       self.hparams.log_completions_every):
            self.write_samples(texts, records, rewards)

    def step_timings(self) -> dict[str, Tally]:
        """Seconds of the fixed passes and of the wait for the rewards after them (slowest rank)."""
        if self.pending_rewards is None:
            return {}
        return {"step/passes_seconds": Tally(self.passes_seconds, reduce="max"),
                "step/reward_wait_seconds": Tally(float(self.pending_rewards.wait_seconds), reduce="max")}

    def log_global(self, tallies: dict[str, Tally]) -> None:
        """Log this step's numbers over every rank's samples (a collective: each rank calls it once per step)."""
        metrics = all_ranks(tallies)
        self.log_dict(metrics, batch_size=1, prog_bar=False)
        if "train/reward" in metrics:
            self.log("reward", metrics["train/reward"], prog_bar=True, batch_size=1, logger=False)

    def write_samples(self, texts: list[str], records: list[dict], rewards: RewardOutput, k: int = 4) -> None:
        log_dir = self.samples_dir  # trainer.log_dir is a collective under DDP: read once by all ranks
        log_dir.mkdir(parents=True, exist_ok=True)
        reasons = dict(rewards.failures)
        with open(log_dir / "samples.jsonl", "a") as f:
            for i in range(min(k, len(texts))):
                f.write(json.dumps({"step": self.global_step, "id": records[i].get("id"), "reward": float(rewards.scores[i]),
                                    "completion": texts[i], "failure": reasons.get(i)}) + "\n")
        log.info("step %d sample (reward %.2f): %s", self.global_step, float(rewards.scores[0]), texts[0][:200])
