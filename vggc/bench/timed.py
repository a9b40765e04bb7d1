"""Timing opened bench rows: alone (:func:`time_alone`, the :class:`TimingPolicy` rule) or all
together in interleaved rounds (:func:`time_interleaved`, :func:`measure_rounds`), and filling a
row's timing columns (throughput, latency p50/p90, compile_s, timing_stable/spread) from them:
``timing_stable_batch`` and ``timing_stable_b1`` say whether the batch-N and the batch-1 timing settled,
``timing_stable`` whether both did.

The measurement rules themselves live in :mod:`vggc.bench.timing`; this module is the glue
between them and the rows of :mod:`vggc.bench.rows`.

The bench itself never reuses a timing: every run re-times every row (only accuracies are
cached). Whoever reuses a bench's timings (the pipeline's cached bench step) must key them on
:func:`timing_key_inputs`: the machine (CPU model and kernel-selecting ISA flags), the thread
count, the vggc source and library versions, the timing policy and the batch.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from vggc import provenance
from vggc.bench.rows import OpenRow, fail_row, one_line
from vggc.bench.timing import RoundsPolicy, Task, TimingPolicy, measure, measure_rounds
from vggc.progress import Progress, no_progress

# per round and row in interleaved timing: (at least calls, at least seconds) at batch N and at batch 1
ROUND_TASK = {"batch": (2, 0.5), "b1": (5, 0.2)}


def timing_key_inputs(threads: int | None, policy: TimingPolicy | RoundsPolicy | None = None,
                      batch: int | None = None) -> dict:
    """Return, readably, what a bench timing depends on: :func:`vggc.provenance.timing_environment`
    (vggc source, library versions, CPU fingerprint, ``threads``) plus the timing policy and batch
    (when given). A timing may be reused only where all of it is unchanged."""
    out = provenance.timing_environment(threads)
    if policy is not None:
        out["timing"] = policy.to_dict()
    if batch is not None:
        out["batch"] = batch
    return out


def _finish(o: OpenRow, t_n, t_1) -> dict:
    """Fill the timing columns of ``o.row`` from its batch-N and batch-1 :class:`Timing` (or errors)."""
    row, batch = o.row, o.row["batch"]
    notes = list(o.notes)
    if isinstance(t_n, BaseException):
        fail_row(row, t_n)
    else:
        row["throughput"] = round(batch / t_n.p50, 2)
        row["timing_reps_batch"] = t_n.reps
        row["timing_spread"] = round(t_n.spread, 4) if t_n.spread is not None else None
        compile_s = float(getattr(o.runner, "compile_seconds", 0.0) or 0.0) + max(0.0, o.first_n - t_n.p50)
        stable = row["timing_stable_batch"] = t_n.stable
        if o.b1_error or isinstance(t_1, BaseException) or t_1 is None:
            notes.append(o.b1_error or f"batch-1 latency not measured: {one_line(t_1)}")
        else:
            row["latency_p50_ms"] = round(1e3 * t_1.p50, 3)
            row["latency_p90_ms"] = round(1e3 * t_1.p90, 3)
            row["timing_reps_b1"] = t_1.reps
            compile_s += max(0.0, (o.first_1 or 0.0) - t_1.p50)
            row["timing_stable_b1"] = t_1.stable
            stable = stable and t_1.stable
        row["compile_s"] = round(compile_s, 3)
        row["timing_stable"] = stable
    row["note"] = "; ".join(notes) or None
    o.close()
    return row


def time_alone(o: OpenRow, policy: TimingPolicy, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time one open row by itself with :func:`measure` (batch N, then batch 1); return the row."""
    try:
        t_n = measure(lambda: o.runner.predict(o.x_n), policy, clock=clock)
    except Exception as err:  # noqa: BLE001
        return _finish(o, err, None)
    t_1 = None
    if not o.b1_error:
        try:
            t_1 = measure(lambda: o.runner.predict(o.x_1), policy, clock=clock)
        except Exception as err:  # noqa: BLE001
            t_1 = err
    return _finish(o, t_n, t_1)


def time_interleaved(opened: Sequence[OpenRow], policy: RoundsPolicy, clock: Callable[[], float] = time.perf_counter,
                     progress: Progress = no_progress) -> list[dict]:
    """Time every open row in interleaved rounds (:func:`measure_rounds`); return the rows in order.

    Each round times each row at batch N and then at batch 1 (calls and seconds per round:
    ``ROUND_TASK``), so over the run every row sees the same machine; the rows are closed after.
    """
    tasks: list[Task] = []
    where: list[tuple[int, int | None]] = []
    for o in opened:
        i_n = len(tasks)
        tasks.append(Task(lambda o=o: o.runner.predict(o.x_n), *ROUND_TASK["batch"]))
        i_1 = None
        if not o.b1_error:
            i_1 = len(tasks)
            tasks.append(Task(lambda o=o: o.runner.predict(o.x_1), *ROUND_TASK["b1"]))
        where.append((i_n, i_1))
    res = measure_rounds(tasks, policy, clock=clock, progress=progress)
    return [_finish(o, res[i_n], res[i_1] if i_1 is not None else None) for o, (i_n, i_1) in zip(opened, where)]
