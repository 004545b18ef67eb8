"""``VcapCLI``: Lightning's CLI with vcap's checks: every option is validated before anything loads, the
command line wins over a checkpoint's saved options, dotted flags into mapping options are applied (also for
``--print_config``), and parse errors are one line. ``vcap.cli`` dispatches the subcommands; ``vcap compare`` builds
its runs with this class too."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from vcap.training.checkpoints import read_info
from vcap.training.ckpt_options import change_problems, model_options
from vcap.errors import UsageError, one_line, simplify_parser_message, user_error_types
from vcap.cli.leaf_options import apply_leaves
from vcap.cli.preflight import PreflightError, preflight
from vcap.training.resume import resolve_last

ANNOTATE_HELP = "Fill missing events/structure of a manifest from its captions with a judge (vcap annotate --help)."
COMPARE_HELP = "Warm start vs time-matched SFT-continued vs GRPO on the same held-out videos (vcap compare --help)."


class VcapCLI(LightningCLI):
    def __init__(self, *args: Any, leaf_flags: list | None = None, **kwargs: Any):
        self.leaf_flags = leaf_flags or []  # dotted flags into mapping options (vcap.cli.leaf_options)
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
        options given now and only refuses a change of those the checkpoint fixes (vcap.training.ckpt_options), before
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
