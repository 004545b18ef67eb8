"""vcap: GRPO post-training and evaluation of video captioning LLMs (VideoCap-R1 recipe) on Lightning.

Subcommands: fit (train), validate (evaluate; --bench NAME for a packaged benchmark), test (same as validate),
predict (caption videos), annotate (fill a manifest's events/structure with a judge), compare (warm start vs
SFT-continued vs GRPO on the demo).
`--bench NAME` stands for `--config <vcap>/benches/NAME.yaml` (dream1k, vdc, carebench, shapes); later arguments
override it. `--limit N` evaluates the first N validation samples. Mistakes print one line; `--debug` (or
VCAP_DEBUG=1) shows tracebacks and every third-party message.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from vcap.callbacks import JsonlPredictionWriter, ValidationReport, VcapProgressBar
from vcap.plots import TrainingCurves
from vcap.errors import UsageError, one_line, simplify_parser_message, user_error_types
from vcap.preflight import MODEL_NOT_SET, PreflightError, preflight
from vcap.quiet import debug_enabled, setup_logging

BENCH_DIR = Path(__file__).resolve().parent / "benches"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
ANNOTATE_HELP = "Fill missing events/structure of a manifest from its captions with a judge (vcap annotate --help)."
COMPARE_HELP = "Warm start vs time-matched SFT-continued vs GRPO on the same held-out videos (vcap compare --help)."
# Options people reach for that vcap configures elsewhere: the hint says where.
OPTION_HINTS = {
    "--optimizer": "vcap's optimizer is AdamW with linear warm-up: set --model.init_args.learning_rate, "
                   "--model.init_args.weight_decay and --model.init_args.warmup_steps",
    "--lr_scheduler": "vcap's schedule is a linear warm-up: set --model.init_args.warmup_steps",
}


class VcapTrainer(Trainer):
    """Lightning's Trainer plus a validation report, a progress bar and optional validation before fit.

    Args:
        validate_before_fit: validate the starting model before training, so the report shows it
            beside the trained one (skipped when resuming from a checkpoint).
        callbacks: Lightning callbacks, e.g. ModelCheckpoint (vcap adds its validation report and progress bar).
    """

    def __init__(self, *args: Any, validate_before_fit: bool = False,
                 callbacks: list[Callback] | Callback | None = None, **kwargs: Any):
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        if not any(isinstance(c, ValidationReport) for c in callbacks):
            callbacks.append(ValidationReport())
        if not any(isinstance(c, TrainingCurves) for c in callbacks):
            callbacks.append(TrainingCurves())
        if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, VcapProgressBar) for c in callbacks):
            callbacks.append(VcapProgressBar())
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.validate_before_fit = validate_before_fit
        self.pre_fit_validation = False

    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | Path | None = None,
            weights_only: bool | None = None) -> None:
        """Train the model (GRPO or SFT, by --model), validating every val_check_interval steps.

        Args:
            ckpt_path: checkpoint to resume from: a path, or 'last' for the newest of this run's checkpoints.
            weights_only: load the checkpoint with torch.load(weights_only=...); None lets Lightning decide.
        """
        if self.validate_before_fit and ckpt_path is None:
            self.pre_fit_validation = True
            try:
                self.validate(model, dataloaders=val_dataloaders, datamodule=datamodule, verbose=False)
            finally:
                self.pre_fit_validation = False
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | Path | None = None, verbose: bool = False,
                 datamodule: LightningDataModule | None = None, weights_only: bool | None = None):
        """Evaluate the model on the validation split, or on a benchmark with --bench NAME.

        Args:
            ckpt_path: checkpoint whose weights are evaluated (default: the model as loaded).
            verbose: also print Lightning's table of logged metrics (vcap's own table is always printed).
            weights_only: load the checkpoint with torch.load(weights_only=...); None lets Lightning decide.
        """
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None,
             ckpt_path: str | Path | None = None, verbose: bool = False,
             datamodule: LightningDataModule | None = None, weights_only: bool | None = None):
        """Same as validate (vcap data modules hold no separate test split).

        Args:
            ckpt_path: checkpoint whose weights are evaluated (default: the model as loaded).
            verbose: also print Lightning's table of logged metrics (vcap's own table is always printed).
            weights_only: load the checkpoint with torch.load(weights_only=...); None lets Lightning decide.
        """
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = False,
                ckpt_path: str | Path | None = None, weights_only: bool | None = None,
                output: str = "predictions.jsonl"):
        """Caption videos (--data.init_args.predict_videos) and write think + answer as JSON lines.

        Args:
            return_predictions: also keep every prediction in memory (off: they are streamed to ``output``).
            ckpt_path: checkpoint whose weights caption the videos (default: the model as loaded).
            weights_only: load the checkpoint with torch.load(weights_only=...); None lets Lightning decide.
            output: JSONL file for the captions (think + answer), one line per video.
        """
        self.callbacks.append(JsonlPredictionWriter(output))
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)


class VcapCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.name_or_path", "data.init_args.processor")

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        """Lightning's subcommands plus ``annotate`` and ``compare``, so ``vcap --help`` lists them (``run`` dispatches
        them)."""
        from jsonargparse import ArgumentParser

        super()._add_subcommands(parser, **kwargs)
        for name, text in (("annotate", ANNOTATE_HELP), ("compare", COMPARE_HELP)):
            parser._subcommands_action.add_subcommand(name, ArgumentParser(description=text), help=text)

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = sys.argv[1:] if args is None else list(args)
            sub = next((a for a in argv if a in self._subcommand_parsers), None)
            options = list(self._subcommand_parsers[sub]._option_string_actions) if sub else []
            raise UsageError(simplify_parser_message(str(err), options)) from err

    def before_instantiate_classes(self) -> None:
        """Validate accelerator, model, checkpoint and data before anything loads or writes a file."""
        if self.subcommand is not None:
            preflight(self.subcommand, self.config[self.subcommand])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, KeyError, MisconfigurationException) as err:
            root = err  # jsonargparse wraps a constructor's own error; that one names the problem
            while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
                root = root.__cause__ or root.__context__
            if isinstance(root, user_error_types()):
                raise root from None
            raise UsageError(f"bad configuration: {one_line(root)}") from err


def bench_names() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.yaml"))


def _value(args: list[str], i: int, flag: str) -> tuple[str, int]:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` at ``args[i]`` and the index after it."""
    if "=" in args[i]:
        return args[i].split("=", 1)[1], i + 1
    if i + 1 >= len(args) or args[i + 1].startswith("--"):
        valid = f"; valid: {', '.join(bench_names())}" if flag == "--bench" else ""
        raise UsageError(f"{flag} needs a value{valid}")
    return args[i + 1], i + 2


