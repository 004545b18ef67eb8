"""Kernels per decode step, counted on any device (CPU included): the count is decided by the code and the compiler.

Two counters, used by ``benchmarks/decode_kernels.py`` and ``tests/test_decode_kernels.py``:

* **eager** (``eager_kernels``): the ATen ops a call dispatches, counted by a ``TorchDispatchMode``, less those that
  launch no kernel: views and other metadata-only ops (every op whose schema says all its outputs alias an input
  without writing it: ``view``, ``expand``, ``unsqueeze``, ``transpose``, ``slice``, ``select``, ``permute``, ``t``,
  ``alias``, ``detach``, ``as_strided``, ``split``, ``unbind``, ...; plus ``_unsafe_view``, which is one without the
  alias annotation) and allocations whose memory is never filled (``empty``, ``empty_like``, ``empty_strided``,
  ``new_empty``, ``new_empty_strided``) and ``lift_fresh`` (hands a tensor through). In-place ops count (they write).
  On a GPU each counted op is one launch, except a few that launch several (``sort``, ``cumsum`` on long rows).
* **compiled** (``compiled_kernels``): what inductor's generated ``call()`` launches per call, read from the generated
  Python wrapper (``torch._inductor.utils.run_and_get_code`` after a compile with a fresh inductor cache): each call
  of a kernel that inductor generated (``cpp_fused_*`` on CPU, ``triton_*.run`` on CUDA), each extern kernel
  (``extern_kernels.mm/addmm/bmm/...``: the GEMMs), each ATen fallback (``aten.*`` / ``torch.ops.*``: ops inductor
  does not lower, e.g. ``sort``) and each ``copy_`` the wrapper emits to write a result back into a mutated input.
  Allocations (``empty_strided_*``), ``reinterpret_tensor`` (a view), size/stride asserts and ``del`` launch nothing
  and are not counted.
"""
from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = frozenset({"_unsafe_view", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                       "lift_fresh"})
WRAPPER_WRITES = frozenset({"copy_"})  # tensor methods the wrapper calls to write into a mutated input


def launches_no_kernel(func) -> bool:
    """A view or metadata-only op (every output aliases an input and none is written), or one of ``NO_KERNEL``."""
    if func.overloadpacket.__name__ in NO_KERNEL:
        return True
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class OpCounter(TorchDispatchMode):
    """ATen ops dispatched under it, by name: ``kernels`` the counted ones, ``skipped`` the others."""

    def __init__(self):
        super().__init__()
        self.kernels: Counter = Counter()
        self.skipped: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.skipped if launches_no_kernel(func) else self.kernels)[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def eager_kernels(fn: Callable, *args, **kwargs) -> Counter:
    """The kernel-launching ATen ops of one call of ``fn``, by op name (see the module docstring)."""
    counter = OpCounter()
    with counter:
        fn(*args, **kwargs)
    return counter.kernels


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def wrapper_launches(code: str) -> Counter:
    """Kernel launches in one generated inductor module's ``call`` (and its graph partitions), by kind: ``generated``
    (a kernel inductor wrote), ``extern`` (``extern_kernels.*``), ``aten`` (a fallback op), ``copy`` (a write-back)."""
    tree = ast.parse(code)
    generated = set()  # module-level names bound to a compiled kernel: NAME = async_compile.cpp_pybinding(...)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and _dotted(node.value.func).startswith("async_compile.")):
            generated.update(t.id for t in node.targets if isinstance(t, ast.Name))
    bodies = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
              and (n.name == "call" or n.name.startswith("partition_"))]
    counts: Counter = Counter()
    for body in bodies:
        for node in ast.walk(body):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            head = name.split(".")[0]
            if head in generated:  # cpp: kernel(...); triton: kernel.run(...)
                counts["generated"] += 1
            elif head == "extern_kernels":
                counts["extern"] += 1
            elif head == "aten" or name.startswith("torch.ops."):
                counts["aten"] += 1
            elif isinstance(node.func, ast.Attribute) and node.func.attr in WRAPPER_WRITES:
                counts["copy"] += 1
    return counts


def compiled_code(fn: Callable, *args, **kwargs) -> list[str]:
    """The wrapper modules inductor generates for ``fn`` (compiled now, whole graph, static shapes, with a fresh
    cache so nothing is loaded from an earlier compile). ``fn`` runs once."""
    from torch._inductor.utils import fresh_cache, run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="inductor", fullgraph=True, dynamic=False)
    with fresh_cache():
        _, codes = run_and_get_code(compiled, *args, **kwargs)
    torch._dynamo.reset()
    return codes


def compiled_kernels(fn: Callable, *args, **kwargs) -> Counter:
    """Kernel launches per call of ``fn`` compiled by inductor, by kind (see ``wrapper_launches``)."""
    counts: Counter = Counter()
    for code in compiled_code(fn, *args, **kwargs):
        counts.update(wrapper_launches(code))
    return counts


def decode_bucket(model, sampling, rows: int = 8, prompt_len: int = 32, cache_len: int = 256, seed: int = 0):
    """The state and static cache of a decode step on ``rows`` completions of one random text prompt, after a
    two-token rollout (``DecodeRunner``), ready for the next step."""
    from vcap.grpo.graphs import DecodeRunner

    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(16, vocab, (1, prompt_len), generator=generator).to(device)  # no special/vision token
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    runner = DecodeRunner()
    with torch.no_grad():
        runner.generate(model, inputs, rows, 2, [vocab - 1], sampling, cache_len=cache_len)
    bucket = next(iter(runner.buckets.values()))
    return bucket.state, bucket.cache


def decode_step_kernels(model, sampling, step=None, compiled: bool = True, **shape) -> dict:
    """Kernels of one decode step of ``model`` (``step``: default ``vcap.grpo.decode.decode_step``) on a fresh
    bucket: {"eager": ATen ops that launch a kernel, "eager_ops": by name, "compiled": inductor's launches,
    "compiled_by_kind": by kind}. The Exp(1) draw of a sampled step runs outside the step and is not counted."""
    from vcap.grpo.decode import decode_step
    from vcap.grpo.decode_attention import decode_attention

    step = step or decode_step
    state, cache = decode_bucket(model, sampling, **shape)
    out = {}
    with torch.no_grad(), decode_attention(model):
        ops = eager_kernels(step, model, state, cache, sampling)
        out.update(eager=sum(ops.values()), eager_ops=dict(sorted(ops.items())))
        if compiled:
            kinds = compiled_kernels(step, model, state, cache, sampling)
            out.update(compiled=sum(kinds.values()), compiled_by_kind=dict(sorted(kinds.items())))
    return out
