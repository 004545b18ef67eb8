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

from vcap.cli.parser import VcapCLI  # noqa: F401  (vcap.cli.VcapCLI stays importable)
from vcap.errors import ServiceError, UsageError, one_line, simplify_parser_message, user_error_types
from vcap.cli.leaf_options import split_leaf_flags
from vcap.cli.preflight import MODEL_NOT_SET, PreflightError
from vcap.quiet import debug_enabled, setup_logging
from vcap.training.trainer import VcapTrainer  # noqa: F401  (vcap.cli.VcapTrainer is what users import)

BENCH_DIR = Path(__file__).resolve().parent.parent / "benches"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Options people reach for that vcap configures elsewhere: the hint says where.
OPTION_HINTS = {
    "--optimizer": "vcap's optimizer is AdamW with linear warm-up: set --model.init_args.learning_rate, "
                   "--model.init_args.weight_decay and --model.init_args.warmup_steps",
    "--lr_scheduler": "vcap's schedule is a linear warm-up: set --model.init_args.warmup_steps",
}


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

    from vcap.cli.annotate import annotate

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
        from vcap.cli.compare import main as compare_main

        return compare_main(args[1:])
    from vcap.bench.datamodule import BenchDataModule  # noqa: F401  (short names: --data BenchDataModule)
    from vcap.data.datamodule import CaptionDataModule, ShapesDataModule  # noqa: F401
    from vcap.grpo.module import GRPOModule  # noqa: F401  (short names: --model GRPOModule)
    from vcap.methods.policy import CaptionPolicyModule
    from vcap.methods.sft import SFTModule  # noqa: F401

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
