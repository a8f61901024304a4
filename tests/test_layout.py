"""The package's shape: the library never uses the experiments or the command line.

The import graph is read from the source with ``ast`` (every ``import`` statement,
those inside functions included), so a lazy import counts like any other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import onespike

SRC = Path(onespike.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The onespike modules that ``name`` imports (``from a import b`` counts as ``a.b``
    when ``a.b`` is a module, else as ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def is_library(name: str) -> bool:
    return not (
        name.startswith("onespike.experiments") or name in ("onespike.cli", "onespike.__main__")
    )


def test_the_import_graph_is_read():
    g = import_graph()
    assert "onespike.codes.phase" in g["onespike.network"]
    assert "onespike.convert" in g["onespike"]
    assert "onespike.data.select" in g["onespike.data"]  # a relative import
    assert "onespike.experiments.sweep" in g["onespike.cli"]  # a lazy import


def test_library_imports_neither_experiments_nor_cli():
    bad = {
        (name, dep)
        for name, deps in import_graph().items()
        if is_library(name)
        for dep in deps
        if dep.startswith("onespike.experiments") or dep == "onespike.cli"
    }
    assert not bad, sorted(bad)


def test_experiments_do_not_import_the_command_line():
    bad = {
        (name, dep)
        for name, deps in import_graph().items()
        if name.startswith("onespike.experiments")
        for dep in deps
        if dep == "onespike.cli"
    }
    assert not bad, sorted(bad)


def test_convert_runs_without_loading_experiments_or_cli():
    code = """
import sys
import torch
from torch import nn
import onespike
ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
x = torch.rand(32, 4)
snn = onespike.convert(ann, x, phases=4, progress=False)
onespike.cost(ann, snn, x, mode="step")
loaded = sorted(m for m in sys.modules if m.startswith("onespike"))
bad = [m for m in loaded if m.startswith("onespike.experiments") or m == "onespike.cli"]
print(len(loaded), bad)
assert not bad, bad
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("[]")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more
    modules (Tarjan), plus modules that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []


def test_the_readme_layout_lists_every_module():
    """README.md's layout section names every module of the package (one line each)."""
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    listed = set()
    for line in layout.splitlines():
        for word in line.replace(",", " ").split():
            if word.endswith(".py"):
                listed.add(word)
    missing = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if str(p.relative_to(SRC)) not in listed
    ]
    assert not missing, missing


def test_no_function_over_150_lines():
    """Long functions hide their steps: every function of the package fits in 150 lines."""
    long = []
    for p in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 150:
                    long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
