"""Pilot, allocate, final: one trained step of a pipeline with a time budget (:mod:`vggc.pipeline.allocate`).

The step's second output is its pilot (the preset's epochs, with a learning curve); the first, the
model the rest of the pipeline uses, is either the pilot itself (copied: finished, flat, stopped or
out of time) or a longer run from the same start. A pilot finished by an earlier (killed) run of the
same step is reused: ``.steps/<step>.pilot.json`` records the step's settings, the vggc source and
the pilot's SHA-256, and anything else runs the pilot again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vggc.artifacts import atomic_path, manifest_path, read_json_object, sha256_file, write_json
from vggc.pipeline.allocate import allocate, curve_of, epoch_wall

if TYPE_CHECKING:  # pragma: no cover
    from vggc.pipeline.steps import StepContext


def _marker(ctx: "StepContext") -> Path:
    return ctx.out_dir / ".steps" / f"{ctx.step.name}.pilot.json"


def _identity(ctx: "StepContext", epochs: int) -> dict:
    """What a pilot was trained under: the step's key (its settings, input files, data, code and
    libraries: :func:`vggc.pipeline.keys.key_inputs`) and the pilot's epochs."""
    return {"step_key": ctx.key, "epochs": epochs}


def _pilot(ctx: "StepContext", run: Callable[[Path, int], dict], epochs: int) -> tuple[dict, bool]:
    """Return the pilot's metrics (with its ``command``) and whether an earlier run trained it: reused
    when the marker matches, else trained now."""
    out, marker = ctx.output(1), _marker(ctx)
    ident = _identity(ctx, epochs)
    if marker.is_file() and out.is_file() and manifest_path(out).is_file():
        doc = read_json_object(marker)
        if doc.get("identity") == ident and doc.get("sha256") == sha256_file(out):
            return {**read_json_object(manifest_path(out))["metrics"], "command": doc.get("command")}, True
    metrics = run(out, epochs)
    write_json(marker, {"identity": ident, "sha256": sha256_file(out), "command": metrics.get("command")})
    return metrics, False


def epoch_seconds(records: list[dict]) -> float:
    """Return the wall seconds of the epoch records ``records`` (training + its evaluation)."""
    return sum(epoch_wall(h) for h in records)


def _copy_model(src: Path, dst: Path, extra_metrics: dict) -> None:
    """Copy model ``src`` to ``dst`` atomically, with its manifest renamed to ``dst`` plus ``extra_metrics``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    write_json(manifest_path(dst), {**read_json_object(manifest_path(src)), "artifact": dst.name})
    _annotate(dst, extra_metrics)


def _annotate(path: Path, extra_metrics: dict) -> None:
    """Add ``extra_metrics`` to the metrics of ``path``'s manifest (the model file is unchanged)."""
    doc = read_json_object(manifest_path(path))
    doc["metrics"] = {**doc.get("metrics", {}), **extra_metrics}
    write_json(manifest_path(path), doc)


def run_allocated(ctx: "StepContext", run: Callable[[Path, int], dict], *, pilot_epochs: int, floor: float,
                  share_s: float, max_epochs: int, history: Callable[[dict], list],
                  stopped: Callable[[dict], str | None], earlier: Callable[[dict], list]) -> dict:
    """Train the pilot into ``ctx.output(1)``, allocate (:func:`vggc.pipeline.allocate.allocate` with the
    accuracy ``floor``, the step's time ``share_s`` and ``max_epochs``) and write the final model to
    ``ctx.output(0)``; return its metrics with ``allocation`` (the decision), ``epochs_allocated``,
    ``pilot`` (its epochs, top-1 and curve), the final ``command`` and ``earlier_seconds``: the
    training this step's result holds that an earlier, killed run of the pipeline did (a reused pilot,
    epochs restored from a checkpoint), so the budget's account (``spent`` in pipeline.json) includes it.

    ``run(out, epochs) -> metrics`` trains one model; ``history(metrics)`` returns its epoch records,
    ``earlier(metrics)`` those a resumed run restored from its checkpoint, and ``stopped(metrics)``
    why it stopped early (or ``None``)."""
    final = ctx.output(0)
    pilot, reused = _pilot(ctx, run, pilot_epochs)
    spent_before = epoch_seconds(history(pilot) if reused else earlier(pilot))
    alloc = allocate(history(pilot), floor, share_s=share_s, max_epochs=max_epochs, stopped_early=stopped(pilot))
    extra = {"allocation": alloc.to_dict(), "epochs_allocated": alloc.epochs,
             "pilot": {"epochs": len(history(pilot)), "top1": pilot.get("top1"),
                       "curve": curve_of(history(pilot)), "file": ctx.step.outputs[1]}}
    if alloc.extended:
        metrics = run(final, alloc.epochs)
        spent_before += epoch_seconds(earlier(metrics))
        _annotate(final, extra)
    else:
        metrics = dict(pilot)
        _copy_model(ctx.output(1), final, extra)
        if metrics.get("command"):
            metrics["command"] = metrics["command"].replace(ctx.shell(ctx.output(1)), ctx.shell(final))
    return {**metrics, **extra, "earlier_seconds": round(spent_before, 2)}
