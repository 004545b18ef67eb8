"""``BenchDataModule``: a benchmark's official data as validation batches, plus its evaluator."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vcap.bench import datasets
from vcap.bench.evaluator import BenchEvaluator, check_protocol
from vcap.bench.frames import SegmentMiddleSampling
from vcap.data.datamodule import CaptionDataModule, check_limit

FRAME_SAMPLINGS = ("uniform", "segment_middle")


class BenchDataModule(CaptionDataModule):
    """Args:
        bench: 'dream1k', 'vdc' or 'carebench'.
        annotations: DREAM-1K jsonl / metadata.json; VDC folder of <dimension>.jsonl QA files; CaReBench metadata.json.
        video_dir: folder of the benchmark's videos.
        limit: evaluate the first N samples (VDC: videos).
        output_dir: generations, judge cache, records.jsonl and results.json, made by one model and settings
            (made_by.json): another model or other settings stop with one line. Default: a folder per model and
            settings, runs/bench/<bench>/<model>-<hash>/ (the judge cache in runs/bench/<bench>/).
        judge / judge_options: the judge backend and its options (see README, "Judges").
        protocol: 'official' (the official scoring code's parsing, retries, failure units, sampling and request
            shapes) or 'robust' (tolerant parsing, for in-training use). See README, "Benchmarks".
        count_neutral: count "neutral" as a hit (the official protocols do not).
        official_drop_zero: VDC only; drop videos with accuracy or score 0 as the official script does
            (default: true under protocol official, false under robust).
        vdc_prompts: optional {dimension: [prompt, ...]} replacing the built-in VDC requests.
        frame_sampling: 'uniform' (first and last frame included) or 'segment_middle' (CaReBench's official
            sampling: the middle frame of each of ``nframes`` equal segments).
    """

    def __init__(self, bench: str, annotations: str, video_dir: str, limit: int | None = None,
                 output_dir: str | None = None, judge: str = "openai", judge_options: dict[str, Any] | None = None,
                 protocol: str = "official", count_neutral: bool = False, official_drop_zero: bool | None = None,
                 vdc_prompts: dict[str, list[str]] | None = None, frame_sampling: str = "uniform", **kwargs):
        super().__init__(**kwargs)
        check_protocol(bench, protocol, official_drop_zero)
        check_limit(limit)
        if frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"unknown frame_sampling {frame_sampling!r}; valid: {list(FRAME_SAMPLINGS)}")
        if frame_sampling == "segment_middle":
            if not self.hparams.nframes:
                raise ValueError("frame_sampling 'segment_middle' needs nframes (CaReBench: 32)")
            self.sampling = SegmentMiddleSampling(None, self.hparams.nframes)
        self.bench, self.annotations, self.video_dir, self.limit = bench, annotations, video_dir, limit
        self.per_model = output_dir is None  # the default: each model and settings get a folder of their own
        self.output_dir = Path(output_dir or Path("runs") / "bench" / bench)
        self.judge_spec = (judge, judge_options, count_neutral, official_drop_zero)
        self.protocol, self.frame_sampling = protocol, frame_sampling
        self.vdc_prompts = vdc_prompts
        self.notes: dict = {}
        self.evaluator: BenchEvaluator | None = None

    def load_records(self, stage: str) -> list[dict]:
        if stage != "validate":
            return super().load_records(stage)
        if self.bench == "dream1k":
            return datasets.load_dream1k(self.annotations, self.video_dir, self.limit, notes=self.notes)
        if self.bench == "carebench":
            return datasets.load_carebench(self.annotations, self.video_dir, self.limit, notes=self.notes)
        return datasets.load_vdc(self.annotations, self.video_dir, limit=self.limit, prompts=self.vdc_prompts,
                                 notes=self.notes)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.evaluator is None:
            judge, options, neutral, drop_zero = self.judge_spec
            hp = self.hparams
            settings = {"fps": hp.fps, "nframes": hp.nframes, "max_frames": hp.max_frames, "min_pixels": hp.min_pixels,
                        "max_pixels": hp.max_pixels, "limit": self.limit, "frame_sampling": self.frame_sampling}
            self.evaluator = BenchEvaluator(self.bench, self.output_dir, judge, options, neutral, drop_zero, settings,
                                            protocol=self.protocol, notes=self.notes, per_model=self.per_model)

    @property
    def records(self) -> list[dict]:
        return self.datasets["validate"].records
