"""No import cycle between modules of vggc/, counting imports inside functions too (a lazy import
that closes a cycle only moves the failure to run time). Read with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vggc"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """Return ``(module, imported name or None)`` for every import that can run (TYPE_CHECKING
    blocks never do), at module level or inside functions and classes."""
    out: list[tuple[str, str | None]] = []
    is_pkg = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            out.extend((base, a.name) for a in node.names)
        visit(node)

    visit(ast.parse(path.read_text()))
    return out


def import_graph() -> dict[str, set[str]]:
    """Return ``{module: vggc modules whose code runs when it imports}``.

    ``from a.b import c`` runs ``a.b.c`` when that is a module, else ``a.b``; and every package
    above the target, except the packages the importer itself lives in (already running)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for base, what in _imports(name, path):
            if not base.split(".")[0] == "vggc":
                continue
            target = f"{base}.{what}" if what and f"{base}.{what}" in mods else base
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                implicit = mod != target
                if mod in mods and mod != name and not (implicit and (name + ".").startswith(mod + ".")):
                    deps.add(mod)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_checker_finds_a_lazy_cycle():
    graph = {"vggc.a": {"vggc.b"}, "vggc.b": {"vggc.a"}, "vggc.c": {"vggc.a"}}
    assert cycles(graph) == [["vggc.a", "vggc.b"]]
    assert cycles({"vggc.a": {"vggc.b"}, "vggc.b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "vggc"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from vggc.sub.x import f\n")
    (pkg / "sub" / "x.py").write_text("def f():\n    from vggc import y\n")
    (pkg / "y.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import vggc.z\n"
                              "from .sub import x\n")
    (pkg / "z.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    graph = import_graph()
    assert graph["vggc.sub.x"] == {"vggc.y"}
    assert graph["vggc.y"] == {"vggc.sub", "vggc.sub.x"}  # TYPE_CHECKING imports never run
    assert cycles(graph) == [["vggc.sub", "vggc.sub.x", "vggc.y"]]


def test_no_import_cycle_between_vggc_modules():
    graph = import_graph()
    assert "vggc.compress.sensitivity" in graph and len(graph) > 20
    assert cycles(graph) == []
