"""Counts of the expensive work done in this process: how often an artifact or a number is made.

The pipeline records, per step, how many FP32 ONNX exports and FP32 evaluations of a source
model the step did (``pipeline.json``: each step's ``work`` and the run's total), which is how
"each artifact made once" is checked. Library code calls :func:`count` where the work happens::

    count("fp32_export")                     # vggc.export.onnx.export_onnx, FP32 graph
    count("fp32_source_eval", key=digest)    # an FP32 source model evaluated on one evaluation set

:func:`snapshot` and :func:`since` give the counts between two points. Nothing is printed.
"""

from __future__ import annotations

from collections import Counter

# (what, key) -> times; key is None or e.g. the digest of the evaluation set
_COUNTS: Counter = Counter()

# the names pipeline.json reports: what -> JSON key
REPORTED = {"fp32_export": "fp32_exports", "fp16_export": "fp16_exports", "fp32_source_eval": "fp32_source_evals"}


def count(what: str, key: str | None = None, n: int = 1) -> None:
    """Record ``n`` more of ``what`` (e.g. ``"fp32_export"``), optionally per ``key``."""
    _COUNTS[(what, key)] += n


def snapshot() -> Counter:
    """Return a copy of the counts so far (for :func:`since`)."""
    return Counter(_COUNTS)


def since(before: Counter) -> dict:
    """Return the work done since ``before`` (a :func:`snapshot`): ``{"fp32_exports": n,
    "fp16_exports": n, "fp32_source_evals": n, "fp32_source_evals_by_set": {key: n}}``; every
    :data:`REPORTED` name is present (0 when none), ``..._by_set`` only when some work had a key."""
    diff = Counter(_COUNTS)
    diff.subtract(before)
    out: dict = {name: 0 for name in REPORTED.values()}
    by_set: dict[str, dict[str, int]] = {}
    for (what, key), n in sorted(diff.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if n <= 0:
            continue
        name = REPORTED.get(what, what)
        out[name] = out.get(name, 0) + n
        if key is not None:
            by_set.setdefault(f"{name}_by_set", {})[key] = n
    out.update(by_set)
    return out


def total(records: list[dict]) -> dict:
    """Return the sum of several :func:`since` dicts (a run's total over its steps)."""
    out: dict = {name: 0 for name in REPORTED.values()}
    for rec in records:
        for k, v in (rec or {}).items():
            if isinstance(v, dict):
                sub = out.setdefault(k, {})
                for kk, n in v.items():
                    sub[kk] = sub.get(kk, 0) + n
            else:
                out[k] = out.get(k, 0) + v
    return out


def describe(work: dict) -> str:
    """Return the work in words for a log line (``"1 FP32 export, 2 FP32 source evaluations"``;
    ``""`` when there was none)."""
    words = {"fp32_exports": "FP32 export", "fp16_exports": "FP16 export",
             "fp32_source_evals": "FP32 source evaluation"}
    parts = [f"{work[k]} {w}{'s' if work[k] != 1 else ''}" for k, w in words.items() if work.get(k)]
    return ", ".join(parts)
