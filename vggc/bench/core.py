"""``run_bench``: accuracy and speed of every model file on every backend that can run its format.

Generic over :mod:`vggc.runtime`: a file's format comes from ``runtime.describe`` and its
candidate backends from ``runtime.backends_for``; no format is special-cased here. One row per
(model, backend); a row that cannot run carries the reason in ``status`` and null metrics, and
never stops the other rows.

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
``<out>/accuracy-cache.json`` keyed by (SHA-256 of the model's files, backend key, number of
images, digest of those images + labels, preprocessing); reruns then only re-time.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from vggc import runtime
from vggc.artifacts import sha256_file, write_json
from vggc.bench.machine import machine_info
from vggc.bench.timing import RoundsPolicy, Task, TimingPolicy, measure, measure_rounds, timing_policy
from vggc.data import Split, limit_split, load_split
from vggc.errors import InputError, first_line
from vggc.evaluate import evaluate
from vggc.progress import Progress, no_progress

DEFAULT_OUT = Path("artifacts/bench")
QUICK_IMAGES = 2000
SUBSET_SEED = 0
CACHE_NAME = "accuracy-cache.json"
CACHE_VERSION = 1
# per round and row in interleaved timing: (at least calls, at least seconds) at batch N and at batch 1
ROUND_TASK = {"batch": (2, 0.5), "b1": (5, 0.2)}
METRICS = ("top1", "delta_pt", "latency_p50_ms", "latency_p90_ms", "throughput", "speedup", "compile_s",
           "load_s")


class BenchRows(list):
    """The rows of one bench run (a plain ``list[dict]``) plus ``context``: machine, settings, baseline."""

    context: dict


# ----------------------------------------------------------------------------- helpers

def one_line(err: BaseException, limit: int = 200) -> str:
    """Return an exception as one line: the message for vggc errors, ``Type: first line`` otherwise."""
    return first_line(err, limit, typed=True)


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return str(a) == str(b)


def _precision(be: runtime.Backend, mf: runtime.ModelFile | None) -> str:
    eff = getattr(runtime, "effective_precision", None)
    if eff is not None and mf is not None:
        return eff(be, mf)
    return be.precision


def _files_digest(mf: runtime.ModelFile) -> str:
    files = [f for f in mf.files if Path(f).is_file()] or [mf.path]
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _split_digest(split: Split) -> str:
    h = hashlib.sha256()
    h.update(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _fixed_batch(predict: Callable[[torch.Tensor], torch.Tensor], batch: int):
    """Wrap ``predict`` so every call sees exactly ``batch`` rows (pad by repeating row 0, drop extras)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= batch:
            return predict(x)
        pad = x[:1].expand(batch - n, *x.shape[1:])
        return torch.as_tensor(predict(torch.cat([x, pad])))[:n]

    return run


def _labelled(progress: Progress, label: str) -> Progress:
    def wrap(iterable: Iterable, total: int | None = None, desc: str = "", **kw):
        return progress(iterable, total=total, desc=label, **kw)

    return wrap


