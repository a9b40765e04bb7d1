"""Prune + fine-tune, resumably: :func:`prune_and_finetune` prunes a model to its plan in
``steps`` steps, fine-tuning after each with :func:`vggc.train.fit`, and keeps the state that
``--resume`` continues from beside the output (:func:`work_files`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from vggc.compress.bn_recalib import recalibrate_bn
from vggc.compress.graph import MacModel, PruningGraph
from vggc.compress.prune.plan import PlanResult, make_plan, step_plan
from vggc.compress.prune.spec import PruneSpec
from vggc.errors import InputError, StaleCheckpointError
from vggc.progress import Progress, no_progress
from vggc.resume import check_settings, run_key, write_settings

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.sensitivity import SensitivityTable
    from vggc.data import Preprocess, Split
    from vggc.train import LossFn, TrainConfig


@dataclass
class PruneRun:
    """What :func:`prune_and_finetune` did: the final plan, per-step records, fine-tune cost."""

    plan: PlanResult
    steps: list[dict] = field(default_factory=list)
    finetune_seconds: float = 0.0
    finetune_cpu_seconds: float = 0.0
    resumed_from_step: int = 0
    stopped_early: str | None = None  # why the last step's fine-tune stopped before its epochs


def epochs_per_step(total: int, steps: int) -> list[int]:
    """Split ``total`` fine-tune epochs over ``steps`` (earlier steps get the remainder)."""
    return [total // steps + (1 if k < total % steps else 0) for k in range(steps)]


def _state_paths(work: Path) -> tuple[Path, Callable[[int], Path]]:
    return (work.with_name(work.name + ".state.pt"),
            lambda k: work.with_name(work.name + f".step{k}.ckpt"))


def settings_file(work: str | Path) -> Path:
    """Return ``<work>.settings.json``: the readable settings of a run that fine-tunes, written
    when it starts and checked by ``--resume`` (:func:`vggc.resume.check_settings`)."""
    work = Path(work)
    return work.with_name(work.name + ".settings.json")


def work_files(work: str | Path, steps: int) -> list[Path]:
    """Return the resumable-state paths :func:`prune_and_finetune` keeps beside ``work``: the
    state after a finished step and each step's fit checkpoint (any of them: there is something
    to resume). The settings file (:func:`settings_file`) is not one of them."""
    state_path, ckpt_of = _state_paths(Path(work))
    return [state_path, *(ckpt_of(k) for k in range(1, steps + 1))]


def remove_work_files(work: str | Path, steps: int) -> None:
    """Delete the resumable state :func:`prune_and_finetune` keeps beside ``work`` (and its settings)."""
    for p in [*work_files(work, steps), settings_file(work)]:
        p.unlink(missing_ok=True)


def _read_state(path: Path, key: str) -> dict:
    """Return the state :func:`prune_and_finetune` saved after a step; refuse (one line) one that
    cannot be read, lacks a field, or belongs to other settings."""
    from vggc.artifacts import safe_torch_load
    from vggc.errors import first_line

    try:
        st = safe_torch_load(path)
    except InputError as err:
        raise StaleCheckpointError(f"--resume: {first_line(err)}; rerun without --resume") from None
    fields = ("key", "step", "model", "steps", "finetune_seconds", "finetune_cpu_seconds")
    if not isinstance(st, dict) or any(f not in st for f in fields):
        raise StaleCheckpointError(f"--resume: {path} is not a vggc prune state (missing fields); "
                                   "rerun without --resume")
    if st["key"] != key:
        raise StaleCheckpointError(f"--resume: {path} was written with different settings; "
                                   "rerun without --resume or with the same options")
    return st


def _bind_stop(stop_check, model: nn.Module):
    """Return fit's ``stop_check(record)`` asking ``stop_check(record, model)`` with ``model`` in
    eval mode (fit puts it back in train mode at the next epoch)."""
    if stop_check is None:
        return None

    def check(rec: dict) -> str | None:
        model.eval()
        return stop_check(rec, model)

    return check


def _resume(run: PruneRun, work, settings: dict, key: str, model: nn.Module) -> tuple[nn.Module, int]:
    """Continue a killed :func:`prune_and_finetune` (``--resume``): load the state after its last
    finished step into ``run``, or check the settings of a first step's fit checkpoint; return
    ``(model to go on from, steps done)``. Refuses (one line) when there is nothing to resume or
    it belongs to other settings."""
    from vggc.models import model_from_state_dict

    if work is None:
        raise InputError("--resume needs a work path for checkpoints")
    state_path, ckpt_of = _state_paths(Path(work))
    if state_path.is_file():
        check_settings(settings_file(work), settings, state_path)
        st = _read_state(state_path, key)
        model, _, _ = model_from_state_dict(st["model"])
        start = int(st["step"])
        run.steps = list(st["steps"])
        run.finetune_seconds = float(st["finetune_seconds"])
        run.finetune_cpu_seconds = float(st["finetune_cpu_seconds"])
        run.resumed_from_step = start
        return model, start
    if ckpt_of(1).is_file():
        check_settings(settings_file(work), settings, ckpt_of(1))
        return model, 0
    raise InputError(f"--resume: nothing to resume, no {state_path.name} or {ckpt_of(1).name} "
                     f"beside {Path(work).name}")


def _record_fit(run: PruneRun, rec: dict, res) -> None:
    """Add one step's fine-tune (a :class:`vggc.train.TrainResult`) to its record and the run's totals."""
    if res.stopped_early:
        rec["stopped_early"] = run.stopped_early = res.stopped_early
    # summed over the epoch records, so epochs done before a kill (restored on resume) count too
    wall = sum(h["seconds"] for h in res.history)
    cpu = sum(h.get("cpu_seconds", 0.0) for h in res.history)
    run.finetune_seconds += wall
    run.finetune_cpu_seconds += cpu
    rec.update(finetune_seconds=round(wall, 2), finetune_cpu_seconds=round(cpu, 2),
               precision=res.precision, history=res.history, resumed_from_epoch=res.resumed_from,
               fp32_layers=res.fp32_layers)


def prune_and_finetune(model: nn.Module, spec: PruneSpec, *, train: "Split | None", preprocess: "Preprocess",
                       train_cfg: "TrainConfig | None", finetune_epochs: int = 0,
                       table: "SensitivityTable | None" = None, work: str | Path | None = None,
                       resume: bool = False, cleanup: bool = True,
                       evaluate_step: Callable[[nn.Module], float] | None = None,
                       progress: Progress = no_progress, on_epoch: Callable[[dict], None] | None = None,
                       on_step: Callable[[dict], None] | None = None, loss_fn: "LossFn | None" = None,
                       loss_settings: dict | None = None, bn_recalib: int = 0,
                       bn_data: "Split | None" = None, bn_seed: int = 0,
                       stop_check: Callable[[dict, nn.Module], str | None] | None = None,
                       evaluate_epoch: Callable[[nn.Module], dict] | None = None) -> tuple[nn.Module, PruneRun]:
    """Prune ``model`` to ``spec`` in ``spec.steps`` steps, fine-tuning with :func:`vggc.train.fit`.

    The final widths are planned once on the original model; step ``k`` prunes every layer
    ``k/steps`` of the way there (lowest-L1 filters of the *current*, fine-tuned weights) and
    fine-tunes for its share of ``finetune_epochs`` (seed ``train_cfg.seed + k - 1``).

    ``work``: file prefix for resumable state — ``<work>.state.pt`` after each finished step and
    ``<work>.step<k>.ckpt`` (fit's checkpoint: every epoch and every 10 minutes); ``resume=True`` continues from them.
    ``cleanup``: delete them at the end (:func:`prune_file` does so only once its output is saved).
    ``evaluate_step(model) -> top1`` is called after each step but the last (whose result the
    caller evaluates anyway). ``loss_fn``: the fine-tune loss (default: the trainer's
    cross-entropy), e.g. :class:`vggc.compress.distill.DistillLoss` from the unpruned model;
    ``loss_settings`` describe it in the resume key. ``bn_recalib``: after each step's pruning
    (before its fine-tune), re-estimate BatchNorm statistics on this many class-balanced images of
    ``bn_data`` (default ``train``; subset seed ``bn_seed``) with
    :func:`vggc.compress.bn_recalib.recalibrate_bn`; 0: off. ``stop_check(epoch_record, model)``: asked
    after each epoch of the LAST step's fine-tune, with the model in eval mode (see
    :func:`vggc.train.fit`); a reason stops it (``PruneRun.stopped_early``). ``evaluate_epoch(model) -> dict``:
    fit's per-epoch evaluation (the learning curve in each step's ``history``).
    A run that fine-tunes writes its settings to :func:`settings_file`; ``--resume`` refuses when
    that file is missing, unreadable or differs (:func:`vggc.resume.check_settings`).
    Returns ``(pruned model, PruneRun)``; the model is on CPU in eval mode.
    """
    from vggc.artifacts import atomic_path

    if finetune_epochs > 0 and (train is None or train_cfg is None):
        raise InputError("fine-tuning needs training data and a TrainConfig")
    bn_data = bn_data if bn_data is not None else train
    if bn_recalib > 0 and bn_data is None:
        raise InputError("BatchNorm re-estimation needs training images")
    size = preprocess.input_size
    model = model.eval()
    plan = make_plan(model, spec, size, table)
    before = plan.widths_before
    per_step = epochs_per_step(finetune_epochs, spec.steps)
    settings = {"spec": spec.to_dict(), "keep": plan.keep, "epochs": per_step,
                "train": asdict(train_cfg) if train_cfg else None, "n_train": len(train) if train else 0,
                **({"loss": loss_settings} if loss_settings else {}),
                **({"bn_recalib": {"images": bn_recalib, "n_data": len(bn_data), "seed": bn_seed}} if bn_recalib > 0 else {})}
    key = run_key(settings)
    state_path, ckpt_of = _state_paths(Path(work)) if work else (None, None)
    run = PruneRun(plan=plan)
    start = 0
    if resume:
        model, start = _resume(run, work, settings, key, model)
    elif work is not None and finetune_epochs > 0:
        write_settings(settings_file(work), settings)

    for k in range(start + 1, spec.steps + 1):
        graph = PruningGraph(model, size)
        keep = step_plan(before, plan.keep, k, spec.steps, spec)
        graph.apply(keep)
        macs = MacModel(graph, size).macs()
        rec = {"step": k, "widths": graph.widths(), "macs": macs, "epochs": per_step[k - 1]}
        if bn_recalib > 0:
            rec["bn_recalib_images"] = recalibrate_bn(model, bn_data, preprocess, images=bn_recalib,
                                                     seed=bn_seed)
        if per_step[k - 1] > 0:
            from vggc.train import fit

            cfg = replace(train_cfg, epochs=per_step[k - 1], seed=train_cfg.seed + k - 1)
            ckpt = ckpt_of(k) if ckpt_of else None
            resume_fit = bool(resume and ckpt is not None and ckpt.is_file())
            res = fit(model.train(), train, preprocess, cfg, loss_fn=loss_fn, checkpoint=ckpt, resume=resume_fit,
                      progress=progress, on_epoch=on_epoch, run_key=key,
                      stop_check=_bind_stop(stop_check, model) if k == spec.steps else None,
                      evaluate_epoch=evaluate_epoch)
            _record_fit(run, rec, res)
        model = model.eval()
        if evaluate_step is not None and k < spec.steps:
            rec["top1"] = evaluate_step(model)
        run.steps.append(rec)
        if state_path is not None and k < spec.steps and per_step[k - 1] > 0:
            with atomic_path(state_path) as tmp:
                torch.save({"key": key, "step": k, "model": model.state_dict(), "steps": run.steps,
                            "finetune_seconds": run.finetune_seconds,
                            "finetune_cpu_seconds": run.finetune_cpu_seconds}, tmp)
            if ckpt_of:
                ckpt_of(k).unlink(missing_ok=True)
        if on_step:
            on_step(rec)
    if cleanup and work:
        remove_work_files(work, spec.steps)
    run.finetune_seconds = round(run.finetune_seconds, 2)
    run.finetune_cpu_seconds = round(run.finetune_cpu_seconds, 2)
    return model.cpu().eval(), run
