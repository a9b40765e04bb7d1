"""Bench rows before and after they run: the row dict and its columns, a row that cannot run
(empty or failed), an opened row waiting to be timed, and closing its runner.

A row is a plain ``dict`` (the columns of :data:`vggc.bench.report.COLUMNS`); :class:`BenchRows`
is the list of one run plus its ``context``. :func:`open_row` opens (model, backend), times its
first calls and takes its top-1 from :mod:`vggc.bench.accuracy`; :mod:`vggc.bench.timed` then
fills the timing columns.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

import torch

from vggc import runtime
from vggc.bench.accuracy import AccuracyCache, measure_accuracy
from vggc.bench.lineage import training_budget
from vggc.data import Split
from vggc.errors import first_line
from vggc.progress import Progress, no_progress

METRICS = ("top1", "delta_pt", "latency_p50_ms", "latency_p90_ms", "throughput", "speedup", "compile_s",
           "load_s")
# how a row's top-1 and timings were obtained (null until measured, nulled again when the row fails)
MEASURE_KEYS = ("accuracy_cached", "timing_reps_batch", "timing_reps_b1", "timing_stable", "timing_spread",
                "timing_stable_batch", "timing_stable_b1")


class BenchRows(list):
    """The rows of one bench run (a plain ``list[dict]``) plus ``context``: machine, settings, baseline."""

    context: dict


def one_line(err: BaseException, limit: int = 200) -> str:
    """Return an exception as one line: the message for vggc errors, ``Type: first line`` otherwise."""
    return first_line(err, limit, typed=True)


def _precision(be: runtime.Backend, mf: runtime.ModelFile | None) -> str:
    eff = getattr(runtime, "effective_precision", None)
    if eff is not None and mf is not None:
        return eff(be, mf)
    return be.precision


def empty_row(mf: runtime.ModelFile | None, path: Path, be: runtime.Backend | None, *, batch: int,
              n_images: int, quick: bool, threads: int) -> dict:
    """Return a row with every metric null and ``status`` ``"ok"`` (the caller fills or fails it)."""
    row = {
        "model": path.name, "path": str(path), "format": mf.format if mf else None,
        "backend": be.key if be else "-", "precision": _precision(be, mf) if be else "-",
        "device": be.device if be else None, "status": "ok", "note": None,
        "top1": None, "delta_pt": None, "latency_p50_ms": None, "latency_p90_ms": None,
        "throughput": None, "speedup": None, "batch": batch,
        "size_mb": round(mf.size_bytes / 1e6, 3) if mf else None,
        "params": mf.params if mf else None, "macs": mf.macs if mf else None,
        "n_images": n_images, "quick": quick, "threads": threads,
        "compile_s": None, "load_s": None, **dict.fromkeys(MEASURE_KEYS),
        "is_baseline": False, "trained": training_budget(mf.meta) if mf else None,
    }
    if row["trained"]:
        row["note"] = row["trained"]
    return row



def _timing_input(split: Split, mf: runtime.ModelFile, batch: int) -> torch.Tensor:
    idx = torch.arange(batch) % len(split)
    return mf.preprocess(split.images[idx])


class OpenRow:
    """A row whose model is open and whose top-1 is known, waiting to be timed."""

    def __init__(self, row: dict, runner, x_n: torch.Tensor, first_n: float, notes: list[str]):
        self.row, self.runner, self.x_n, self.first_n, self.notes = row, runner, x_n, first_n, notes
        self.x_1 = x_n[:1].clone()
        self.first_1: float | None = None
        self.b1_error: str | None = None
        self.predictions: torch.Tensor | None = None  # predicted class per evaluated image
        self.accuracy_why: str | None = None  # why the accuracy was re-measured, when a cached one did not match

    def close(self) -> None:
        _close_runner(self.runner)
        self.runner = None



def _close_runner(runner) -> None:
    """Close ``runner`` (if any), ignoring its errors, and free what it held."""
    if runner is None:
        return
    try:
        runner.close()
    except Exception:  # noqa: BLE001
        pass
    gc.collect()


def runner_threads(runner, be: runtime.Backend) -> int | None:
    """Return the CPU thread count ``runner`` really runs on: its own ``threads`` (ONNX Runtime reads
    it back from the session), else torch's intra-op count for a CPU backend (torch eager, compiled
    and PT2 programs run on it; Inductor bakes that count into the code it compiles at open, after
    run_bench has set it, and its FX-graph cache key includes it), else ``None`` (a GPU row: host
    threads do not set its speed)."""
    own = getattr(runner, "threads", None)
    if own:
        return int(own)
    return torch.get_num_threads() if be.device == "cpu" else None


def fail_row(row: dict, err: BaseException) -> None:
    """Null every metric of ``row`` and put ``err`` (one line) in its ``status``."""
    for k in METRICS + MEASURE_KEYS:
        row[k] = None
    row["status"] = one_line(err)


def open_row(mf: runtime.ModelFile, be: runtime.Backend, split: Split, *, batch: int, threads: int, quick: bool,
             cache: AccuracyCache, data_digest: str, progress: Progress = no_progress,
             clock: Callable[[], float] = time.perf_counter) -> dict | OpenRow:
    """Open (model, backend), time its first calls and measure top-1 (or take it from the cache).

    ``threads``: the count run_bench set; the row records the count the runner really uses and a
    note when the two differ. Returns the finished row when it cannot run (``status`` holds the
    reason), else an open row (with its per-image ``predictions``) to be timed by
    :func:`vggc.bench.timed.time_alone` or :func:`vggc.bench.timed.time_interleaved`.
    """
    row = empty_row(mf, mf.path, be, batch=batch, n_images=len(split), quick=quick, threads=threads)
    notes = [row["trained"]] if row.get("trained") else []  # the training budget leads every note
    try:
        note = be.note() if callable(getattr(be, "note", None)) else None
        if note:
            notes.append(note)
        reason = be.available()
    except Exception as err:  # noqa: BLE001 - a plugin's probe must not stop the bench
        reason = one_line(err)
    if reason:
        row["status"] = reason
        row["note"] = "; ".join(notes) or None
        return row
    runner = None
    try:
        t0 = clock()
        runner = runtime.open_model(mf, be, {"threads": threads, "batch": batch})
        row["load_s"] = round(clock() - t0, 3)
        x_n = _timing_input(split, mf, batch)
        t0 = clock()
        runner.predict(x_n)
        first_n = clock() - t0
        if getattr(runner, "facts", None):  # what the runtime reports it really used (e.g. OpenVINO)
            row["runtime"] = dict(runner.facts)

        used = runner_threads(runner, be)
        if used is not None and used != threads:
            notes.append(f"ran on {used} threads, not the requested {threads}")
        row["threads"] = used if used is not None else threads
        if getattr(runner, "providers", None) is not None:
            row["providers"] = list(runner.providers)
        row["top1"], row["accuracy_cached"], predictions, why = measure_accuracy(
            runner, mf, be, split, batch=batch, threads=threads, cache=cache, data_digest=data_digest,
            progress=progress)
        opened = OpenRow(row, runner, x_n, first_n, notes)
        opened.predictions, opened.accuracy_why = predictions, why
        try:
            t0 = clock()
            runner.predict(opened.x_1)
            opened.first_1 = clock() - t0
        except Exception as err:  # noqa: BLE001 - e.g. an engine built for batch N only
            opened.b1_error = f"batch-1 latency not measured: {one_line(err)}"
        return opened
    except Exception as err:  # noqa: BLE001 - one failing row never stops the others
        fail_row(row, err)
        _close_runner(runner)
        row["note"] = "; ".join(notes) or None
        return row
