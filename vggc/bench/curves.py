"""Learning curves of the trained variants behind a bench's model files, read from their manifests.

A *trained variant* is a state_dict whose manifest records a training history: a pruned model
fine-tuned by :func:`vggc.compress.prune.prune_file` (``metrics.steps[k].history``, one per pruning
step) or a distilled student (:func:`vggc.compress.distill.distill`, ``metrics.train.history``).
Files made from it (its ONNX export, its INT8 copies) point back at it through ``inputs.source``
and share its one curve. Each epoch record may carry ``top1`` (a fraction, on the run's own
evaluation images) and ``n_eval``; a manifest written before per-epoch evaluation has none, and its
curve says so in ``note`` (loss, speed and timings are still there).

:func:`learning_curves` is the entry point; :func:`markdown_section` is report.md's section and
:mod:`vggc.bench.curves_plot` draws ``learning_curves.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from vggc.artifacts import read_manifest, sha256_file
from vggc.bench.lineage import MAX_LINKS, parent
from vggc.errors import VggcError

CURVES_PNG = "learning_curves.png"
EPOCH_KEYS = ("epoch", "step", "step_epoch", "top1", "n_eval", "loss", "images_per_s", "seconds")
NO_TOP1 = "no per-epoch top-1 in its manifest (written before per-epoch evaluation): loss and speed only"


def trained_kind(meta: dict) -> str | None:
    """Return ``"prune"`` (a pruned, fine-tuned state_dict) or ``"distill"`` (a distilled student)
    when ``meta`` (a manifest) records that training, else ``None`` (not a trained variant: the
    user's own trained model, an export, an INT8 file, a pruned model without fine-tune)."""
    settings = meta.get("settings") or {}
    if "prune" in settings and "finetune_epochs" in settings:
        return "prune" if (settings.get("finetune_epochs") or 0) > 0 else None
    if "distill" in settings and isinstance(settings.get("train"), dict):
        return "distill"
    return None


def _source(meta: dict, at: Path) -> Path | None:
    """Return the file ``meta`` (the manifest of ``at``) was made from: its recorded ``inputs.source``
    (:func:`vggc.bench.lineage.parent`), else a file of that name beside ``at`` whose SHA-256 is the
    recorded one (a run directory moved or read from another working directory); ``None`` otherwise."""
    found = parent(meta)
    if found is not None:
        return found
    rec = (meta.get("inputs") or {}).get("source") or {}
    if not rec.get("path"):
        return None
    beside = at.parent / Path(rec["path"]).name
    if not beside.is_file() or beside.resolve() == at.resolve():
        return None
    return beside if not rec.get("sha256") or sha256_file(beside) == rec["sha256"] else None


def trained_file(path: str | os.PathLike) -> tuple[Path, dict] | None:
    """Return ``(the trained state_dict, its manifest)`` behind the model file ``path``: the file
    itself when its manifest records training (:func:`trained_kind`), else the first such file up
    its ``inputs.source`` chain (at most :data:`vggc.bench.lineage.MAX_LINKS` links); ``None``
    when there is none. An unreadable manifest on the way raises
    :class:`~vggc.errors.ModelFormatError`."""
    p: Path | None = Path(path)
    seen: set[Path] = set()
    for _ in range(MAX_LINKS + 1):
        if p is None or p.resolve() in seen or not p.is_file():
            return None
        seen.add(p.resolve())
        meta = read_manifest(p)
        if trained_kind(meta):
            return p, meta
        p = _source(meta, p)
    return None


def _histories(meta: dict, kind: str) -> list[tuple[int | None, list[dict]]]:
    """Return ``[(pruning step or None, epoch records)]`` of a trained variant, in training order."""
    metrics = meta.get("metrics") or {}
    if kind == "prune":
        return [(st.get("step", k), list(st.get("history") or []))
                for k, st in enumerate(metrics.get("steps") or [], 1)]
    return [(None, list((metrics.get("train") or {}).get("history") or []))]


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _points(meta: dict, kind: str) -> list[dict]:
    """Return the curve's epochs numbered through all steps: ``epoch`` (1, 2, ... over the whole
    training), ``step`` (pruning step, ``None`` for a student), ``step_epoch`` (the record's own
    epoch), ``top1`` (``None`` when not evaluated), ``n_eval``, ``loss``, ``images_per_s``, ``seconds``."""
    out = []
    for step, history in _histories(meta, kind):
        for rec in history:
            out.append({"epoch": len(out) + 1, "step": step, "step_epoch": rec.get("epoch"),
                        "top1": _number(rec.get("top1")), "n_eval": rec.get("n_eval"), "loss": _number(rec.get("loss")),
                        "images_per_s": _number(rec.get("images_per_s")), "seconds": _number(rec.get("seconds"))})
    return out


def _planned(meta: dict, kind: str) -> int | None:
    """Return the epochs the training was given: the allocation's when recorded, else the settings'."""
    metrics, settings = meta.get("metrics") or {}, meta.get("settings") or {}
    for v in (metrics.get("epochs_allocated"), (metrics.get("allocation") or {}).get("epochs")):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    v = settings.get("finetune_epochs") if kind == "prune" else (settings.get("train") or {}).get("epochs")
    return int(v) if isinstance(v, (int, float)) else None


def _stopped(meta: dict, kind: str) -> str | None:
    metrics = meta.get("metrics") or {}
    why = metrics.get("stopped_early") if kind == "prune" else (metrics.get("train") or {}).get("stopped_early")
    return str(why) if why else None


def _note(points: list[dict]) -> str | None:
    have = sum(p["top1"] is not None for p in points)
    if not points:
        return "no epoch records in its manifest"
    if not have:
        return NO_TOP1
    if have < len(points):
        return f"top-1 evaluated after {have} of {len(points)} epochs"
    return None


def curve(path: Path, meta: dict) -> dict:
    """Return the learning curve of one trained variant (``path``, its manifest ``meta``): ``model``
    (file name), ``path``, ``kind`` (:func:`trained_kind`), ``epochs`` (:func:`_points`),
    ``epochs_run``, ``epochs_planned``, ``stopped_early`` (why, or ``None``), ``stop_rule`` (the
    early-stop rule the run had, or ``None``), ``allocation`` and
    ``allocation_why`` (``None`` when not recorded), ``final_top1`` / ``n_eval`` (the manifest's
    final evaluation), ``source_top1`` (the unpruned source's or teacher's top-1 on the same
    images), ``has_top1`` (an epoch has a top-1), ``note`` (what is missing, or ``None``) and
    ``models`` (the bench's files that share it; :func:`learning_curves` fills it)."""
    kind = trained_kind(meta) or "?"
    metrics = meta.get("metrics") or {}
    points = _points(meta, kind)
    alloc = metrics.get("allocation") if isinstance(metrics.get("allocation"), dict) else None
    return {"model": path.name, "path": str(path), "kind": kind, "epochs": points, "epochs_run": len(points),
            "epochs_planned": _planned(meta, kind), "stopped_early": _stopped(meta, kind),
            "stop_rule": metrics.get("stop_rule"), "allocation": alloc,
            "allocation_why": (alloc or {}).get("why"), "final_top1": _number(metrics.get("top1")),
            "n_eval": metrics.get("n"),
            "source_top1": _number(metrics.get("top1_source", metrics.get("teacher_top1"))),
            "has_top1": any(p["top1"] is not None for p in points), "note": _note(points), "models": []}


def learning_curves(models: Iterable[str | os.PathLike]) -> list[dict]:
    """Return one :func:`curve` per trained variant behind ``models`` (model files: a bench's rows'
    paths or a pipeline's outputs), in the order first met, each with ``models``: the names of the
    given files that lead to it (the variant itself, its ONNX export, its INT8 copies). Files with
    no trained variant behind them, missing files and unreadable manifests are left out (the
    bench's rows report those)."""
    curves: dict[Path, dict] = {}
    for m in models:
        if not m or not Path(m).is_file():
            continue
        try:
            found = trained_file(m)
        except VggcError:
            continue
        if found is None:
            continue
        key = found[0].resolve()
        if key not in curves:
            curves[key] = curve(*found)
        names = curves[key]["models"]
        names += [Path(m).name] if Path(m).name not in names else []
    return list(curves.values())


# ----------------------------------------------------------------------------- report.md

def stop_text(c: dict) -> str:
    """Return, in one line, why the training of curve ``c`` ended: its early-stop reason, "finished"
    or how many of its planned epochs ran, then the allocation's ``why`` when recorded."""
    run, planned = c["epochs_run"], c["epochs_planned"]
    if c.get("stopped_early"):
        text = f"stopped early: {c['stopped_early']}"
    elif planned is not None and run >= planned:
        text = f"finished its {planned} epoch(s)"
    elif planned is not None:
        text = f"ran {run} of {planned} epoch(s), no early-stop reason recorded"
    else:
        text = f"ran {run} epoch(s)"
    return text + (f"; allocation: {c['allocation_why']}" if c.get("allocation_why") else "")


def final_top1(c: dict) -> tuple[float | None, object]:
    """Return ``(top-1, images)`` at the end of curve ``c``'s training: the manifest's final
    evaluation, else its last evaluated epoch's; ``(None, None)`` when neither is recorded."""
    if c.get("final_top1") is not None:
        return c["final_top1"], c.get("n_eval")
    last = next((p for p in reversed(c["epochs"]) if p["top1"] is not None), None)
    return (last["top1"], last.get("n_eval")) if last else (None, None)


def _esc(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(c: dict) -> str:
    top1, n = final_top1(c)
    acc = "-" if top1 is None else f"{100 * top1:.2f}" + (f" (n={n:,})" if isinstance(n, int) else "")
    planned = "?" if c["epochs_planned"] is None else c["epochs_planned"]
    return (f"| {_esc(c['model'])} | {c['kind']} | {c['epochs_run']} / {planned} | {acc} | {_esc(stop_text(c))} | "
            f"{_esc(', '.join(c['models']))} |")


def markdown_section(curves: list[dict], png: str | None, why_no_png: str | None = None) -> list[str]:
    """Return report.md's "## Learning curves" lines: per trained variant, epochs run / planned,
    final top-1, why it stopped and the bench files that share it; each curve's ``note``; then
    ``png`` embedded, or ``why_no_png``. Empty when ``curves`` is."""
    if not curves:
        return []
    lines = ["## Learning curves", "",
             "Per epoch of training: top-1 on each run's own evaluation images (recorded in its manifest; "
             "not the bench's images), one curve per trained variant (its ONNX and INT8 files share it).", "",
             "| trained variant | kind | epochs run / planned | final top-1 % | why it stopped | bench files |",
             "|---|---|---:|---:|---|---|"]
    lines += [_row(c) for c in curves]
    notes = [f"- {_esc(c['model'])}: {_esc(c['note'])}." for c in curves if c.get("note")]
    lines += ["", *notes] if notes else []
    if png:
        lines += ["", f"![top-1 per epoch of training]({png})"]
    elif why_no_png:
        lines += ["", f"{CURVES_PNG} not drawn: {why_no_png}."]
    return lines + [""]
