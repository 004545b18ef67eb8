"""``CaptionDataModule``: manifest records -> decord frames (in workers) -> Qwen2-VL processor batches."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vcap.data.manifest import read_manifest, records_from_videos
from vcap.data.sampling import ResumableLoader, ResumableSampler
from vcap.data.synthetic import ShapesSpec, build_shapes_dataset
from vcap.data.video import BadVideoError, FrameSampling, decode_clip, video_problem
from vcap.errors import UsageError
from vcap.options import data_option_problems
from vcap.model.families import QWEN2_VL, ModelFamily, family_for
from vcap.quiet import warn_once
from vcap.prompts import DEFAULT_PROMPT, SYSTEM_PROMPT, build_messages

log = logging.getLogger(__name__)
BAD_VIDEO_POLICIES = ("skip", "error")
STAGE_DATASETS = {"fit": ("fit", "validate"), "validate": ("validate",), "test": ("validate",),
                  "predict": ("predict",)}


def check_limit(limit: int | None) -> None:
    """``--limit N`` evaluates the first N samples; 0 or less would silently mean all of them."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit (--data.init_args.limit) must be at least 1, got {limit}; leave it out to "
                         "evaluate every sample")


class VideoRecords(Dataset):
    """Decodes one record's frames; a bad video is raised (policy 'error') or returned as a skip."""

    def __init__(self, records: list[dict], sampling: FrameSampling, bad_video: str):
        self.records, self.sampling, self.bad_video = records, sampling, bad_video

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        try:
            frames, metadata = decode_clip(record["video"], self.sampling)
        except BadVideoError as err:
            if self.bad_video == "error":
                raise BadVideoError(f"{err} (pass --data.init_args.bad_video skip to train without such videos)") from err
            # not logged here: the step that receives the skip logs and counts it, once
            return {"record": record, "index": i, "frames": None, "error": str(err)}
        return {"record": record, "index": i, "frames": frames, "metadata": metadata, "error": None}


class PromptCollator:
    """Builds left-padded prompt batches; skipped videos travel along so the step can count them."""

    def __init__(self, processor, prompt: str, system_prompt: str | None, min_pixels: int, max_pixels: int,
                 family: ModelFamily = QWEN2_VL):
        self.processor, self.prompt, self.system_prompt = processor, prompt, system_prompt
        self._texts: dict[str, str] = {}
        self.family, self.min_pixels, self.max_pixels = family, min_pixels, max_pixels

    def text(self, prompt: str) -> str:
        """The chat-formatted prompt; a record's own ``prompt`` (benchmarks) overrides the default."""
        if prompt not in self._texts:
            self._texts[prompt] = self.processor.apply_chat_template(
                build_messages(prompt, self.system_prompt), tokenize=False, add_generation_prompt=True)
        return self._texts[prompt]

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        good = [it for it in items if it["frames"] is not None]
        skipped = [{"id": it["record"].get("id"), "video": it["record"]["video"], "error": it["error"]}
                   for it in items if it["frames"] is None]
        # indices: each record's position in its dataset, the key that tells a distributed sampler's padding
        # (a repeat of an earlier sample) from a distinct record (ids may repeat across folders)
        batch: dict[str, Any] = {"records": [it["record"] for it in good], "indices": [it["index"] for it in good],
                                 "skipped": skipped, "inputs": None}
        if good:
            texts = [self.text(it["record"].get("prompt", self.prompt)) for it in good]
            videos_kwargs = self.family.video_kwargs(self.min_pixels, self.max_pixels, [len(it["frames"]) for it in good],
                                                     [it.get("metadata") for it in good])
            inputs = self.processor(text=texts, videos=[it["frames"] for it in good], padding=True,
                                    return_tensors="pt", videos_kwargs=videos_kwargs)
            batch["inputs"] = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        return batch


