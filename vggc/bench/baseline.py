"""The bench's baseline: parsing ``--baseline FILE[:backend]``, choosing the baseline row and
filling every row's ``delta_pt`` (top-1 difference, percentage points) and ``speedup`` against it.
"""

from __future__ import annotations

import os
from pathlib import Path

from vggc import runtime
from vggc.errors import InputError


def parse_baseline(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``FILE[:backend]`` into a path and an optional backend key (validated)."""
    text = str(spec)
    path, backend = Path(text), None
    if not path.is_file() and ":" in text:
        head, tail = text.rsplit(":", 1)
        path, backend = Path(head), tail.strip() or None
    if not path.is_file():
        raise InputError(f"--baseline {text}: no such model file")
    if backend is not None:
        known = [b.key for b in runtime.backends()]
        if backend not in known:
            raise InputError(f"--baseline {text}: unknown backend {backend!r}; known: {', '.join(known)}")
    return path, backend


def same_file(a: Path, b: Path) -> bool:
    """Return whether ``a`` and ``b`` name the same file (resolved; by text when unresolvable)."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return str(a) == str(b)


def apply_baseline(rows: list[dict], base_path: Path | None = None, base_backend: str | None = None) -> dict | None:
    """Fill ``delta_pt`` (percentage points of top-1) and ``speedup`` (throughput ratio) against
    the baseline row; return that row (``None`` if it did not run).

    Baseline: the first row that ran of ``base_path`` (on ``base_backend`` if given); by default
    the first row that ran at all.
    """
    def ok(r):
        return r["status"] == "ok" and r["top1"] is not None

    cands = rows
    if base_path is not None:
        cands = [r for r in rows if same_file(Path(r["path"]), base_path)]
    if base_backend is not None:
        cands = [r for r in cands if r["backend"] == base_backend]
    # default: the first model's first row that ran (rows are grouped by model, so when every row of
    # the first model failed this falls through to the next model's)
    base = next((r for r in cands if ok(r)), None)
    for r in rows:
        r["is_baseline"] = r is base
        if base is None or not ok(r):
            continue
        r["delta_pt"] = round(100.0 * (r["top1"] - base["top1"]), 4)
        if r["throughput"] and base["throughput"]:
            r["speedup"] = round(r["throughput"] / base["throughput"], 3)
    if base is not None:
        base["delta_pt"] = 0.0
        base["speedup"] = 1.0 if base["throughput"] else None
    return base
