"""Prepare a module for mutmut in scripts/mutation.sh's scratch copy (the work tree is never touched).

1. Decorated functions become plain ones. mutmut 3 skips every decorated function (other than staticmethod and
   classmethod), which would leave out the loss aggregations (``@register_loss``), the gradient all-reduce and
   the old/reference log-prob pass (``@torch.no_grad()``). ``@dec def f`` is rewritten as ``def f`` followed by
   ``f = dec(f)``: the same object under the same name, but now mutmut mutates ``f``.
2. A LightningModule's ``__init__`` is fenced off with ``# pragma: no mutate start/end``. ``save_hyperparameters``
   reads the constructor's arguments from the ``__init__`` frame, which mutmut's trampoline replaces: under mutmut
   the hyperparameters would come out empty and every test of the module fail before any mutant runs.

``--sample N MUTATED_FILE MODULE`` prints the names of a seeded random sample of N mutants in mutmut's mutated copy
of MODULE (for ``MUTATION_SAMPLE``), one a line, sorted.
"""
import ast
import random
import re
import sys
from pathlib import Path

KEEP = {"staticmethod", "classmethod"}  # mutmut handles these itself


def undecorate(source: str) -> str:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first line to drop, last line to drop, line after which to insert, text), 1-based
    bodies = [(tree.body, "")] + [(node.body, " " * (node.body[0].col_offset)) for node in tree.body
                                  if isinstance(node, ast.ClassDef)]
    for body, indent in bodies:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
                continue
            names = [ast.get_source_segment(source, d) for d in node.decorator_list]
            if any(n in KEEP for n in names):
                continue
            wrapped = node.name
            for decorator in reversed(names):  # the decorator nearest the def applies first
                wrapped = f"({decorator})({wrapped})"
            first, last = node.decorator_list[0].lineno, node.decorator_list[-1].end_lineno
            edits.append((first, last, node.end_lineno, f"{indent}{node.name} = {wrapped}\n"))
    for first, last, end, text in sorted(edits, reverse=True):
        lines.insert(end, text)
        del lines[first - 1:last]
    return "".join(lines)


def fence_lightning_init(source: str) -> str:
    if not re.search(r"^class \w+\((L\.LightningModule|CaptionPolicyModule|GRPOModule)\)", source, re.M):
        return source
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        if inside and re.match(r"    (def |@)", line):
            out.append("    # pragma: no mutate end\n")
            inside = False
        if re.match(r"    def __init__\(", line):
            out.append("    # pragma: no mutate start\n")
            inside = True
        out.append(line)
    return "".join(out)


def sample_mutants(mutated: str, module: str, count: int, seed: int = 0) -> list[str]:
    """mutmut's names (``package.module.x_function__mutmut_N``, methods ``xǁClassǁmethod__mutmut_N``) of ``count``
    mutants drawn without replacement, the same ones for the same file and seed."""
    names = sorted(set(re.findall(r"def (x\S+?__mutmut_\d+)\(", mutated)))
    random.Random(seed).shuffle(names)
    prefix = module.removesuffix(".py").replace("/", ".")
    return sorted(f"{prefix}.{name}" for name in names[:count])


if __name__ == "__main__":
    if sys.argv[1] == "--sample":
        count, mutated, module = int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
        print("\n".join(sample_mutants(mutated.read_text(encoding="utf-8"), module, count)))
        sys.exit(0)
    for name in sys.argv[1:]:
        path = Path(name)
        source = path.read_text()
        prepared = fence_lightning_init(undecorate(source))
        path.write_text(prepared)
        if prepared != source:
            print(f"  {name}: decorators applied by assignment, LightningModule __init__ fenced off")