class CaptionDataModule(L.LightningDataModule):
    """Videos and references from a JSONL manifest (``split`` field selects train/val).

    Args:
        manifest: JSONL manifest with train and val records (``split``: train/val); see README, "Manifest format".
        val_manifest: optional separate manifest for validation (all its records are used).
        predict_videos: video files, folders, or one ``.jsonl`` manifest for ``vcap predict``.
        processor: model name or path whose processor builds the batches (linked to model.init_args.name_or_path).
        batch_size: prompts per training step (GRPO samples num_generations completions for each).
        val_batch_size: videos per validation / predict batch.
        num_workers: DataLoader worker processes that decode videos.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        fps: frames sampled per second of video (as qwen-vl-utils); ignored when nframes is set.
        nframes: a fixed number of frames per video instead of fps.
        min_frames: at least this many frames with fps sampling.
        max_frames: at most this many frames with fps sampling.
        min_pixels: per-frame pixel budget, lower bound of the processor's resize.
        max_pixels: per-frame pixel budget, upper bound of the processor's resize.
        prompt: the user prompt for each video (a record's own ``prompt`` overrides it).
        system_prompt: the system prompt (null for none).
        bad_video: 'skip' (log, count, continue) or 'error' (raise naming the file).
        limit: evaluate only the first N validation records (``--limit N``).
        shuffle: shuffle the training order (a seeded permutation per epoch, resumable mid-epoch).
        seed: seed of the training order.
        allow_empty_references: accept records with ``events: []`` or ``structure: []``; their caption / think
            reward is then n/a (left out of means, counted in train/caption_no_reference, train/think_no_reference),
            never the 1 an empty reference would give. By default they are a manifest error.
    """

    def __init__(self, manifest: str | None = None, val_manifest: str | None = None,
                 predict_videos: list[str] | None = None, processor: str = "vcap-tiny", batch_size: int = 2,
                 val_batch_size: int = 8, num_workers: int = 2, pin_memory: bool = False, fps: float | None = 2.0,
                 nframes: int | None = None, min_frames: int = 4, max_frames: int = 32, min_pixels: int = 128 * 28 * 28,
                 max_pixels: int = 360 * 420, prompt: str = DEFAULT_PROMPT, system_prompt: str | None = SYSTEM_PROMPT,
                 bad_video: Literal["skip", "error"] = "skip", limit: int | None = None, shuffle: bool = True,
                 seed: int = 0, allow_empty_references: bool = False):
        super().__init__()
        if bad_video not in BAD_VIDEO_POLICIES:
            raise UsageError(f"--data.init_args.bad_video must be one of {BAD_VIDEO_POLICIES}, got {bad_video!r}")
        check_limit(limit)
        self.save_hyperparameters()
        problems = data_option_problems(self.hparams)
        if problems:
            raise UsageError(problems[0])
        self.sampling = FrameSampling(fps, nframes, min_frames, max_frames)
        self.datasets: dict[str, VideoRecords] = {}
        self.collator: PromptCollator | None = None
        self.required_fields: dict[str, dict[str, str]] = {}  # stage -> {field: who needs it}; set by the CLI check

    def manifest_path(self) -> str:
        if self.hparams.manifest is None:
            raise UsageError("--data.init_args.manifest is not set: point it at a JSONL manifest "
                             "(see README, 'Manifest format')")
        return self.hparams.manifest

    def load_records(self, stage: str) -> list[dict]:
        hp = self.hparams
        require = self.required_fields.get(stage)
        allow = {"allow_empty_references": hp.allow_empty_references}
        if stage == "fit":
            return read_manifest(self.manifest_path(), split="train", require=require, **allow)
        if stage == "predict":
            videos = hp.predict_videos or []
            if len(videos) == 1 and videos[0].endswith(".jsonl"):
                # predict scores nothing: references, empty or not, are not read
                return read_manifest(videos[0], flag="--data.init_args.predict_videos", allow_empty_references=True)
            if not videos:
                raise UsageError("vcap predict needs --data.init_args.predict_videos: video files, folders or a "
                                 ".jsonl manifest, e.g. --data.init_args.predict_videos '[clips/]'")
            return records_from_videos(videos)
        if hp.val_manifest:
            records = read_manifest(hp.val_manifest, require=require, flag="--data.init_args.val_manifest", **allow)
        else:
            records = read_manifest(self.manifest_path(), "val", require=require, **allow)
        return records[: hp.limit] if hp.limit else records

    def stage_records(self, stage: str) -> dict[str, list[dict]]:
        """Records of each dataset a trainer stage uses; an empty required split is an error."""
        out = {}
        for name in STAGE_DATASETS[stage]:
            records = self.load_records(name)
            if not records and stage == "fit" and name == "validate":
                warn_once(log, "no validation records (split 'val'): training without validation")
                continue
            if not records:
                split = {"fit": "'train' (the default)", "validate": "'val'"}.get(name, "")
                raise UsageError(f"no records for '{name}'" + (f": no record of the manifest has split {split}, or "
                                 "set --data.init_args.val_manifest" if split else ""))
            out[name] = records
        return out

    def has_validation(self) -> bool:
        """Whether there is anything to validate on; ``fit`` without it trains without validation (see
        ``stage_records``), and ``VcapTrainer`` then skips its validation before fit."""
        return "validate" in self.datasets or bool(self.load_records("validate"))

    def check_inputs(self, stage: str, required_fields: dict[str, dict[str, str]] | None = None) -> None:
        """Load and validate every input ``stage`` reads, without decoding videos or loading a processor.

        The CLI calls this before it builds the model, so a typo fails in seconds and creates nothing.
        """
        self.required_fields = dict(required_fields or {})
        for name, records in self.stage_records(stage).items():
            self.check_videos(name, records)

    def check_videos(self, name: str, records: list[dict]) -> None:
        """Videos the file system already says are bad (missing, a folder, empty): with ``bad_video: error`` the run
        stops before it starts; with ``skip`` they are named once, and a training split with no video left stops."""
        bad = [(r, problem) for r in records if (problem := video_problem(r["video"]))]
        if not bad:
            return
        example = f"{bad[0][1]} (id {bad[0][0].get('id')!r})"
        what = {"fit": "training", "validate": "validation", "predict": "prediction"}.get(name, name)
        count = f"{len(bad)} of {len(records)} {what} videos cannot be read, e.g. {example}"
        if self.hparams.bad_video == "error":
            raise BadVideoError(f"{count}; fix the manifest, or pass --data.init_args.bad_video skip to run "
                                "without them")
        if len(bad) == len(records) and name == "fit":
            raise BadVideoError(f"every training video is bad: {count}; fix the manifest "
                                "(--data.init_args.manifest)")
        log.warning("%s; they will be skipped (data.bad_video: skip)", count)

    def setup(self, stage: str) -> None:
        from vcap.model.export import apply_exported_preprocessing
        from vcap.model.loading import load_processor, resolve_model_path

        if self.collator is None:
            hp = self.hparams
            if apply_exported_preprocessing(hp, type(self), resolve_model_path(hp.processor)):  # as in training
                self.sampling = FrameSampling(hp.fps, hp.nframes, hp.min_frames, hp.max_frames)
            self.collator = PromptCollator(load_processor(hp.processor), hp.prompt, hp.system_prompt,
                                           hp.min_pixels, hp.max_pixels, family_for(hp.processor))
        if not all(name in self.datasets for name in STAGE_DATASETS[stage]):
            for name, records in self.stage_records(stage).items():
                self.datasets.setdefault(name, VideoRecords(records, self.sampling, self.hparams.bad_video))

    def _loader_options(self) -> dict:
        hp = self.hparams
        return dict(num_workers=hp.num_workers, pin_memory=hp.pin_memory, collate_fn=self.collator,
                    persistent_workers=hp.num_workers > 0)

    def _loader(self, name: str, batch_size: int) -> DataLoader:
        return DataLoader(self.datasets[name], batch_size=batch_size, shuffle=False, **self._loader_options())

    def train_dataloader(self) -> DataLoader:
        """Seeded order that a ``--ckpt_path last`` resume continues from the exact batch (single device)."""
        hp = self.hparams
        sampler = ResumableSampler(len(self.datasets["fit"]), hp.shuffle, hp.seed)
        return ResumableLoader(self.datasets["fit"], batch_size=hp.batch_size, sampler=sampler,
                               batches_done=self._batches_done, **self._loader_options())

    def _batches_done(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def val_dataloader(self) -> DataLoader | list:
        if "validate" not in self.datasets:
            return []
        return self._loader("validate", self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.hparams.val_batch_size)


class ShapesDataModule(CaptionDataModule):
    """The embedded synthetic benchmark: generated on first use under ``root`` (default: the vcap cache).

    Args:
        root: folder for the generated videos and manifest (default: ``$VCAP_CACHE/data/shapes-...``).
        num_train: training clips to generate.
        num_val: held-out validation clips to generate.
        dataset_seed: seed of the generated clips (a new seed gives new train and val clips).
        nframes: frames per clip fed to the model.
        min_pixels: per-frame pixel budget, lower bound.
        max_pixels: per-frame pixel budget, upper bound.
    """

    builds_inputs = True  # check_inputs generates the clips on first use

    def __init__(self, root: str | None = None, num_train: int = 256, num_val: int = 32, dataset_seed: int = 0,
                 nframes: int | None = 8, min_pixels: int = 56 * 56, max_pixels: int = 56 * 56, **kwargs):
        super().__init__(nframes=nframes, min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)
        self.spec = ShapesSpec(num_train=num_train, num_val=num_val, seed=dataset_seed)

    def prepare_data(self) -> None:
        self.hparams.manifest = str(build_shapes_dataset(self.shapes_root(), self.spec))

    def shapes_root(self) -> Path:
        from vcap.model.tiny import cache_root

        root = self.hparams.get("root")
        s = self.spec
        return Path(root) if root else cache_root() / "data" / f"shapes-{s.num_train}-{s.num_val}-seed{s.seed}"

    def manifest_path(self) -> str:
        if self.hparams.manifest is None:
            self.prepare_data()
        return self.hparams.manifest
