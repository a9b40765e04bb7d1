"""The bench's baseline and the accuracy budget: parsing ``--baseline FILE[:backend]``, choosing the
baseline row, filling every row's comparison with it, and the one rule for "within budget".

Per row against the baseline (same images, so the comparison is paired image by image):

* ``delta_pt``: top-1 difference in percentage points; ``speedup``: throughput ratio;
* ``delta_se_pt``: standard error of ``delta_pt``, the SE of the mean of
  ``d_i = correct_row_i - correct_base_i`` over the evaluated images (x100): how much
  ``delta_pt`` could move on another sample of test images of the same size;
* ``baseline_agreement``: fraction of images whose predicted class equals the baseline's;
* ``within_budget`` (:func:`qualifies`): the row ran, its throughput timing settled
  (``timing_stable_batch``, :func:`settled`) and its top-1 drop is at most ``max_drop_pt`` (default :func:`default_max_drop_pt`: 1 % of the
  baseline's top-1); ``budget_marginal``: the drop is closer to the budget than one SE, so the
  verdict rests on less than the evidence resolves.

:func:`best_variant` (the report's "fastest variant within budget") uses :func:`qualifies` too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

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


# default budget: a row may lose at most this fraction of the baseline's top-1
DEFAULT_MAX_DROP_FRACTION = 0.01


def default_max_drop_pt(base_top1: float) -> float:
    """Return the default budget in percentage points: 1 % of the baseline's top-1 (a fraction)."""
    return 100.0 * DEFAULT_MAX_DROP_FRACTION * float(base_top1)


def budget_pt(base: dict | None, max_drop_pt: float | None = None) -> float | None:
    """Return the budget in effect: ``max_drop_pt`` if given, else the default for ``base``
    (``None`` without a baseline that ran)."""
    if max_drop_pt is not None:
        return float(max_drop_pt)
    if base is None or base.get("top1") is None:
        return None
    return default_max_drop_pt(base["top1"])


def paired_delta(pred: torch.Tensor, base_pred: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """Return ``(delta_pt, se_pt, agreement)`` of a row's per-image predictions against the
    baseline's on the same images: mean and standard error (sample SD / sqrt n) of
    ``d_i = correct_i - base_correct_i`` in percentage points, and the fraction of equal predictions."""
    if pred.shape != base_pred.shape or pred.shape != labels.shape or labels.numel() == 0:
        raise ValueError("paired_delta needs predictions of the same images as the baseline")
    d = (pred == labels).double() - (base_pred == labels).double()
    n = d.numel()
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return 100.0 * float(d.mean()), 100.0 * se, float((pred == base_pred).double().mean())


def ran_ok(r: dict) -> bool:
    """Return whether row ``r`` ran and has a top-1."""
    return r.get("status") == "ok" and r.get("top1") is not None


# the timing flag behind each timed metric: batch N for throughput, batch 1 for latency
STABLE_KEY = {"throughput": "timing_stable_batch", "latency_p50_ms": "timing_stable_b1"}


def settled_flag(row: dict, metric: str = "throughput") -> bool | None:
    """Return whether the timing behind ``metric`` (a key of :data:`STABLE_KEY`) settled: the row's
    ``timing_stable_batch`` / ``timing_stable_b1``. Where that is null (a row written before vggc recorded
    the two apart, or a metric that was not timed and so cannot be picked) it answers with
    ``timing_stable``, which says both settled: the stricter rule, so an old results.json never gains
    a pick; ``None`` when neither is recorded (the row was not timed)."""
    flag = row.get(STABLE_KEY[metric])
    return flag if flag is not None else row.get("timing_stable")


def settled(row: dict, metric: str = "throughput") -> bool:
    """Return whether :func:`settled_flag` is True."""
    return settled_flag(row, metric) is True


def qualifies(row: dict, base: dict | None, max_drop_pt: float | None, metric: str = "throughput") -> bool:
    """The one rule for "within budget" on ``metric`` (throughput at the bench batch, or
    ``latency_p50_ms`` at batch 1): ``row`` ran with a throughput, the timing behind ``metric`` settled
    (:func:`settled`: a noisy batch-1 timing does not veto a throughput pick, nor the reverse) and it
    loses at most ``max_drop_pt`` percentage points of top-1 against ``base``. False without a
    baseline or a budget."""
    if base is None or max_drop_pt is None or not ran_ok(base) or not ran_ok(row) or row.get("throughput") is None:
        return False
    if not settled(row, metric):
        return False
    return 100.0 * (base["top1"] - row["top1"]) <= max_drop_pt + 1e-9


def marginal(row: dict, base: dict | None, max_drop_pt: float | None) -> bool:
    """True when ``row``'s top-1 drop is within one standard error (``delta_se_pt``) of the budget:
    its verdict (in or out) rests on less than one SE."""
    se = row.get("delta_se_pt")
    if base is None or max_drop_pt is None or not ran_ok(base) or not ran_ok(row) or not se or math.isnan(se):
        return False
    return abs(100.0 * (base["top1"] - row["top1"]) - max_drop_pt) < se


def best_variant(rows: list[dict], min_fraction: float | None = None, *, max_drop_pt: float | None = None) -> dict | None:
    """Return the fastest row that :func:`qualifies` against the baseline row (``is_baseline``);
    ``None`` without a baseline or when no row qualifies. Budget: ``max_drop_pt``, else
    ``(1 - min_fraction)`` of the baseline's top-1, else the default (1 % of it)."""
    base = next((r for r in rows if r.get("is_baseline") and ran_ok(r)), None)
    if base is None:
        return None
    if max_drop_pt is None and min_fraction is not None:
        max_drop_pt = 100.0 * (1.0 - min_fraction) * base["top1"]
    budget = budget_pt(base, max_drop_pt)
    return max((r for r in rows if qualifies(r, base, budget)), key=lambda r: r["throughput"], default=None)


def apply_baseline(rows: list[dict], base_path: Path | None = None, base_backend: str | None = None, *,
                   predictions: Sequence[torch.Tensor | None] | None = None, labels: torch.Tensor | None = None,
                   max_drop_pt: float | None = None) -> dict | None:
    """Fill each row's comparison with the baseline row (``delta_pt``, ``speedup`` and, given
    per-image ``predictions`` aligned with ``rows`` and the ``labels``, ``delta_se_pt`` and
    ``baseline_agreement``; ``within_budget`` and ``budget_marginal`` for the budget
    ``max_drop_pt``, default 1 % of the baseline's top-1); return the baseline row (``None`` if
    it did not run).

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
    preds = list(predictions) if predictions is not None else [None] * len(rows)
    if len(preds) != len(rows):
        raise ValueError(f"apply_baseline: {len(preds)} predictions for {len(rows)} rows")
    base_pred = next((p for r, p in zip(rows, preds) if r is base), None)
    budget = budget_pt(base, max_drop_pt)
    for r, pred in zip(rows, preds):
        r["delta_se_pt"] = r["baseline_agreement"] = None
        if base_pred is not None and pred is not None and labels is not None and ok(r):
            _, se, agree = paired_delta(pred, base_pred, labels)
            r["delta_se_pt"] = round(se, 4)
            r["baseline_agreement"] = round(agree, 6)
        r["within_budget"] = qualifies(r, base, budget) if base is not None and ok(r) else None
        r["budget_marginal"] = marginal(r, base, budget) if base is not None and ok(r) else None
    return base
