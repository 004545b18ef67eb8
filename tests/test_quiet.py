"""Known third-party noise is dropped in one place; real warnings and vcap's own messages still show."""
import logging
import warnings

from vcap.quiet import NOISE, NOISY_WARNINGS, NoiseFilter, silence_warnings


def record(name, message, level=logging.WARNING):
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_noise_filter_drops_listed_messages_only():
    keep = NoiseFilter().filter
    assert not keep(record("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging and "
                                                                     "experiment tracking, try installing [litlogger]"))
    assert not keep(record("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from "
                                                             "kernels-community: No module named 'kernels'. "
                                                             "Please make sure you already `pip install kernels`"))
    assert not keep(record("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False"))
    assert keep(record("vcap.methods.policy", "policy vcap-tiny: 330,240 trainable / 330,240 parameters", logging.INFO))
    assert keep(record("lightning.pytorch.utilities.rank_zero", "Restoring states from the checkpoint path at x"))
    assert keep(record("bitsandbytes", "CUDA out of memory while quantizing"))
    malformed = logging.LogRecord("x", logging.WARNING, __file__, 1, "needs %s %s", ("one arg",), None)
    assert keep(malformed)  # a third-party formatting bug must not hide the message


def test_listed_warnings_are_silenced_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_warnings()
        warnings.warn("`max_length` is ignored when `padding`=`True` and there is no truncation strategy.")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`")
        warnings.warn("Found 65 module(s) in eval mode at the start of training. This may lead to ...")
        warnings.warn("The dataloader, val_dataloader, does not have many workers which may be a bottleneck.")
        warnings.warn("Your reward is NaN for 3 completions")
    assert [str(w.message) for w in caught] == ["Your reward is NaN for 3 completions"]


def test_every_silenced_entry_says_why():
    assert NOISE and all(why.strip() for _, why in NOISY_WARNINGS)
