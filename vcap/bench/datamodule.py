"""``BenchDataModule``: a benchmark's official data as validation batches, plus its evaluator."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vcap.bench import datasets
from vcap.bench.evaluator import BenchEvaluator
from vcap.data.datamodule import CaptionDataModule


class BenchDataModule(CaptionDataModule):
    """Args:
        bench: 'dream1k', 'vdc' or 'carebench'.
        annotations: DREAM-1K jsonl / metadata.json; VDC folder of <dimension>.jsonl QA files; CaReBench metadata.json.
        video_dir: folder of the benchmark's videos.
        limit: evaluate the first N samples (VDC: videos).
        output_dir: generations, judge cache, records.jsonl and results.json (default runs/bench/<bench>).
        judge / judge_options: the judge backend and its options (see README, "Judges").
        count_neutral: count "neutral" as a hit (the official protocols do not).
        official_drop_zero: VDC only, reproduce the official script's dropping of zero-score videos.
        vdc_prompts: optional {dimension: [prompt, ...]} replacing the built-in VDC requests.
    """

    def __init__(self, bench: str, annotations: str, video_dir: str, limit: int | None = None,
                 output_dir: str | None = None, judge: str = "openai", judge_options: dict[str, Any] | None = None,
                 count_neutral: bool = False, official_drop_zero: bool = False,
                 vdc_prompts: dict[str, list[str]] | None = None, **kwargs):
        super().__init__(**kwargs)
        if bench not in ("dream1k", "vdc", "carebench"):
            raise ValueError(f"unknown benchmark {bench!r}; valid: ['carebench', 'dream1k', 'vdc']")
        self.bench, self.annotations, self.video_dir, self.limit = bench, annotations, video_dir, limit
        self.output_dir = Path(output_dir or Path("runs") / "bench" / bench)
        self.judge_spec = (judge, judge_options, count_neutral, official_drop_zero)
        self.vdc_prompts = vdc_prompts
        self.evaluator: BenchEvaluator | None = None

    def load_records(self, stage: str) -> list[dict]:
        if stage != "validate":
            return super().load_records(stage)
        if self.bench == "dream1k":
            return datasets.load_dream1k(self.annotations, self.video_dir, self.limit)
        if self.bench == "carebench":
            return datasets.load_carebench(self.annotations, self.video_dir, self.limit)
        return datasets.load_vdc(self.annotations, self.video_dir, limit=self.limit, prompts=self.vdc_prompts)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.evaluator is None:
            judge, options, neutral, drop_zero = self.judge_spec
            hp = self.hparams
            settings = {"fps": hp.fps, "nframes": hp.nframes, "max_frames": hp.max_frames, "min_pixels": hp.min_pixels,
                        "max_pixels": hp.max_pixels, "limit": self.limit}
            self.evaluator = BenchEvaluator(self.bench, self.output_dir, judge, options, neutral, drop_zero, settings)

    @property
    def records(self) -> list[dict]:
        return self.datasets["validate"].records
