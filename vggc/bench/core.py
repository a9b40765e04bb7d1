"""``run_bench``: accuracy and speed of every model file on every backend that can run its format.

Generic over :mod:`vggc.runtime`: a file's format comes from ``runtime.describe`` and its
candidate backends from ``runtime.backends_for``; no format is special-cased here. One row per
(model, backend); a row that cannot run carries the reason in ``status`` and null metrics, and
never stops the other rows. This module owns the orchestration (which rows, in which order,
timed how) and the result's ``context``; the parts live beside it:

* :mod:`vggc.bench.rows`: a row's columns, opening (model, backend), empty/failed rows;
* :mod:`vggc.bench.accuracy`: the accuracy pass and ``accuracy-cache.json``;
* :mod:`vggc.bench.timed`: timing opened rows alone or in interleaved rounds;
* :mod:`vggc.bench.baseline`: choosing the baseline row, ``delta_pt`` and ``speedup``.

Per row (backend opened once, options ``{"threads": T, "batch": N}``):

1. first call at batch N (timed: its excess over the steady median is compile/first-call cost);
2. top-1 over the test split (or a class-balanced subset) at batch N; a short last batch is padded
   to N by repeating an image and the extra outputs dropped, so a backend only ever sees batch N
   and batch 1 (static-shape engines and ``torch.compile`` compile exactly two shapes);
3. throughput at batch N and latency p50/p90 at batch 1: by default every row that ran is timed
   together in interleaved rounds (:func:`vggc.bench.timing.measure_rounds`) after all accuracy
   passes, so ratios between rows come from the same minutes of the machine; with a
   :class:`TimingPolicy` each row is timed alone (:func:`vggc.bench.timing.measure`);
4. ``compile_s`` = ``Runner.compile_seconds`` + first-call excess at batch N and at batch 1.

Accuracy of a given file on a given backend is deterministic, so it is cached in
``<out>/accuracy-cache.json`` (see :mod:`vggc.bench.accuracy`); reruns then only re-time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from vggc import runtime
from vggc.bench.accuracy import CACHE_NAME, CACHE_VERSION, AccuracyCache, split_digest
from vggc.bench.baseline import apply_baseline, budget_pt, parse_baseline, same_file
from vggc.bench.machine import machine_info
from vggc.bench.rows import METRICS, BenchRows, OpenRow, empty_row, one_line, open_row
from vggc.bench.timed import ROUND_TASK, time_alone, time_interleaved, timing_key_inputs
from vggc.bench.timing import RoundsPolicy, TimingPolicy, timing_policy
from vggc.data import Split, limit_split, load_split
from vggc.errors import InputError
from vggc.progress import Progress, no_progress

DEFAULT_OUT = Path("artifacts/bench")
QUICK_IMAGES = 2000
SUBSET_SEED = 0


# ----------------------------------------------------------------------------- backends

def parse_backends(spec: str | Sequence[str] | None) -> list[str] | str | None:
    """Return ``None`` (each format's defaults), ``"all"`` or a list of known backend keys.

    ``spec`` is a comma-separated string or a sequence of keys; unknown keys raise :class:`InputError`.
    """
    if spec is None:
        return None
    keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k and k.strip()]
    if not keys:
        raise InputError("--backends is empty; give backend keys (see `vggc bench --help`) or 'all'")
    if keys == ["all"]:
        return "all"
    known = [b.key for b in runtime.backends()]
    bad = [k for k in keys if k not in known]
    if bad:
        raise InputError(f"unknown backend {', '.join(map(repr, bad))}; known: {', '.join(known)}, all")
    return list(dict.fromkeys(keys))


# ----------------------------------------------------------------------------- run

def _choose(cands: list[runtime.Backend], selection) -> tuple[list[runtime.Backend], list[runtime.Backend]]:
    if selection == "all":
        return cands, []
    if selection is None:
        return [b for b in cands if b.default], [b for b in cands if not b.default]
    return [b for b in cands if b.key in selection], []


def run_bench(models: Sequence[str | os.PathLike], data: str | os.PathLike | Split, *, batch: int = 64,
              backends: str | Sequence[str] | None = None, baseline: str | os.PathLike | None = None,
              quick: bool = False, threads: int | None = None, limit: int | None = None,
              progress: Progress = no_progress, out: str | os.PathLike | None = DEFAULT_OUT,
              use_cache: bool = True, plot: bool = True, command: str | None = None,
              timing: TimingPolicy | RoundsPolicy | None = None, seed: int = SUBSET_SEED,
              log: Callable[[str], None] | None = None, max_drop_pt: float | None = None,
              extra_rows: Sequence[dict] = (), row_fields: dict[str, dict] | None = None) -> BenchRows:
    """Benchmark every model file on every selected backend that runs its format; return the rows.

    ``data``: a CIFAR-10 directory or an already loaded :class:`~vggc.data.Split` (test split).
    ``backends``: ``None`` = each format's default backends, ``"all"``, or keys (list or "a,b").
    ``baseline``: ``FILE[:backend]`` (added to the run if not among ``models``); default: the first
    model's first row that ran. ``quick``: a class-balanced subset of 2,000 test images (``limit``
    overrides the count) and shorter timing. ``out``: directory for results.json, results.csv,
    report.md, pareto.png, learning_curves.png (the trained variants' curves,
    :mod:`vggc.bench.curves`) and the accuracy cache (``None``: write nothing, no cache).
    ``timing``: a :class:`RoundsPolicy` times all rows together in interleaved rounds (the default:
    ``FULL_ROUNDS``, ``QUICK_ROUNDS`` with ``quick``), a :class:`TimingPolicy` times each row alone
    right after its accuracy pass (tests use a tiny one). ``threads``: CPU threads for every
    backend (torch intra-op threads, ONNX Runtime intra-op threads; compiled programs are compiled
    and run under it); default: the process's current ``torch.get_num_threads()``; each row records
    the count its runner really used. ``max_drop_pt``: the top-1 budget in percentage points for
    ``within_budget`` and the recommended variant (default: 1 % of the baseline's top-1; see
    :mod:`vggc.bench.baseline`). ``extra_rows``: rows measured elsewhere or not at all (the
    pipeline's variants whose step did not produce a file) appended after the measured ones;
    ``row_fields``: ``{model file name: fields}`` added to that file's rows (the pipeline's
    ``rebuild`` commands). Both are in the outputs, which are written once.
    """
    log = log or (lambda _msg: None)
    paths = _check_args(models, batch=batch, limit=limit, threads=threads, max_drop_pt=max_drop_pt)
    selection = parse_backends(backends)
    base_path, base_backend = parse_baseline(baseline) if baseline else (None, None)
    if base_path is not None and not any(same_file(base_path, p) for p in paths):
        paths.insert(0, base_path)
    if base_backend and isinstance(selection, list) and base_backend not in selection:
        raise InputError(f"--baseline backend {base_backend} is not among --backends {','.join(selection)}")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory")

    split = data if isinstance(data, Split) else load_split(data, "test", progress=progress)
    n_req = limit if limit is not None else (QUICK_IMAGES if quick else None)
    sub = limit_split(split, n_req, seed)
    policy = timing or timing_policy(quick=quick)
    threads = int(threads or torch.get_num_threads() or 1)
    cache = AccuracyCache(out_dir / CACHE_NAME if (out_dir is not None and use_cache) else None)
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plan, not_default = _plan(paths, selection, base_path, base_backend)
        rows, predictions = _measure(plan, sub, policy, batch=batch, threads=threads, quick=quick, cache=cache,
                                     progress=progress, log=log)
    finally:
        torch.set_num_threads(prev_threads)

    base = apply_baseline(rows, base_path, base_backend, predictions=predictions, labels=sub.labels,
                          max_drop_pt=max_drop_pt)
    budget = budget_pt(base, max_drop_pt)
    rows.extend(dict(r) for r in extra_rows)
    for row in rows:
        row.update((row_fields or {}).get(row.get("model"), {}))
    result = BenchRows(rows)
    result.context = {
        "command": command,
        "quick": quick,
        "n_images": len(sub),
        "split_size": len(split),
        "subset_seed": seed if len(sub) < len(split) else None,
        "batch": batch,
        "threads": threads,
        "backends": selection if selection is not None else "default",
        "baseline": ({"model": base["model"], "backend": base["backend"], "top1": base["top1"],
                      "throughput": base["throughput"]} if base else None),
        "baseline_requested": str(baseline) if baseline else None,
        "not_run_by_default": not_default,
        "timing": policy.to_dict(),
        "timing_environment": timing_key_inputs(threads, policy, batch),
        "max_drop_pt": round(budget, 4) if budget is not None else None,
        "max_drop_default": max_drop_pt is None,
        "accuracy_cache": str(cache.path) if cache.path else None,
        "load_average_start": load_start,
        "machine": machine_info(threads),
        "plot": plot,
    }
    if out_dir is not None:
        from vggc.bench.report import write_outputs

        result.context["outputs"] = {k: str(v) for k, v in write_outputs(result, out_dir, plot=plot).items()}
    return result


def _check_args(models, *, batch: int, limit: int | None, threads: int | None,
                max_drop_pt: float | None) -> list[Path]:
    """Refuse bad bench arguments (one line each); return the model paths."""
    if batch < 1:
        raise InputError(f"--batch {batch}: must be at least 1")
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    if max_drop_pt is not None and not (0.0 <= max_drop_pt <= 100.0):
        raise InputError(f"--max-drop {max_drop_pt}: must be between 0 and 100 percentage points")
    paths = [Path(m) for m in models]
    if not paths:
        raise InputError("no model files given")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, expected a model file")
    return paths


def _plan(paths: list[Path], selection, base_path, base_backend) -> tuple[list[tuple], dict[str, str]]:
    """Return the rows to measure, ``[(path, model file or None, backend or None, error or None)]``,
    and ``{backend: why it is not run by default}``."""
    described = []
    for p in paths:
        try:
            described.append((p, runtime.describe(p), None))
        except Exception as err:  # noqa: BLE001 - an unreadable file is one failed row
            described.append((p, None, one_line(err)))
    plan, not_default = [], {}
    for p, mf, err in described:
        if mf is None:
            plan.append((p, None, None, err))
            continue
        cands = runtime.backends_for(mf.format)
        chosen, skipped = _choose(cands, selection)
        for b in skipped:
            why = (b.note() if callable(getattr(b, "note", None)) else None) or b.available() \
                or "not in the default set"
            not_default.setdefault(b.key, why)
        if base_backend and same_file(p, base_path) and base_backend not in [b.key for b in chosen]:
            chosen += [b for b in cands if b.key == base_backend]
        if not chosen:
            what = "no registered backend runs" if not cands else "none of the selected backends runs"
            plan.append((p, mf, None, f"{what} {mf.format} files"))
        for b in chosen:
            plan.append((p, mf, b, None))
    return plan, not_default


def _measure(plan: list[tuple], sub: Split, policy, *, batch: int, threads: int, quick: bool,
             cache: AccuracyCache, progress: Progress, log: Callable[[str], None]) -> tuple[list[dict], list]:
    """Measure every planned row (accuracy, then timing alone or in interleaved rounds); return
    ``(rows, per-row predictions on sub or None)``."""
    digest = split_digest(sub)
    rows: list[dict] = []
    predictions: list[torch.Tensor | None] = []  # per row: predicted class per image of ``sub``
    interleave = isinstance(policy, RoundsPolicy)
    waiting: list[tuple[int, OpenRow]] = []
    for i, (p, mf, be, err) in enumerate(plan, 1):
        if err is not None:
            row = empty_row(mf, p, None, batch=batch, n_images=len(sub), quick=quick, threads=threads)
            row["status"] = err
            log(f"[{i}/{len(plan)}] {p.name}: {err}")
            rows.append(row)
            predictions.append(None)
            continue
        log(f"[{i}/{len(plan)}] {p.name} on {be.key} ...")
        got = open_row(mf, be, sub, batch=batch, threads=threads, quick=quick, cache=cache, data_digest=digest,
                       progress=progress)
        if isinstance(got, dict):
            log(f"[{i}/{len(plan)}] {p.name} on {be.key}: {got['status']}")
            rows.append(got)
            predictions.append(None)
            continue
        predictions.append(got.predictions)
        if got.accuracy_why:
            log(f"[{i}/{len(plan)}] {p.name} on {be.key}: {got.accuracy_why}")
        log(f"[{i}/{len(plan)}] {p.name} on {be.key}: top-1 {100 * got.row['top1']:.2f}%")
        if interleave:
            waiting.append((len(rows), got))
            rows.append(got.row)
            continue
        row = time_alone(got, policy)
        rows.append(row)
        log(f"[{i}/{len(plan)}] {p.name} on {be.key}: " + (f"{row['throughput']} img/s" if row["status"] == "ok"
                                                            else row["status"]))
    if waiting:
        log(f"timing {len(waiting)} rows in {policy.rounds} interleaved rounds ...")
        try:
            timed = time_interleaved([o for _, o in waiting], policy, progress=progress)
        finally:
            for _, o in waiting:
                o.close()
        for (k, _), row in zip(waiting, timed):
            rows[k] = row
            log(f"{row['model']} on {row['backend']}: " + (f"{row['throughput']} img/s" if row["status"] == "ok"
                                                           else row["status"]))
    return rows, predictions


__all__ = ["CACHE_NAME", "CACHE_VERSION", "DEFAULT_OUT", "METRICS", "QUICK_IMAGES", "ROUND_TASK", "SUBSET_SEED",
           "AccuracyCache", "BenchRows", "apply_baseline", "one_line", "open_row", "parse_backends", "parse_baseline",
           "run_bench", "time_alone", "time_interleaved", "timing_key_inputs"]
