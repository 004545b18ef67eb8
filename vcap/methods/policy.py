"""``CaptionPolicyModule``: what SFT and GRPO share — model loading, optimizer, greedy validation, predict."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from peft import PeftConfig

from vcap.bench.distributed import finish_benchmark
from vcap.bench.identity import open_outputs
from vcap.training.ckpt_options import use_current_optimizer_options
from vcap.training.distributed import (all_reduce_gradients, check_strategy_support, share_of_global_counts,
                              take_over_ddp_gradient_sync)
from vcap.errors import UsageError
from vcap.grpo.engines import sample_completions
from vcap.methods.metrics import CaptionScore, QAAccuracy, ThinkF1
from vcap.model.export import export_model
from vcap.model.export_sharded import export_from_shards
from vcap.model.loading import as_peft_config, count_parameters, load_policy, load_processor
from vcap.model.memory_check import SHARDING_STRATEGIES, check_memory
from vcap.model.precision import check_trainable_precision
from vcap.options import model_option_problems
from vcap.training.rank_metrics import FirstOccurrence, Tally, add_tallies, all_ranks, mean_of
from vcap.rewards import RewardSet, parse_completion
from vcap.rewards.caption import sample_events
from vcap.rewards.parsing import subjects_from_json
from vcap.training.seeding import base_seed, seed_step

log = logging.getLogger(__name__)


class AllVideosBadError(UsageError):
    """A training epoch without a single decodable video."""


DEFAULT_REWARDS = {"format": 1.0, "think": 1.0, "caption": 1.0}


class CaptionPolicyModule(L.LightningModule):
    """What every recipe shares: the policy model, its optimizer, greedy validation and predict.

    Args:
        name_or_path: HF hub id, local directory, or an embedded name ('vcap-tiny', 'vcap-tiny-sft').
        dtype: float32 | bfloat16 | float16 weights. Training keeps trainable weights in fp32 (compute in bf16 with
            ``trainer.precision: bf16-mixed``): bf16/fp16 trainable weights are refused, see vcap.model.precision.
        memory_check: before loading for ``fit``, stop when the logged memory estimate exceeds the GPU (false: only
            log it); see vcap.model.memory.
        allow_low_precision_training: train bf16/fp16 weights anyway (only with an optimizer built for it, e.g.
            Kahan summation or stochastic rounding); a warning still states why plain AdamW loses the updates.
        attn_implementation: attention kernel, e.g. 'sdpa', 'flash_attention_2', 'eager' (null: transformers' default).
        gradient_checkpointing: trade compute for activation memory.
        freeze_vision: keep the ViT frozen (it then also gets no LoRA).
        peft: a PEFT config, e.g. ``class_path: peft.LoraConfig`` with ``init_args: {r: 64, lora_alpha: 128}``
            (or the short name ``LoraConfig``); LoRA targets the language model's linears unless ``target_modules``
            is set.
        load_in_4bit: QLoRA (nf4) loading through bitsandbytes; needs ``peft``.
        learning_rate: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up from 0 (0: none).
        rewards: reward name -> weight (registry names or 'module:Class'); scored in validation too.
        reward_options: reward name -> constructor options.
        max_new_tokens: generation budget for validation and predict (greedy).
        generation_kwargs: extra ``generate`` options for validation and predict, e.g. {repetition_penalty: 1.2}.
        export_dir: if set, when fit ends save there the model with LoRA merged, the processor (chat template
            included) and ``vcap_preprocessing.json``; ``vcap predict`` on that directory preprocesses as in training.
    """

    def __init__(self, name_or_path: str = "vcap-tiny", dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 attn_implementation: str | None = "sdpa",
                 gradient_checkpointing: bool = False, freeze_vision: bool = True, peft: PeftConfig | None = None,
                 load_in_4bit: bool = False, learning_rate: float = 1e-6, weight_decay: float = 0.0,
                 warmup_steps: int = 0, rewards: dict[str, float] | None = None,
                 reward_options: dict[str, dict[str, Any]] | None = None, max_new_tokens: int = 512,
                 generation_kwargs: dict[str, Any] | None = None, export_dir: str | None = None,
                 allow_low_precision_training: bool = False, memory_check: bool = True):
        super().__init__()
        self.save_hyperparameters()  # under the CLI, hparams keep the config as written (peft as class_path/init_args)
        problems = model_option_problems(self.hparams)  # the CLI checked them already; Python callers too
        if problems:
            raise UsageError(problems[0])
        self.peft_config = as_peft_config(peft)
        self.reward_set = RewardSet(DEFAULT_REWARDS if rewards is None else rewards, reward_options)
        # validation metrics reuse the rewards' scorer and judge (one embedding model, one client and cache)
        caption_opts = (reward_options or {}).get("caption", {})
        think_opts = (reward_options or {}).get("think", {})
        think_reward = self.reward_set.rewards.get("think")
        caption_reward = self.reward_set.rewards.get("caption")
        self.think_f1 = ThinkF1(scorer=getattr(think_reward, "scorer", None),
                                **{k: think_opts[k] for k in ("matcher", "subject_threshold", "item_threshold")
                                   if k in think_opts})
        caption_judge = getattr(caption_reward, "judge", None) or caption_opts.get("judge", "lexical")
        self.caption_score = CaptionScore(judge=caption_judge, judge_options=caption_opts.get("judge_options"),
                                          mode=caption_opts.get("mode", "step"))
        # held-out QA accuracy on records with questions, whichever rewards train: the QA reward's judge if there
        # is one, else the caption metric's
        qa_reward = self.reward_set.rewards.get("qa")
        # (none when that judge cannot answer multiple-choice questions, e.g. 'embedding': no QA columns then)
        self.qa_accuracy = QAAccuracy(judge=getattr(qa_reward, "judge", None) or self.caption_score.judge)
        self.model = None
        self.processor = None
        self.skipped_videos = 0
        self.skipped_before_batch = 0
        self.resumed_seed: int | None = None
        self.last_skip_error: str | None = None
        self.batch_counts = torch.zeros(2)  # (batches, batches with at least one decodable video) in this epoch
        self.syncs_own_gradients = False
        self.samples_dir: Path | None = None
        self.val_firsts = FirstOccurrence()  # under DDP/FSDP: the sampler's padding is scored once, not twice
        self.val_tallies: dict[str, Tally] = {}

    def describe(self) -> dict[str, Any]:
        """What produced the numbers: model and judges, written into validation.json."""
        judges = {name: r.judge.describe() for name, r in self.reward_set.rewards.items() if hasattr(r, "judge")}
        return {"model": self.hparams.name_or_path, "judges": judges,
                "caption_metric_judge": self.caption_score.judge.describe(),
                "qa_metric_judge": self.qa_accuracy.judge.describe() if self.qa_accuracy.judge else None}

    # -- model ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        if self._trainer is not None and self.trainer.state.fn == "fit":
            check_strategy_support(type(self.trainer.strategy).__name__, hp.load_in_4bit)
            check_memory(self, strict=hp.memory_check)
        self.processor = load_processor(hp.name_or_path)
        self.model = load_policy(hp.name_or_path, hp.dtype, hp.attn_implementation, hp.gradient_checkpointing,
                                 hp.freeze_vision, self.peft_config, hp.load_in_4bit).train()  # from_pretrained gives eval mode
        trainable, total = count_parameters(self.model)
        if self._trainer is not None and self.trainer.state.fn == "fit":
            log.info("policy %s: %s trainable / %s parameters", hp.name_or_path, f"{trainable:,}", f"{total:,}")
        else:  # validate / predict train nothing: a trainable count would only mislead
            log.info("policy %s: %s parameters", hp.name_or_path, f"{total:,}")
        self.strict_loading = self.peft_config is None  # PEFT checkpoints hold only adapter weights

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return sorted(i for i in ids if i is not None)

    def decode(self, completion_ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(completion_ids, skip_special_tokens=False)

    def clean(self, texts: list[str]) -> list[str]:
        """Drop EOS/pad markers but keep <think>/<answer> tags."""
        drop = [t for t in {self.tokenizer.eos_token, self.tokenizer.pad_token} if t]
        for token in drop:
            texts = [t.replace(token, "") for t in texts]
        return [t.strip() for t in texts]

    def count_skips(self, batch: dict) -> None:
        if batch["skipped"]:
            self.skipped_videos += len(batch["skipped"])
            for item in batch["skipped"]:
                log.warning("skipped video %s: %s", item["video"], item["error"])
                self.last_skip_error = item["error"]

    def skipped_tally(self) -> dict[str, Tally]:
        """data/skipped_videos summed over ranks (each rank counts its own); logged with the step's or the
        validation's other numbers."""
        return {"data/skipped_videos": Tally(float(self.skipped_videos), reduce="sum")}

    def greedy(self, batch: dict) -> list[str]:
        rollout = sample_completions(self.model, batch["inputs"], 1, self.hparams.max_new_tokens, self.eos_token_ids,
                                     self.tokenizer.pad_token_id, do_sample=False,
                                     **(self.hparams.generation_kwargs or {}))
        return self.clean(self.decode(rollout.completion_ids))

    # -- validation / predict ---------------------------------------------------------------------
    @property
    def bench_evaluator(self):
        """The benchmark evaluator when validating on an official benchmark (``vcap validate --bench``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        return getattr(datamodule, "evaluator", None)

    def on_validation_start(self) -> None:
        if self.bench_evaluator is not None:  # kept captions are reused only for exactly this model and settings
            open_outputs(self, self.trainer.datamodule)

    def on_validation_end(self) -> None:
        if self.bench_evaluator is not None:
            self.bench_evaluator.close()

    def on_validation_epoch_start(self) -> None:
        self.val_firsts.reset()
        self.val_tallies = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.count_skips(batch)
        if self.bench_evaluator is not None:  # cached generations are not made again after a restart
            if batch["inputs"] is not None and self.bench_evaluator.missing(batch["records"]):
                self.bench_evaluator.add(batch["records"], self.greedy(batch))
            return
        texts = self.greedy(batch) if batch["inputs"] is not None else []
        # every rank joins the exchange of sample keys, with data or without; only first occurrences are scored
        keep = self.val_firsts.keep(batch.get("indices") or [r["id"] for r in batch["records"]])
        records = [r for r, k in zip(batch["records"], keep) if k]
        texts = [t for t, k in zip(texts, keep) if k]
        if not records:
            return
        parsed = [parse_completion(t) for t in texts]
        rewards = self.reward_set(parsed, records)
        # a failed judgment (or a reward without reference) is unknown, not 0: left out of every mean, counted instead
        judged = ~rewards.unscored
        for name, (values, keep) in {"val/reward": (rewards.scores, judged),
                                     **{f"val/reward/{k}": (v, ~v.isnan()) for k, v in rewards.components.items()}
                                     }.items():
            self.val_tallies[name] = add_tallies(self.val_tallies.get(name), mean_of(values[keep]))
        # what a reward teaches shows in the captions' length too (e.g. listing every detail for QA)
        words = [len(p.answer.split()) for p in parsed if p.answer is not None]
        self.val_tallies["val/caption_words"] = add_tallies(self.val_tallies.get("val/caption_words"), mean_of(words))
        self.val_tallies["val/judge_failures"] = add_tallies(self.val_tallies.get("val/judge_failures"),
                                                             Tally(float(rewards.failed.sum()), reduce="sum"))
        for name, mask in rewards.no_reference_by.items():
            key = f"val/{name}_no_reference"
            self.val_tallies[key] = add_tallies(self.val_tallies.get(key), Tally(float(mask.sum()), reduce="sum"))
        self.think_f1.update([p.subjects for p in parsed], [subjects_from_json(r["structure"]) for r in records])
        self.caption_score.update([p.answer for p in parsed], [sample_events(r) for r in records],
                                  [r.get("caption", "") for r in records])
        self.qa_accuracy.update([p.answer for p in parsed], records)
        if batch_idx == 0:
            log.info("val sample %s: %s", records[0].get("id"), texts[0][:300])

    def on_validation_epoch_end(self) -> None:
        if self.bench_evaluator is not None:
            metrics = finish_benchmark(self.bench_evaluator, self.trainer.datamodule.records, self.hparams.name_or_path)
            for name, value in {**metrics, **all_ranks(self.skipped_tally())}.items():
                self.log(name, float(value))
            return
        for name, value in all_ranks({**self.val_tallies, **self.skipped_tally()}).items():
            self.log(name, value)
        for name, value in self.think_f1.compute().items():
            self.log(f"val/think_{name}", value)
        for name, value in self.caption_score.compute().items():
            self.log(f"val/caption_{name}", value)
        for name, value in self.qa_held_out().items():
            self.log(f"val/qa_{name}", value)
        self.think_f1.reset()
        self.caption_score.reset()
        self.qa_accuracy.reset()

    def qa_held_out(self) -> dict[str, torch.Tensor]:
        """QA accuracy, the share answered "does not say" and failed answers; nothing when no record had
        questions (a manifest without ``qa`` gets no QA columns)."""
        metrics = self.qa_accuracy.compute()
        records = metrics.pop("records")
        return metrics if records > 0 else {}

    def partial_validation_metrics(self) -> dict[str, float]:
        """The think and caption metrics over the validation batches done so far (an interrupted run keeps them);
        benchmarks keep their generations instead (generations.jsonl)."""
        if self.bench_evaluator is not None:
            return {}
        metrics = {f"think_{k}": float(v) for k, v in self.think_f1.compute().items()}
        metrics.update({f"caption_{k}": float(v) for k, v in self.caption_score.compute().items()})
        metrics.update({f"qa_{k}": float(v) for k, v in self.qa_held_out().items()})
        return metrics

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        self.count_skips(batch)
        out = [{"id": x.get("id") or Path(x["video"]).stem, "video": x["video"], "skipped": x["error"]}
               for x in batch["skipped"]]
        if batch["inputs"] is None:
            return out
        for record, text in zip(batch["records"], self.greedy(batch)):
            parsed = parse_completion(text)
            out.append({"id": record["id"], "video": record["video"], "completion": text, "think": parsed.think,
                        "answer": parsed.answer, "parse_error": parsed.reason,
                        "subjects": [s.to_json() for s in parsed.subjects] if parsed.subjects is not None else None})
        return out

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check freeze_vision / peft settings")
        if not self.keeps_master_weights():
            check_trainable_precision(self.model, self.hparams.learning_rate, self.hparams.allow_low_precision_training)
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = max(self.hparams.warmup_steps, 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- data parallelism (manual optimization) ---------------------------------------------------
    def on_train_start(self) -> None:
        self.samples_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: all ranks
        if self.trainer.ckpt_path is not None:  # resumed: the optimizer options given now, not the checkpoint's
            use_current_optimizer_options(self.trainer.optimizers,
                                          [c.scheduler for c in self.trainer.lr_scheduler_configs],
                                          self.hparams.learning_rate, self.hparams.weight_decay)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_step(self.run_seed, self.global_step, self.global_rank)  # a resumed step draws what it drew before
        self.skipped_before_batch = self.skipped_videos
        # Lightning re-arms DDP's reducer after every step, so switch it off before each one;
        # see vcap.training.distributed for why GRPO syncs its own gradients
        if not self.automatic_optimization:
            self.syncs_own_gradients = take_over_ddp_gradient_sync(self.trainer.strategy.model)

    def on_train_epoch_start(self) -> None:
        self.batch_counts = torch.zeros(2)  # (batches, batches with at least one decodable video) in this epoch

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_counts += torch.tensor([1.0, float(batch["inputs"] is not None)])

    def on_train_epoch_end(self) -> None:
        """An epoch in which no video could be decoded (every one skipped) would repeat forever under max_steps."""
        seen, with_videos = self.trainer.strategy.reduce(self.batch_counts.to(self.device), reduce_op="sum").tolist()
        if seen > 0 and with_videos == 0:
            raise AllVideosBadError(f"no training video could be decoded in epoch {self.current_epoch} "
                                    f"({self.skipped_videos} skipped, e.g. {self.last_skip_error}); fix the videos "
                                    "or the manifest (--data.init_args.manifest)")

    def sync_and_clip_gradients(self, optimizer) -> None:
        """Average the accumulated gradients over DDP ranks, then clip them to ``max_grad_norm``; once per optimizer
        step. Every rank does both, with data or without: a rank that skipped the clipping would apply the
        unclipped average and drift from the others."""
        if self.syncs_own_gradients:
            all_reduce_gradients([p for p in self.model.parameters() if p.requires_grad])
        max_norm = self.hparams.get("max_grad_norm", 0)
        if max_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def step_without_data(self) -> None:
        """A rank whose whole batch was skipped still joins the step (zero gradient) so ranks stay in sync."""
        if not self.syncs_own_gradients:
            return
        opt = self.optimizers()
        for _ in range(self.hparams.get("num_iterations", 1)):  # as many steps (and all-reduces) as the other ranks
            opt.zero_grad()
            # the counts all-reduce of GRPOModule.policy_update (this rank adds no sequences, no tokens)
            share_of_global_counts(torch.zeros(2, dtype=torch.float64, device=self.device))
            self.sync_and_clip_gradients(opt)
            opt.step()
            self.lr_schedulers().step()

    def keeps_master_weights(self) -> bool:
        """DeepSpeed's bf16 optimizer keeps its own fp32 master copy of low-precision parameters."""
        return type(self.trainer.strategy).__name__ == "DeepSpeedStrategy"

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        if self.peft_config is not None:  # the frozen base is reloaded from name_or_path
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        else:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("ref_model.")}
        # the randomness of every step derives from the run's seed (vcap.training.seeding): keep it, not RNG states
        interrupted = checkpoint.get("vcap_interrupted", False)  # the interrupted batch's skips are counted again
        checkpoint["vcap_run"] = {"seed": self.run_seed,
                                  "skipped_videos": self.skipped_before_batch if interrupted else self.skipped_videos}
        if self.samples_dir is not None:  # the run folder, so --ckpt_path last continues in it
            checkpoint["vcap_log_dir"] = str(self.samples_dir.resolve())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.strict_loading = False  # reference copies and frozen PEFT bases are not stored
        run = checkpoint.get("vcap_run") or {}
        if "seed" in run:
            self.resumed_seed = int(run["seed"])
        self.skipped_videos = run.get("skipped_videos", (checkpoint.get("vcap_rng") or {}).get("skipped_videos", 0))

    @property
    def run_seed(self) -> int:
        """The seed steps derive from: the checkpoint's when resuming (a random seed_everything differs)."""
        return self.resumed_seed if self.resumed_seed is not None else base_seed()

    def on_train_end(self) -> None:
        if not self.hparams.export_dir:
            return
        strategy = type(self.trainer.strategy).__name__
        if strategy == "DeepSpeedStrategy":
            log.warning("export_dir is not written under DeepSpeed (each rank holds only shards); convert the "
                        "checkpoint with DeepSpeed's zero_to_fp32.py")
        elif strategy in SHARDING_STRATEGIES:  # each rank holds only shards: every rank joins the gather
            export_from_shards(self, self.trainer.strategy.model, self.hparams.export_dir)
        elif self.trainer.is_global_zero:
            self.export(self.hparams.export_dir)

    def export(self, path: str | Path, model=None) -> Path:
        """Merged weights (LoRA folded in), processor + chat template, and the data's frame/pixel settings;
        ``model``: an unsharded copy to save instead of ``self.model`` (vcap.model.export_sharded)."""
        return export_model(self.model if model is None else model, self.processor, path, self.preprocessing())

    def preprocessing(self) -> dict[str, Any]:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return dict(getattr(datamodule, "hparams", {}) or {})