def expand_bench(args: list[str]) -> list[str]:
    """Replace ``--bench NAME`` with ``--config`` of the packaged bench file and ``--limit N`` with the data option.

    An official benchmark also gets a placeholder model that fails unless the user names one: its numbers
    must never silently come from the toy model.
    """
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--bench" or arg.startswith("--bench="):
            name, i = _value(args, i, "--bench")
            path = BENCH_DIR / f"{name}.yaml"
            if not path.exists():
                raise UsageError(f"unknown benchmark {name!r}; valid: {bench_names()}")
            insert_at = 1 if out and out[0] in SUBCOMMANDS else len(out)
            injected = ["--config", str(path)]
            if name != "shapes":
                injected += ["--model.init_args.name_or_path", MODEL_NOT_SET]
            out[insert_at:insert_at] = injected
            continue
        if arg == "--limit" or arg.startswith("--limit="):
            value, i = _value(args, i, "--limit")
            out += ["--data.init_args.limit", value]
            continue
        out.append(arg)
        i += 1
    return out


def parser_kwargs() -> dict[str, Any]:
    """Parse errors raise (then print as one line) instead of printing the whole usage."""
    return {"description": __doc__, "exit_on_error": False, **{s: {"exit_on_error": False} for s in SUBCOMMANDS}}


def run_annotate(args: list[str]) -> None:
    from jsonargparse import CLI, ArgumentError

    from vcap.annotate import annotate

    try:
        CLI(annotate, args=args, as_positional=False, exit_on_error=False, prog="vcap annotate")
    except ArgumentError as err:
        raise UsageError(simplify_parser_message(str(err))) from err
    except (FileNotFoundError, ValueError) as err:  # missing or malformed input manifest, unknown field names
        raise UsageError(f"vcap annotate: {one_line(err)}") from err


def run(args: list[str], from_sys_argv: bool) -> None:
    if args[:1] == ["annotate"]:
        return run_annotate(args[1:])
    if args[:1] == ["compare"]:
        from vcap.compare import main as compare_main

        return compare_main(args[1:])
    from vcap.bench.datamodule import BenchDataModule  # noqa: F401  (short names: --data BenchDataModule)
    from vcap.data.datamodule import CaptionDataModule, ShapesDataModule  # noqa: F401
    from vcap.grpo.module import GRPOModule  # noqa: F401  (short names: --model GRPOModule)
    from vcap.policy import CaptionPolicyModule
    from vcap.sft import SFTModule  # noqa: F401

    expanded = expand_bench(args)
    argv = None
    if from_sys_argv:  # LightningCLI reads sys.argv itself; rewrite it so --bench works there too
        sys.argv[1:] = expanded
    else:
        argv = expanded
    VcapCLI(
        CaptionPolicyModule, CaptionDataModule, subclass_mode_model=True, subclass_mode_data=True,
        trainer_class=VcapTrainer, args=argv, save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": "runs", "name": "vcap"}}},
        parser_kwargs=parser_kwargs(), auto_configure_optimizers=False,
    )


def error_lines(err: BaseException, args: list[str]) -> list[str]:
    lines = err.problems if isinstance(err, PreflightError) else [one_line(err)]
    for flag, hint in OPTION_HINTS.items():  # options vcap does not offer: say where the setting lives
        if any(a == flag or a.startswith(flag + "=") or a.startswith(flag + ".") for a in args):
            lines = [f"{flag} is not an option: {hint}" if f"unknown option {flag}" in line else line for line in lines]
    return lines


def debug_requested(args: list[str]) -> bool:
    return "--debug" in args or debug_enabled()


def main(args: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if args is None else args)
    debug = debug_requested(raw)
    if debug:
        os.environ["VCAP_DEBUG"] = "1"  # DataLoader workers and subprocesses show third-party output too
    raw = [a for a in raw if a != "--debug"]
    setup_logging(debug)
    try:
        run(raw, from_sys_argv=args is None)
    except Exception as err:
        if debug or not isinstance(err, user_error_types()):
            raise
        for line in error_lines(err, raw):
            print(f"vcap: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
