"""The import graph of vcap has no circles: every import counts, also one inside a function (hiding an import
there does not untangle two modules). Read from the source with ``ast``, so nothing is imported to check it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """{module: vcap modules it imports}; ``from a import b`` counts as importing ``a.b`` when that is a module,
    else ``a``."""
    modules = {module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package_name = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package_name.split(".")[:len(package_name.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_by_hand():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\nfrom . import c\n")
    (package / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(package, tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a", "pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_vcap_has_no_import_circles():
    found = cycles(import_graph(ROOT / "vcap"))
    assert not found, "import circles (move what both sides need into a module of its own): " + "; ".join(
        " <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", ["vcap.errors"])
def test_error_classes_import_nothing_of_vcap(module):
    graph = import_graph(ROOT / "vcap")
    assert graph[module] == set()


FOUNDATION = ("vcap.errors", "vcap.registry", "vcap.textfiles", "vcap.provenance", "vcap.quiet", "vcap.signals",
              "vcap.prompts", "vcap.options")
# (importer, imported): a package on the left never imports one on the right (docs/architecture.md)
FORBIDDEN = [
    (FOUNDATION, ("vcap.",)),  # the foundation imports only itself (checked below with that exception)
    (("vcap.",), ("vcap.cli",)),  # only the command line imports the command line
    (("vcap.training",), ("vcap.methods", "vcap.grpo", "vcap.bench.datamodule", "vcap.bench.callback")),
    (("vcap.methods",), ("vcap.grpo.module",)),
    (("vcap.rewards", "vcap.judges", "vcap.data", "vcap.model"),
     ("vcap.methods", "vcap.grpo", "vcap.bench", "vcap.training")),
    (("vcap.grpo",), ("vcap.bench",)),
]


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importers, imported in FORBIDDEN:
        for module, targets in sorted(graph.items()):
            if not _under(module, importers):
                continue
            for target in sorted(targets):
                if importers == FOUNDATION and _under(target, FOUNDATION):
                    continue
                if importers == ("vcap.",) and _under(module, imported):
                    continue  # the command line imports itself
                if _under(target, imported):
                    found.append(f"{module} -> {target}")
    return found


def test_layer_rules_by_hand():
    graph = {"vcap.errors": set(), "vcap.textfiles": {"vcap.errors"}, "vcap.quiet": {"vcap.training.trainer"},
             "vcap.cli.parser": {"vcap.cli.preflight"}, "vcap.data.manifest": {"vcap.cli.preflight"},
             "vcap.training.trainer": {"vcap.methods.policy"}}
    assert layer_violations(graph) == ["vcap.quiet -> vcap.training.trainer",
                                       "vcap.data.manifest -> vcap.cli.preflight",
                                       "vcap.training.trainer -> vcap.methods.policy"]


def test_vcap_keeps_its_layers():
    assert layer_violations(import_graph(ROOT / "vcap")) == []


def test_no_package_holds_more_than_about_ten_modules_or_a_module_over_about_400_lines():
    root_modules = sorted(p.stem for p in (ROOT / "vcap").glob("*.py") if p.name != "__init__.py")
    assert len(root_modules) <= 10, root_modules  # the root holds the foundation only
    for package in [ROOT / "vcap", *(p for p in (ROOT / "vcap").iterdir() if (p / "__init__.py").exists())]:
        modules = [p for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 15, f"{package.relative_to(ROOT)} holds {len(modules)} modules"
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "vcap").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
