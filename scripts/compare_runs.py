"""Two pipeline runs side by side: the top-1 of every bench row and the step work (a benchmark report).

For "same inputs, same machine, one session, previous commit vs new commit" checks: run the same
``vggc pipeline`` command at both commits, one after the other (never both at once on a 2-core
machine), into two run directories, then

    .venv/bin/python scripts/compare_runs.py runs/before runs/after [--json compare.json]

e.g. with a worktree of the previous commit (``git worktree add --detach ../prev REV``) run by this
checkout's environment: ``(cd ../prev && PYTHONPATH=$PWD $OLDPWD/.venv/bin/python -m vggc pipeline ...)``.

Prints one line per bench row (matched on model file and backend) with both top-1s and whether they
are identical, rows only one run has, the seconds of every step, and the step work (sum of step
seconds in ``pipeline.json``) of each with its change. Exits 0; the verdict is in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows(run: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((run / "bench" / "results.json").read_text())
    return {(r["model"], r["backend"]): r for r in rows}


def compare(before: Path, after: Path) -> dict:
    """Return ``{"rows": [...], "only_before", "only_after", "steps": {...}, "step_work": {...}}`` for
    two pipeline run directories (each with ``pipeline.json`` and ``bench/results.json``)."""
    a, b = _rows(before), _rows(after)
    rows = []
    for key in [k for k in a if k in b]:
        ta, tb = a[key].get("top1"), b[key].get("top1")
        if ta is None and tb is None:
            continue  # a row neither could run (no CUDA, ...)
        rows.append({"model": key[0], "backend": key[1], "top1_before": ta, "top1_after": tb, "identical": ta == tb})
    pa, pb = (json.loads((d / "pipeline.json").read_text()) for d in (before, after))
    sa = {s["name"]: s["seconds"] for s in pa["steps"]}
    sb = {s["name"]: s["seconds"] for s in pb["steps"]}
    steps = {n: {"before": sa.get(n), "after": sb.get(n)} for n in dict.fromkeys([*sa, *sb])}
    wa, wb = pa["step_seconds"], pb["step_seconds"]
    return {"rows": rows, "only_before": [list(k) for k in a if k not in b and a[k].get("top1") is not None],
            "only_after": [list(k) for k in b if k not in a and b[k].get("top1") is not None],
            "steps": steps, "step_work": {"before": wa, "after": wb, "change": (wb - wa) / wa if wa else None}}


def _pct(top1: float | None) -> str:
    return "-" if top1 is None else f"{100 * top1:.2f}"


def _sec(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    args = ap.parse_args(argv)
    doc = compare(args.before, args.after)
    same = sum(r["identical"] for r in doc["rows"])
    print(f"{'model':52s} {'backend':22s} {'before':>8s} {'after':>8s}")
    for r in doc["rows"]:
        print(f"{r['model']:52s} {r['backend']:22s} {_pct(r['top1_before']):>8s} {_pct(r['top1_after']):>8s}"
              f"{'' if r['identical'] else '  DIFFERS'}")
    print(f"\n{same} of {len(doc['rows'])} shared rows have identical top-1")
    for side in ("only_before", "only_after"):
        if doc[side]:
            print(f"rows {side.replace('_', ' ')}: " + ", ".join(f"{m} on {b}" for m, b in doc[side]))
    print(f"\n{'step':32s} {'before s':>9s} {'after s':>9s}")
    for name, s in doc["steps"].items():
        print(f"{name:32s} {_sec(s['before']):>9s} {_sec(s['after']):>9s}")
    w = doc["step_work"]
    change = "" if w["change"] is None else f" ({100 * w['change']:+.1f} %)"
    print(f"\nstep work: {w['before']:.1f} s -> {w['after']:.1f} s{change}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
