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
from lightning.pytorch.cli import LightningCLI

from vcap.errors import ServiceError, UsageError, one_line, simplify_parser_message, user_error_types
from vcap.preflight import MODEL_NOT_SET, PreflightError, preflight
from vcap.quiet import debug_enabled, setup_logging
from vcap.checkpoints import read_info
from vcap.ckpt_options import change_problems, model_options
from vcap.leaf_options import apply_leaves, split_leaf_flags
from vcap.resume import resolve_last
from vcap.trainer import VcapTrainer  # noqa: F401  (vcap.cli.VcapTrainer is what vcap compare and users import)

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


class VcapCLI(LightningCLI):
    def __init__(self, *args: Any, leaf_flags: list | None = None, **kwargs: Any):
        self.leaf_flags = leaf_flags or []  # dotted flags into mapping options (vcap.leaf_options)
        super().__init__(*args, **kwargs)

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
        from jsonargparse._actions import _ActionPrintConfig

        try:
            if not self.leaf_flags:
                return super().parse_arguments(parser, args)
            # --print_config prints while parsing, before the dotted flags into mappings are set: print afterwards
            with _ActionPrintConfig.skip_print_config():
                super().parse_arguments(parser, args)
            if _ActionPrintConfig.is_print_config_requested(parser):
                apply_leaves(self.config[self.config.subcommand], self.leaf_flags)
                _ActionPrintConfig.print_config_if_requested(parser, self.config)
        except ArgumentError as err:
            argv = sys.argv[1:] if args is None else list(args)
            sub = next((a for a in argv if a in self._subcommand_parsers), None)
            options = list(self._subcommand_parsers[sub]._option_string_actions) if sub else []
            raise UsageError(simplify_parser_message(str(err), options)) from err

    def before_instantiate_classes(self) -> None:
        """Validate accelerator, model, checkpoint and data before anything loads or writes a file."""
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        apply_leaves(config, self.leaf_flags)
        preflight(self.subcommand, config)

    def _parse_ckpt_path(self) -> None:
        """Lightning puts a checkpoint's saved hyperparameters over the model options given now; vcap keeps the
        options given now and only refuses a change of those the checkpoint fixes (vcap.ckpt_options), before
        anything loads. ``fit --ckpt_path last`` becomes the newest checkpoint of the run (continued in its own
        folder); a file that is not whole, or holds objects the safe loader refuses, is one line."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path:
            return
        weights_only = config.get("weights_only") is not False
        if subcommand == "fit" and str(ckpt_path) == "last":
            info = resolve_last(config, weights_only)
            shown = info.path
        elif Path(str(ckpt_path)).exists():
            info, shown = read_info(ckpt_path, weights_only), ckpt_path
        else:
            return  # 'best', a remote path or a missing file: preflight names the problem
        problems = change_problems(shown, subcommand, info.hparams, model_options(config.get("model")))
        if problems:
            raise PreflightError(problems)

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

    expanded, leaves = split_leaf_flags(expand_bench(args))
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
        parser_kwargs=parser_kwargs(), auto_configure_optimizers=False, leaf_flags=leaves,
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
    previous = os.environ.get("VCAP_DEBUG")
    if debug:
        os.environ["VCAP_DEBUG"] = "1"  # DataLoader workers and subprocesses show third-party output too
    raw = [a for a in raw if a != "--debug"]
    setup_logging(debug)
    try:
        run(raw, from_sys_argv=args is None)
    except Exception as err:
        service = isinstance(err, ServiceError)  # the judge, the disk: exit 1; the user's input: exit 2
        if debug or not (service or isinstance(err, user_error_types())):
            raise
        for line in error_lines(err, raw):
            print(f"vcap: error: {line}", file=sys.stderr)
        raise SystemExit(1 if service else 2) from None
    finally:  # an in-process caller (a test, a notebook) gets its environment back
        if previous is None:
            os.environ.pop("VCAP_DEBUG", None)
        else:
            os.environ["VCAP_DEBUG"] = previous


if __name__ == "__main__":
    main()
