"""A tiny step runner with content-addressed caching.

A :class:`Step` names its output files, the steps it depends on, its settings, the data splits it
reads and its environment. Its cache key is the SHA-256 of its key inputs
(:mod:`vggc.pipeline.keys`: settings, the SHA-256 of every input file, the fingerprint of each
split read, the vggc source digest and library versions, and for a timing step the CPU and thread
count). After a step succeeds, a marker ``<out>/.steps/<name>.json`` records the key, its key
inputs in readable form and each output's SHA-256; a rerun skips a step whose marker matches and
whose outputs are intact, and a step that reruns says what changed (``StepResult.why``). Outputs are written
atomically by the stage functions, and the marker is written last, so a run killed mid-step
leaves no complete-looking step and the next run redoes exactly that step.

:func:`claim_out_dir` keeps two runs from writing one output directory at once and removes the
``.tmp-*`` files that a killed run (SIGKILL, power loss: nothing could clean up) left there.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from vggc import provenance, work
from vggc.artifacts import remove_stale_temps, sha256_file, write_json
from vggc.errors import InputError, UnavailableError, VggcError, first_line
from vggc.pipeline.keys import describe_changes, key_inputs, key_of

LOCK_NAME = ".lock"


@dataclass
class Step:
    """One unit of work. ``run(ctx)`` writes ``outputs`` (paths relative to the run directory)
    and returns a metrics dict. ``inputs``: extra input files (absolute) besides the outputs of
    ``deps``. ``available()``: ``None`` or why the step cannot run on this machine. ``model``:
    whether ``outputs[0]`` is a model for the bench. ``data`` and ``splits``: the data directory
    and the splits of it the step reads (their fingerprints are in the key). ``environment()``:
    what the result depends on beyond inputs and settings (default
    :func:`vggc.provenance.result_environment`; a timing step passes ``timing_environment``)."""

    name: str
    outputs: list[str]
    run: Callable[["StepContext"], dict]
    deps: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    available: Callable[[], str | None] = lambda: None
    label: str = ""
    model: bool = True  # outputs[0] is a model file the bench measures (a scan table is not)
    data: Path | None = None
    splits: tuple[str, ...] = ()
    environment: Callable[[], dict] = field(default=lambda: provenance.result_environment())


@dataclass
class StepContext:
    """What a running step gets: the run directory, the output paths of every step, the step's
    cache key and whether it may continue the work (checkpoints, a pilot) its previous attempt
    left: only when that attempt ran under this same key and did not finish."""

    out_dir: Path
    paths: dict[str, list[Path]]
    step: Step
    key: str = ""
    resumable: bool = False

    def output(self, i: int = 0) -> Path:
        return self.out_dir / self.step.outputs[i]

    def dep(self, name: str, i: int = 0) -> Path:
        return self.paths[name][i]

    def shell(self, path: str | Path) -> str:
        """Return ``path`` as a rebuild command writes it: ``$OUT/<path relative to the run
        directory>`` for a file under it (:func:`vggc.pipeline.commands.under_out`), else as given."""
        from vggc.pipeline.commands import under_out

        try:
            return under_out(Path(path).relative_to(self.out_dir))
        except ValueError:
            return str(path)


@dataclass
class StepResult:
    """``status``: ``ok``, ``cached``, ``unavailable: ...``, ``failed: ...`` or ``skipped: ...``.
    ``why``: why it ran or was reused (``"first run"``, ``"re-timed (threads 2 -> 1)"``, ...);
    ``key_inputs``: the readable key inputs it was keyed on (empty when it did not run)."""

    name: str
    status: str
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    why: str = ""
    key_inputs: dict = field(default_factory=dict)
    work: dict = field(default_factory=dict)  # the expensive work it did (vggc.work.since); {} when it did not run
    # what its output cost to make: ``seconds`` plus the training an earlier, killed run did towards it
    # (``earlier_seconds`` in its metrics); for a reused (cached) step, what it cost when it was made
    spent: float = 0.0

    def __post_init__(self):
        self.spent = self.spent or self.seconds  # a failed or unavailable step cost the time it took

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "cached")

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2),
                "spent": round(self.spent, 2),
                "outputs": self.outputs, "metrics": self.metrics, "why": self.why, "key_inputs": self.key_inputs,
                "work": self.work}


def _marker(out_dir: Path, name: str) -> Path:
    return out_dir / ".steps" / f"{name}.json"


def step_inputs(step: Step, input_files: list[Path], fingerprint: Callable[[Path, str], str] | None = None) -> dict:
    """Return the readable key inputs of ``step`` given its resolved input files
    (``fingerprint(data, split)`` defaults to :func:`vggc.data.split_fingerprint`)."""
    if fingerprint is None:
        from vggc.data import split_fingerprint as fingerprint
    data = {}
    if step.data is not None and step.splits:  # the directory, for a reader; the fingerprints cover it
        data = {"dir": str(Path(step.data).resolve()), **{split: fingerprint(step.data, split) for split in step.splits}}
    return key_inputs(step.name, step.settings, input_files, data, step.environment())


def step_key(step: Step, input_files: list[Path]) -> str:
    """Return the cache key of ``step`` given its resolved input files."""
    return key_of(step_inputs(step, input_files))


def _last_inputs(out_dir: Path, name: str) -> Path:
    """Where the key inputs of a step's last attempt are kept while it reruns (a killed or failed
    rerun has no marker, but the next run can still say what changed)."""
    return out_dir / ".steps" / f"{name}.last-inputs.json"


def _previous(out_dir: Path, step: Step) -> dict | None:
    """Return the step's previous marker, else ``{"key_inputs": ..., "unfinished": True}`` from
    its last attempt (``{}`` when unreadable, ``None`` when the step never ran here)."""
    for m, last in ((_marker(out_dir, step.name), False), (_last_inputs(out_dir, step.name), True)):
        if not m.is_file():
            continue
        try:
            doc = json.loads(m.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {"key_inputs": doc, "unfinished": True} if last else doc
    return None


def _cached(out_dir: Path, doc: dict | None, key: str) -> tuple[bool, str]:
    """Return (reusable, why) for a previous marker ``doc`` against the key now."""
    if doc is None:
        return False, "first run"
    if doc.get("key") != key:
        return False, ""
    for rel, digest in doc.get("outputs", {}).items():
        p = out_dir / rel
        if not p.is_file():
            return False, f"rerun ({rel} is missing)"
        if sha256_file(p) != digest:
            return False, f"rerun ({rel} was modified since it was written)"
    return True, "reused: key inputs unchanged"


@contextmanager
def claim_out_dir(out_dir: Path) -> Iterator[list[Path]]:
    """Hold an exclusive lock on ``out_dir`` (``<out>/.lock``, released when the process ends,
    however it ends) and remove the ``.tmp-*`` files under it that an earlier, killed run left.

    Yields the removed paths. Raises :class:`InputError` when another process holds the lock.
    Where ``fcntl`` does not exist (Windows) nothing is locked, and nothing is removed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield []
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out_dir}: another vggc pipeline is writing there; wait for it to finish "
                             "or pass another --out") from None
        try:
            yield remove_stale_temps(out_dir)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_steps(steps: list[Step], out_dir: Path, *, force: bool = False,
              log: Callable[[str], None] = lambda _m: None,
              after: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run ``steps`` in order (dependencies must come first); return one result per step.

    A step whose dependency did not succeed is skipped with the reason; a failing step is
    recorded and the rest go on. ``KeyboardInterrupt`` propagates (nothing is marked done).
    ``after`` is called with each step's result as soon as it is known (run, cached, skipped or
    unavailable), before the next step starts: what it logs stands beside that step's lines.
    """
    from vggc.data import split_fingerprint

    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprints: dict[tuple[str, str], str] = {}

    def fingerprint(data: Path, split: str) -> str:  # one listing per split and run
        k = (str(data), split)
        if k not in fingerprints:
            fingerprints[k] = split_fingerprint(data, split)
        return fingerprints[k]

    results: dict[str, StepResult] = {}
    paths = {s.name: [out_dir / o for o in s.outputs] for s in steps}
    for step in steps:
        results[step.name] = _decide(step, out_dir, paths, results, fingerprint, force, log)
        if after is not None:
            after(results[step.name])
    return [results[s.name] for s in steps]


def _decide(step: Step, out_dir: Path, paths: dict, results: dict, fingerprint, force: bool,
            log: Callable[[str], None]) -> StepResult:
    """Skip, reuse or run ``step`` (see :func:`run_steps`; ``results``: those of the steps before it);
    return its result."""
    bad_dep = next((d for d in step.deps if not results[d].ok), None)
    if bad_dep:
        status = f"skipped: needs {bad_dep} ({results[bad_dep].status})"
        log(f"-- {step.name}: {status}")
        return StepResult(step.name, status)
    reason = step.available()
    if reason:
        log(f"-- {step.name}: unavailable ({reason})")
        return StepResult(step.name, f"unavailable: {reason}")
    input_files = [*step.inputs, *(p for d in step.deps for p in paths[d])]
    inputs = step_inputs(step, input_files, fingerprint)
    key = key_of(inputs)
    doc = _previous(out_dir, step)
    reuse, why = _cached(out_dir, doc, key)
    # only an unfinished attempt under these same key inputs left work (checkpoints, a pilot) that
    # this run may continue; one under other data, code, libraries or input files did not
    resumable = bool(doc and doc.get("unfinished") and not force and key_of(doc.get("key_inputs") or {}) == key)
    if force:
        reuse, why = False, "rerun (--force)"
    elif resumable:
        why = "rerun (its previous attempt did not finish)"
    elif not why:
        why = describe_changes(None if doc is None else doc.get("key_inputs") or {}, inputs)
    if reuse:
        log(f"-- {step.name}: cached")
        return StepResult(step.name, "cached", 0.0, step.outputs, doc.get("metrics", {}), why=why, key_inputs=inputs,
                          spent=float(doc.get("spent", doc.get("seconds", 0.0))))
    log(f"== {step.name}{': ' + step.label if step.label else ''}")
    log(f"-- {step.name}: {why}")
    write_json(_last_inputs(out_dir, step.name), inputs)
    _marker(out_dir, step.name).unlink(missing_ok=True)
    return _run_one(StepContext(out_dir, paths, step, key, resumable), inputs, why, log)


def _run_one(ctx: StepContext, inputs: dict, why: str, log: Callable[[str], None]) -> StepResult:
    """Run one step that is not reusable; write its marker when it succeeds; return its result
    (with the seconds it took and the work it did, :mod:`vggc.work`)."""
    step, out_dir, key = ctx.step, ctx.out_dir, ctx.key
    t0, before = time.perf_counter(), work.snapshot()
    try:
        metrics = step.run(ctx) or {}
        missing = [o for o in step.outputs if not (out_dir / o).is_file()]
        if missing:
            raise VggcError(f"step wrote no {', '.join(missing)}")
    except KeyboardInterrupt:
        raise
    except UnavailableError as err:
        log(f"-- {step.name}: unavailable ({err})")
        return StepResult(step.name, f"unavailable: {err}", time.perf_counter() - t0, why=why, key_inputs=inputs,
                          work=work.since(before))
    except Exception as err:  # noqa: BLE001 - a failed step is reported, the rest go on
        first = first_line(err, 300)
        log(f"!! {step.name} failed: {first}")
        return StepResult(step.name, f"failed: {first}", time.perf_counter() - t0,
                          metrics={"traceback": traceback.format_exc(limit=4)}, why=why, key_inputs=inputs,
                          work=work.since(before))
    seconds, done = time.perf_counter() - t0, work.since(before)
    spent = seconds + float(metrics.get("earlier_seconds", 0.0))
    write_json(_marker(out_dir, step.name), {
        "key": key, "step": step.name, "settings": step.settings, "key_inputs": inputs, "why": why,
        "seconds": round(seconds, 2), "spent": round(spent, 2), "work": done,
        "outputs": {o: sha256_file(out_dir / o) for o in step.outputs}, "metrics": metrics})
    _last_inputs(out_dir, step.name).unlink(missing_ok=True)
    words = work.describe(done)
    log(f"-- {step.name}: done in {seconds:.0f} s" + (f" ({words})" if words else ""))
    return StepResult(step.name, "ok", seconds, step.outputs, metrics, why=why, key_inputs=inputs, work=done,
                      spent=spent)
