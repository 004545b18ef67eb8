"""``vcap``: the LightningCLI front end (fit / validate / test / predict) plus ``vcap annotate``.

``--bench NAME`` is shorthand for ``--config <vcap>/benches/NAME.yaml``, which selects a benchmark's
datamodule and metrics; later arguments still override it; ``--limit N`` evaluates its first N samples.
``vcap annotate --help`` describes the
manifest annotator (fills missing events/structure with a judge).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from rich.console import Console
from rich.logging import RichHandler

from vcap.callbacks import JsonlPredictionWriter, ValidationReport
from vcap.plots import TrainingCurves
from vcap.data.datamodule import CaptionDataModule
from vcap.policy import CaptionPolicyModule

BENCH_DIR = Path(__file__).resolve().parent / "benches"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class VcapTrainer(Trainer):
    """Lightning's Trainer plus a validation report and two conveniences.

    Args:
        validate_before_fit: validate the starting model before training, so the report shows it
            beside the trained one (skipped when resuming from a checkpoint).
    """

    def __init__(self, *args: Any, validate_before_fit: bool = False, **kwargs: Any):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, ValidationReport) for c in callbacks):
            callbacks.append(ValidationReport())
        if not any(isinstance(c, TrainingCurves) for c in callbacks):
            callbacks.append(TrainingCurves())
        if not any(isinstance(c, RichProgressBar) for c in callbacks) and kwargs.get("enable_progress_bar", True):
            callbacks.append(RichProgressBar())
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.validate_before_fit = validate_before_fit
        self.pre_fit_validation = False

    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | Path | None = None,
            weights_only: bool | None = None) -> None:
        if self.validate_before_fit and ckpt_path is None:
            self.pre_fit_validation = True
            try:
                self.validate(model, dataloaders=val_dataloaders, datamodule=datamodule, verbose=False)
            finally:
                self.pre_fit_validation = False
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = False,
                ckpt_path: str | Path | None = None, weights_only: bool | None = None,
                output: str = "predictions.jsonl"):
        """``output``: JSONL file for the captions (think + answer), one line per video."""
        self.callbacks.append(JsonlPredictionWriter(output))
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)


class VcapCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.name_or_path", "data.init_args.processor")


def bench_names() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.yaml"))


def expand_bench(args: list[str]) -> list[str]:
    """Replace ``--bench NAME`` / ``--bench=NAME`` with ``--config`` of the packaged bench file."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--bench" or arg.startswith("--bench="):
            if arg == "--bench":
                if i + 1 >= len(args):
                    raise SystemExit(f"--bench needs a name; valid: {bench_names()}")
                name, i = args[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            path = BENCH_DIR / f"{name}.yaml"
            if not path.exists():
                raise SystemExit(f"unknown benchmark {name!r}; valid: {bench_names()}")
            insert_at = 1 if out and out[0] in SUBCOMMANDS else len(out)
            out[insert_at:insert_at] = ["--config", str(path)]
            continue
        if arg == "--limit" or arg.startswith("--limit="):  # benchmark subset: shorthand for the data option
            value, i = (args[i + 1], i + 2) if arg == "--limit" and i + 1 < len(args) else (arg.split("=", 1)[-1], i + 1)
            out += ["--data.init_args.limit", value]
            continue
        out.append(arg)
        i += 1
    return out


def setup_logging() -> None:
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("vcap").setLevel(logging.INFO)


def main(args: list[str] | None = None) -> None:
    setup_logging()
    raw = list(sys.argv[1:] if args is None else args)
    if raw[:1] == ["annotate"]:
        from vcap.annotate import main as annotate_main

        return annotate_main(raw[1:])
    if raw[:1] == ["compare"]:
        from vcap.compare import main as compare_main

        return compare_main(raw[1:])
    if args is None:  # LightningCLI reads sys.argv itself; rewrite it so --bench works there too
        sys.argv[1:] = expand_bench(sys.argv[1:])
        argv = None
    else:
        argv = expand_bench(list(args))
    VcapCLI(
        CaptionPolicyModule, CaptionDataModule, subclass_mode_model=True, subclass_mode_data=True,
        trainer_class=VcapTrainer, args=argv, save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": "runs", "name": "vcap"}}},
        parser_kwargs={"description": __doc__},
    )


if __name__ == "__main__":
    main()