class AccuracyCache:
    """``accuracy-cache.json`` in the out dir; each new entry is written at once (atomically)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text())
                if doc.get("version") == CACHE_VERSION and isinstance(doc.get("entries"), dict):
                    self.entries = doc["entries"]
            except (OSError, json.JSONDecodeError, AttributeError):
                self.entries = {}  # a broken cache only costs time

    def get(self, key: str) -> dict | None:
        return self.entries.get(key) if self.path is not None else None

    def put(self, key: str, value: dict) -> None:
        if self.path is None:
            return
        self.entries[key] = value
        write_json(self.path, {"version": CACHE_VERSION,
                               "about": "top-1 per (model files sha256, backend, n_images, data digest, "
                                        "preprocess); delete this file or pass --no-cache to re-measure",
                               "entries": self.entries})


# ----------------------------------------------------------------------------- one row

def _empty_row(mf: runtime.ModelFile | None, path: Path, be: runtime.Backend | None, *, batch: int,
               n_images: int, quick: bool, threads: int) -> dict:
    row = {
        "model": path.name, "path": str(path), "format": mf.format if mf else None,
        "backend": be.key if be else "-", "precision": _precision(be, mf) if be else "-",
        "device": be.device if be else None, "status": "ok", "note": None,
        "top1": None, "delta_pt": None, "latency_p50_ms": None, "latency_p90_ms": None,
        "throughput": None, "speedup": None, "batch": batch,
        "size_mb": round(mf.size_bytes / 1e6, 3) if mf else None,
        "params": mf.params if mf else None, "macs": mf.macs if mf else None,
        "n_images": n_images, "quick": quick, "threads": threads,
        "compile_s": None, "load_s": None, "accuracy_cached": None,
        "timing_reps_batch": None, "timing_reps_b1": None, "timing_stable": None, "timing_spread": None,
        "is_baseline": False,
    }
    return row


def _timing_input(split: Split, mf: runtime.ModelFile, batch: int) -> torch.Tensor:
    idx = torch.arange(batch) % len(split)
    return mf.preprocess(split.images[idx])


class _Open:
    """A row whose model is open and whose top-1 is known, waiting to be timed."""

    def __init__(self, row: dict, runner, x_n: torch.Tensor, first_n: float, notes: list[str]):
        self.row, self.runner, self.x_n, self.first_n, self.notes = row, runner, x_n, first_n, notes
        self.x_1 = x_n[:1].clone()
        self.first_1: float | None = None
        self.b1_error: str | None = None

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


def _fail(row: dict, err: BaseException) -> None:
    for k in METRICS + ("accuracy_cached", "timing_reps_batch", "timing_reps_b1", "timing_stable", "timing_spread"):
        row[k] = None
    row["status"] = one_line(err)


def open_row(mf: runtime.ModelFile, be: runtime.Backend, split: Split, *, batch: int, threads: int, quick: bool,
             cache: AccuracyCache, data_digest: str, progress: Progress = no_progress,
             clock: Callable[[], float] = time.perf_counter) -> dict | _Open:
    """Open (model, backend), time its first calls and measure top-1 (or take it from the cache).

    Returns the finished row when it cannot run (``status`` holds the reason), else an open row to
    be timed by :func:`time_alone` or :func:`time_interleaved`.
    """
    row = _empty_row(mf, mf.path, be, batch=batch, n_images=len(split), quick=quick, threads=threads)
    notes = []
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

        key = "|".join([f"v{CACHE_VERSION}", _files_digest(mf), be.key, str(len(split)), data_digest,
                        json.dumps(mf.preprocess.to_dict(), sort_keys=True)])
        hit = cache.get(key)
        if hit is not None:
            row["top1"], row["accuracy_cached"] = float(hit["top1"]), True
        else:
            res = evaluate(_fixed_batch(runner.predict, batch), split, mf.preprocess, batch_size=batch,
                           progress=_labelled(progress, f"{mf.path.name} {be.key}"))
            row["top1"], row["accuracy_cached"] = res.top1, False
            cache.put(key, {"top1": res.top1, "correct": res.correct, "n": res.n, "model": mf.path.name,
                            "backend": be.key, "created": _dt.datetime.now(_dt.timezone.utc)
                            .isoformat(timespec="seconds")})
        opened = _Open(row, runner, x_n, first_n, notes)
        try:
            t0 = clock()
            runner.predict(opened.x_1)
            opened.first_1 = clock() - t0
        except Exception as err:  # noqa: BLE001 - e.g. an engine built for batch N only
            opened.b1_error = f"batch-1 latency not measured: {one_line(err)}"
        return opened
    except Exception as err:  # noqa: BLE001 - one failing row never stops the others
        _fail(row, err)
        _close_runner(runner)
        row["note"] = "; ".join(notes) or None
        return row


def _finish(o: _Open, t_n, t_1) -> dict:
    """Fill the timing columns of ``o.row`` from its batch-N and batch-1 :class:`Timing` (or errors)."""
    row, batch = o.row, o.row["batch"]
    notes = list(o.notes)
    if isinstance(t_n, BaseException):
        _fail(row, t_n)
    else:
        row["throughput"] = round(batch / t_n.p50, 2)
        row["timing_reps_batch"] = t_n.reps
        row["timing_spread"] = round(t_n.spread, 4) if t_n.spread is not None else None
        compile_s = float(getattr(o.runner, "compile_seconds", 0.0) or 0.0) + max(0.0, o.first_n - t_n.p50)
        stable = t_n.stable
        if o.b1_error or isinstance(t_1, BaseException) or t_1 is None:
            notes.append(o.b1_error or f"batch-1 latency not measured: {one_line(t_1)}")
        else:
            row["latency_p50_ms"] = round(1e3 * t_1.p50, 3)
            row["latency_p90_ms"] = round(1e3 * t_1.p90, 3)
            row["timing_reps_b1"] = t_1.reps
            compile_s += max(0.0, (o.first_1 or 0.0) - t_1.p50)
            stable = stable and t_1.stable
        row["compile_s"] = round(compile_s, 3)
        row["timing_stable"] = stable
    row["note"] = "; ".join(notes) or None
    o.close()
    return row


def time_alone(o: _Open, policy: TimingPolicy, clock: Callable[[], float] = time.perf_counter) -> dict:
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


def time_interleaved(opened: Sequence[_Open], policy: RoundsPolicy, clock: Callable[[], float] = time.perf_counter,
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


# ----------------------------------------------------------------------------- baseline

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
        cands = [r for r in rows if _same_file(Path(r["path"]), base_path)]
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
              log: Callable[[str], None] | None = None) -> BenchRows:
    """Benchmark every model file on every selected backend that runs its format; return the rows.

    ``data``: a CIFAR-10 directory or an already loaded :class:`~vggc.data.Split` (test split).
    ``backends``: ``None`` = each format's default backends, ``"all"``, or keys (list or "a,b").
    ``baseline``: ``FILE[:backend]`` (added to the run if not among ``models``); default: the first
    model's first row that ran. ``quick``: a class-balanced subset of 2,000 test images (``limit``
    overrides the count) and shorter timing. ``out``: directory for results.json, results.csv,
    report.md, pareto.png and the accuracy cache (``None``: write nothing, no cache).
    ``timing``: a :class:`RoundsPolicy` times all rows together in interleaved rounds (the default:
    ``FULL_ROUNDS``, ``QUICK_ROUNDS`` with ``quick``), a :class:`TimingPolicy` times each row alone
    right after its accuracy pass (tests use a tiny one).
    """
    log = log or (lambda _msg: None)
    if batch < 1:
        raise InputError(f"--batch {batch}: must be at least 1")
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    paths = [Path(m) for m in models]
    if not paths:
        raise InputError("no model files given")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, expected a model file")
    selection = parse_backends(backends)
    base_path, base_backend = parse_baseline(baseline) if baseline else (None, None)
    if base_path is not None and not any(_same_file(base_path, p) for p in paths):
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
    threads = int(threads or os.cpu_count() or 1)
    cache = AccuracyCache(out_dir / CACHE_NAME if (out_dir is not None and use_cache) else None)
    digest = _split_digest(sub)

    rows: list[dict] = []
    not_default: dict[str, str] = {}
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        described = []
        for p in paths:
            try:
                described.append((p, runtime.describe(p), None))
            except Exception as err:  # noqa: BLE001 - an unreadable file is one failed row
                described.append((p, None, one_line(err)))
        plan = []
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
            if base_backend and _same_file(p, base_path) and base_backend not in [b.key for b in chosen]:
                chosen += [b for b in cands if b.key == base_backend]
            if not chosen:
                what = "no registered backend runs" if not cands else "none of the selected backends runs"
                plan.append((p, mf, None, f"{what} {mf.format} files"))
            for b in chosen:
                plan.append((p, mf, b, None))
        interleave = isinstance(policy, RoundsPolicy)
        waiting: list[tuple[int, _Open]] = []
        for i, (p, mf, be, err) in enumerate(plan, 1):
            if err is not None:
                row = _empty_row(mf, p, None, batch=batch, n_images=len(sub), quick=quick, threads=threads)
                row["status"] = err
                log(f"[{i}/{len(plan)}] {p.name}: {err}")
                rows.append(row)
                continue
            log(f"[{i}/{len(plan)}] {p.name} on {be.key} ...")
            got = open_row(mf, be, sub, batch=batch, threads=threads, quick=quick, cache=cache, data_digest=digest,
                           progress=progress)
            if isinstance(got, dict):
                log(f"[{i}/{len(plan)}] {p.name} on {be.key}: {got['status']}")
                rows.append(got)
                continue
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
    finally:
        torch.set_num_threads(prev_threads)

    base = apply_baseline(rows, base_path, base_backend)
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
        "accuracy_cache": str(cache.path) if cache.path else None,
        "load_average_start": load_start,
        "machine": machine_info(threads),
        "plot": plot,
    }
    if out_dir is not None:
        from vggc.bench.report import write_outputs

        result.context["outputs"] = {k: str(v) for k, v in write_outputs(result, out_dir, plot=plot).items()}
    return result
