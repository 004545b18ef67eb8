"""Console logging for the CLI: vcap's own messages through rich, and known third-party noise silenced here.

Every silenced message is listed in ``NOISE`` (logged lines) or ``NOISY_WARNINGS`` (Python warnings) with the reason
it is harmless, so a real warning is never lost to a broad filter. ``VCAP_DEBUG=1`` / ``--debug`` shows them all.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterator
import warnings

from rich.console import Console
from rich.logging import RichHandler

# Logged lines (any logger) that say nothing about the user's run.
NOISE: tuple[str, ...] = (
    r"💡 Tip: For seamless cloud",  # Lightning advertising litlogger / litmodels
    r"Failed to load CPU gemm_4bit_forward from kernels-community",  # bitsandbytes: optional faster CPU kernel
    # kernels (a transformers dependency) when bitsandbytes looks for that optional kernel offline
    r"Skipping publisher trust check for 'kernels-community/",
    r"(GPU|TPU|HPU) available: ",  # Lightning's hardware inventory; vcap logs the device it uses
    r"Seed set to \d+",
)

# Python warnings: (message regex, why it is harmless).
NOISY_WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*Using ModelCheckpoint with manual optimization", "GRPO steps its optimizer itself; checkpoints after the "
     "step are what resuming needs"),
    (r".*LeafSpec", "Lightning's own pytree helper uses an API torch deprecated; nothing for the user to do"),
    (r".*`max_length` is ignored when `padding`=`True`", "the Qwen2-VL processor passes max_length for every batch"),
    (r".*module\(s\) in eval mode at the start of training", "the frozen reference model is in eval mode on purpose"),
    (r".*does not have many workers which may be a bottleneck", "num_workers is the user's choice, set in the config"),
    (r"No seed found, seed set to", "bench configs leave seed_everything unset: greedy decoding needs no seed"),
    (r"`loftq_config` specified but will be ignored", "the CLI fills LoraConfig's loftq_config with LoftQConfig's "
     "defaults; LoftQ is used only with init_lora_weights: loftq, as the warning itself says"),
    (r"`is_gradient_checkpointing` is deprecated", "peft reads a transformers property renamed in 5.x; nothing for "
     "the user to do"),
    (r".*The `srun` command is available on your system", "SLURM hint irrelevant to single-node runs"),
    (r"'pin_memory' argument is set as true but no accelerator is found", "a GPU recipe (pin_memory: true) run on "
     "the CPU: pinning only speeds up copies to a GPU, and torch skips it"),
)


# Python warnings shown once per run, whatever code emits them (a message repeated from two lines of the same
# library is one warning to the user): (message regex, why once is enough).
ONCE_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"This DataLoader will create \d+ worker processes", "torch checks the worker count when a loader is made and "
     "again when it is iterated, from two lines of its code; the advice is the same"),
)
_said: set[str] = set()  # messages of ``warn_once`` already logged in this run


def warn_once(logger: logging.Logger, message: str, *args) -> None:
    """Log a warning once per run: the CLI's checks (``vcap.cli.preflight``) and the run itself read the same inputs,
    and each would otherwise say the same thing about them."""
    text = message % args if args else message
    if text not in _said:
        _said.add(text)
        logger.warning(text)


def debug_enabled() -> bool:
    """``--debug`` / ``VCAP_DEBUG=1`` (the CLI sets the variable, so DataLoader workers see it too)."""
    return os.environ.get("VCAP_DEBUG", "").lower() not in ("", "0", "false", "no")


@contextmanager
def c_output_silenced() -> Iterator[None]:
    """Silence what C libraries write straight to file descriptors 1 and 2 while the block runs: decord and its
    FFmpeg print "moov atom not found" / "video_reader.cc:83: ERROR opening" there, past Python's logging (the
    BadVideoError that follows names the file and the reason). Shown with ``--debug``."""
    if debug_enabled():
        yield
        return
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        libc.fflush(None)  # C-buffered text goes to /dev/null, not to the terminal later
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


class NoiseFilter(logging.Filter):
    """Drops the log records listed in ``NOISE``."""

    def __init__(self, patterns: tuple[str, ...] = NOISE):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party record must not break logging
            return True
        return not self.pattern.search(message)


def silence_warnings() -> None:
    for message, _why in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for message, _why in ONCE_WARNINGS:
        warnings.filterwarnings("once", message=message)


def setup_logging(debug: bool = False) -> None:
    """vcap INFO and everyone's WARNING through one rich handler on stderr; noise filtered unless ``debug``."""
    _said.clear()  # a new run (an in-process caller may run several) says its warnings again
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    if not debug:
        handler.addFilter(NoiseFilter())
        silence_warnings()
        try:  # transformers' per-shard "Loading weights" bars; vcap logs the loaded policy instead
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("vcap").setLevel(logging.DEBUG if debug else logging.INFO)
    # Lightning installs its own stream handlers when imported first; route its messages through ours instead.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
