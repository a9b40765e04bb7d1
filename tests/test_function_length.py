"""No function or method in vggc/ is longer than 100 lines (from its ``def`` to its last line,
docstring included; a command's Click decorators are not counted): a long function is split into
named steps. Read with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vggc"
MAX_LINES = 100


def long_functions(root: Path = PKG, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """Return ``("path:line name", lines)`` for every function under ``root`` over ``limit`` lines."""
    out = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((f"{f.relative_to(root.parent)}:{node.lineno} {node.name}", n))
    return out


def test_no_function_over_100_lines():
    assert long_functions() == []


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert [name.split()[-1] for name, _ in long_functions(tmp_path)] == ["long"]
