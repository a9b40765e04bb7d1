"""The whole prune job on files: :func:`prune_file` loads a weights file, plans, prunes,
fine-tunes (optionally distilling from the unpruned source), evaluates and writes the smaller
state_dict with its manifest.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from vggc.compress.bn_recalib import DEFAULT_IMAGES, recalibrate_bn
from vggc.compress.graph import PruningGraph
from vggc.compress.prune.finetune import prune_and_finetune, remove_work_files
from vggc.compress.prune.plan import check_reachable, make_plan, prune_model
from vggc.compress.prune.spec import PruneSpec
from vggc.errors import InputError, VggcError
from vggc.evaluate import epoch_curve, model_top1
from vggc.progress import Progress, no_progress

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.distill import KDConfig
    from vggc.data import Preprocess, Split
    from vggc.train import TrainConfig


def prune_file(weights: str | Path, data: str | Path, out: str | Path, spec: PruneSpec, *,
               train_cfg: "TrainConfig | None" = None, finetune_epochs: int = 0, limit: int | None = None,
               eval_limit: int | None = None, do_eval: bool = True, sensitivity: str | Path | None = None,
               scan_limit: int = 1000, fractions=None, preprocess: "Preprocess | None" = None,
               resume: bool = False, seed: int = 0, progress: Progress = no_progress,
               on_epoch: Callable[[dict], None] | None = None,
               on_step: Callable[[dict], None] | None = None, kd: "KDConfig | None" = None,
               bn_recalib: int = DEFAULT_IMAGES, teacher_model: str | Path | None = None,
               teacher_backend: str | None = None,
               stop_drop_pt: "float | Callable[[float], float] | None" = None, stop_after: int = 1,
               reference: dict | None = None, curve: bool = False) -> dict:
    """Prune a weights file, fine-tune, evaluate, save ``out`` (state_dict) + ``out.json`` manifest.

    ``preprocess`` defaults to the source's manifest/sidecar (so the result evaluates with the
    same normalisation). ``sensitivity``: a scan written by :func:`vggc.compress.sensitivity.write_scan`
    (directory or its JSON); for ``--strategy sensitivity`` without one, a scan is run on
    ``scan_limit`` class-balanced training images. ``limit``: fine-tune on a class-balanced
    subset; ``eval_limit``: evaluate on a class-balanced subset of the test split.
    ``kd``: fine-tune with knowledge distillation from the unpruned source (a frozen copy is the
    teacher; ``kd.alpha`` weights the KD term, ``1 - alpha`` the cross-entropy); ``None`` or
    ``alpha == 0``: plain cross-entropy. ``bn_recalib``: after each prune step, re-estimate
    BatchNorm statistics on this many class-balanced training images (0: off); the
    "before fine-tune" accuracy is measured after it. ``teacher_model`` (with ``kd``): compute the
    teacher's logits with this model file of the unpruned source on ``teacher_backend``
    (:func:`vggc.compress.teacher.open_teacher`, e.g. its INT8 OpenVINO IR: ~4x cheaper than the
    bf16 PyTorch teacher); its top-1 and agreement with the source are measured (``metrics.teacher_model``).
    ``stop_drop_pt`` (percentage points; needs ``do_eval``): after ``stop_after`` fine-tune epochs
    the model is evaluated and, when it is more than this many points below the unpruned source
    (on the same test images), the fine-tune stops there — a target already far outside the
    caller's budget — and the manifest's ``stopped_early`` says so; the model so far is saved.
    A callable gets the source's top-1 (a fraction) and returns the points (a budget that is a
    share of the baseline).
    ``reference``: the source's FP32 result on the same evaluation images (a :func:`vggc.reference.reference_doc`
    record, e.g. the pipeline's ``source_eval``; refused when of other images) is ``top1_source`` and the
    teacher check's reference. ``curve``: top-1 after every fine-tune epoch in ``steps[k].history`` (same weights).

    Everything that can be refused without images is refused before any is read and before any
    training: a bad or unreachable spec, a scan that does not match the model, a plan whose really
    pruned model misses the MAC target. Returns the manifest's metrics.
    """
    from vggc.data import limit_split, load_split

    weights, out = Path(weights), Path(out)
    src = _Source.load(weights, preprocess)
    table, scan_info = _plan_table(src, spec, sensitivity, fractions)
    need_train = finetune_epochs > 0 or bn_recalib > 0 or (spec.strategy == "sensitivity" and table is None)
    train_full = load_split(data, "train", progress=progress) if need_train else None
    test = limit_split(load_split(data, "test", progress=progress), eval_limit, seed) if do_eval else None
    top1 = model_top1(test, src.pre, progress=progress) if test is not None else None
    if spec.strategy == "sensitivity" and table is None:
        table, scan_info = _scan(src, train_full, scan_limit, seed, fractions, progress)

    metrics: dict = {}
    ref_pred = None
    if do_eval:
        metrics["top1_source"], ref_pred = _source_reference(src, test, reference, progress)
        metrics["top1_before_finetune"] = _one_shot_top1(src, spec, table, train_full, bn_recalib, seed, top1)
    train = limit_split(train_full, limit, seed) if train_full is not None and finetune_epochs > 0 else None
    loss_fn, loss_settings, file_teacher = _kd_loss(src, kd, finetune_epochs, train_cfg, teacher_model,
                                                    teacher_backend)
    if file_teacher is not None and do_eval:
        from vggc.compress.teacher import check_teacher

        metrics["teacher_model"] = {**file_teacher.facts,
                                    **check_teacher(file_teacher, src.model, test, src.pre, ref_pred)}
    stop_check = None
    if stop_drop_pt is not None:
        if not do_eval or finetune_epochs <= stop_after:
            raise InputError("--stop-drop needs test evaluation and more fine-tune epochs than --stop-after")
        stop_check, metrics["stop_rule"] = _stop_rule(stop_drop_pt, metrics["top1_source"], stop_after,
                                                      finetune_epochs, top1)
    try:
        pruned, run = prune_and_finetune(src.model, spec, train=train, preprocess=src.pre, train_cfg=train_cfg,
                                         loss_fn=loss_fn, loss_settings=loss_settings, finetune_epochs=finetune_epochs,
                                         table=table, work=out, resume=resume, cleanup=False,
                                         evaluate_step=top1 if do_eval else None, progress=progress,
                                         on_epoch=on_epoch, on_step=on_step, bn_recalib=bn_recalib,
                                         bn_data=train_full, bn_seed=seed, stop_check=stop_check,
                                         evaluate_epoch=epoch_curve(top1, len(test)) if (curve and do_eval) else None)
    finally:
        if file_teacher is not None:
            file_teacher.close()
    size_metrics = _size_metrics(src, pruned, spec, run, train)
    if do_eval:
        same = finetune_epochs == 0 and spec.steps == 1  # the one-shot probe is this very model
        metrics["top1"] = metrics["top1_before_finetune"] if same else top1(pruned)
        metrics["n"] = len(test)
        run.steps[-1].update({"top1": metrics["top1"]} if spec.steps > 1 else {})
    metrics.update(size_metrics)
    settings = _settings(spec, finetune_epochs, train_cfg, limit, eval_limit, seed, data, scan_info, bn_recalib,
                         kd if loss_fn is not None else None, file_teacher, metrics.get("stop_rule"), curve and do_eval)
    _write_pruned(src, pruned, run, out, sensitivity, settings, metrics)
    remove_work_files(out, spec.steps)
    return metrics


@dataclass
class _Source:
    """The unpruned source as :func:`prune_file` reads it: model, manifest, preprocessing, size."""

    path: Path
    name: str
    model: nn.Module
    meta: dict
    pre: "Preprocess"
    size: int
    macs: int
    params: int

    @classmethod
    def load(cls, weights: Path, preprocess: "Preprocess | None") -> "_Source":
        from vggc.models import count_macs, count_params, load_weights
        from vggc.runtime import preprocess_from_meta, read_manifest

        lm = load_weights(weights)
        meta = read_manifest(weights)
        pre = preprocess or preprocess_from_meta(meta)
        size = pre.input_size
        return cls(weights, lm.name, lm.model, meta, pre, size, count_macs(lm.model, size), count_params(lm.model))


def _plan_table(src: _Source, spec: PruneSpec, sensitivity, fractions) -> tuple:
    """Refuse a spec that cannot be met before any image is read; return ``(scan table, scan
    facts)`` read from ``sensitivity`` (``(None, None)`` when there is none to read)."""
    from vggc.compress import sensitivity as sens

    if spec.strategy != "sensitivity":
        make_plan(src.model, spec, src.size)  # refuses an unreachable target before any image is read
        return None, None
    if sensitivity is not None:
        table = sens.read_scan(sensitivity)
        make_plan(src.model, spec, src.size, table)
        return table, {"path": str(sensitivity)}
    # the plan needs the scan; the most any scanned plan can remove is known already
    check_reachable(src.model, spec, src.size, max_fraction=max(fractions or sens.DEFAULT_FRACTIONS))
    return None, None


def _scan(src: _Source, train_full: "Split", scan_limit: int, seed: int, fractions, progress: Progress) -> tuple:
    """Run the sensitivity scan on ``scan_limit`` training images; return ``(table, scan facts)``."""
    from vggc.compress import sensitivity as sens
    from vggc.data import limit_split

    subset = limit_split(train_full, scan_limit, seed)
    table = sens.scan_sensitivity(src.model, subset, src.pre, fractions or sens.DEFAULT_FRACTIONS, progress=progress)
    return table, {"scan_limit": len(subset), "seed": seed, "baseline_top1": table.baseline}


def _settings(spec: PruneSpec, finetune_epochs: int, train_cfg, limit, eval_limit, seed: int, data, scan_info,
              bn_recalib: int, kd, file_teacher, stop_rule, curve: bool) -> dict:
    """Return the ``settings`` of a pruned model's manifest (what :func:`prune_file` was asked to do)."""
    return {"prune": spec.to_dict(), "finetune_epochs": finetune_epochs,
            "finetune": asdict(train_cfg) if train_cfg and finetune_epochs > 0 else None,
            "limit": limit, "eval_limit": eval_limit, "seed": seed, "data": str(data),
            "importance": "L1 norm of each conv filter (Li et al. 2017), independent per step",
            "sensitivity_scan": scan_info,
            "bn_recalib": {"images": bn_recalib, "split": "train", "seed": seed,
                           "when": "after each prune step, before its fine-tune"} if bn_recalib > 0 else 0,
            "distill_from_source": asdict(kd) if kd is not None else None,
            "teacher_model": file_teacher.facts if file_teacher is not None else None,
            "stop_rule": stop_rule, "curve": bool(curve)}


def _source_reference(src: _Source, test: "Split", reference: dict | None,
                      progress: Progress) -> tuple[float, torch.Tensor | None]:
    """Return the unpruned source's ``(top1, predictions)`` on ``test``: from ``reference`` when
    given (checked to be of these images), else evaluated here."""
    from vggc.reference import evaluate_source, reference_result

    if reference is not None:
        return reference_result(reference, test)
    res = evaluate_source(src.model, test, src.pre, progress=progress)
    return res.top1, res.predictions


def _one_shot_top1(src: _Source, spec: PruneSpec, table, train_full, bn_recalib: int, seed: int, top1) -> float:
    """Return the top-1 of the source pruned in one shot (BatchNorm re-estimated), before any fine-tune."""
    probe = copy.deepcopy(src.model)
    prune_model(probe, spec, src.size, table)
    if bn_recalib > 0:
        recalibrate_bn(probe, train_full, src.pre, images=bn_recalib, seed=seed)
    return top1(probe)


def _kd_loss(src: _Source, kd: "KDConfig | None", finetune_epochs: int, train_cfg: "TrainConfig | None",
             teacher_model, teacher_backend) -> tuple:
    """Return ``(loss_fn, loss_settings, file_teacher)`` of the fine-tune: distillation from the
    source (a frozen copy, or the model file ``teacher_model``) when ``kd`` asks for it, else
    ``(None, None, None)`` (the trainer's cross-entropy)."""
    if kd is None or kd.alpha <= 0 or finetune_epochs <= 0:
        if teacher_model is not None:
            raise InputError("--teacher-model is the KD teacher: it needs --kd-alpha > 0 and fine-tune epochs")
        return None, None, None
    from vggc.compress.distill import DistillLoss

    teacher = copy.deepcopy(src.model)
    file_teacher = None
    if teacher_model is not None:
        from vggc.compress.teacher import open_teacher

        teacher = file_teacher = open_teacher(teacher_model, src.pre, backend=teacher_backend)
    loss_fn = DistillLoss(teacher, kd, train_cfg.label_smoothing if train_cfg else 0.0)
    loss_settings = {"distill_from_source": asdict(kd)}
    if file_teacher is not None:
        loss_settings["teacher_model"] = {k: file_teacher.facts[k] for k in ("sha256", "backend", "precision")}
    return loss_fn, loss_settings, file_teacher


def _stop_rule(stop_drop_pt, top1_source: float, stop_after: int, finetune_epochs: int, top1) -> tuple:
    """Return ``(stop_check, stop_rule)``: the early stop asked after ``stop_after`` epochs, and
    its record for the manifest."""
    stop_pt = stop_drop_pt(top1_source) if callable(stop_drop_pt) else float(stop_drop_pt)
    stop_below = top1_source - stop_pt / 100
    rule = {"after_epochs": stop_after, "max_drop_pt": round(stop_pt, 4), "below_top1": round(stop_below, 6)}

    def stop_check(rec: dict, m: nn.Module) -> str | None:
        if rec["epoch"] != stop_after:
            return None
        acc = rec["top1"] if rec.get("top1") is not None else top1(m)  # the learning curve's, when recorded
        rec["top1"] = acc
        if acc < stop_below:
            return (f"stopped after {stop_after}/{finetune_epochs} epochs: top-1 {100 * acc:.2f}% is more "
                    f"than {stop_pt:.2f} pt below the source ({100 * stop_below:.2f}%)")
        return None

    return stop_check, rule


def _size_metrics(src: _Source, pruned: nn.Module, spec: PruneSpec, run, train: "Split | None") -> dict:
    """Return the pruned model's MACs, parameters and fine-tune cost against the source's
    (refusing a model above the MAC target: a planning bug)."""
    from vggc.models import count_macs, count_params

    macs, params = count_macs(pruned, src.size), count_params(pruned)
    if spec.target_macs is not None and macs > spec.target_macs * src.macs:
        raise VggcError(f"internal error: pruned model has {macs} MACs, above the target "
                        f"{spec.target_macs * src.macs:.0f}")
    return dict(macs_before=src.macs, macs_after=macs, macs_ratio=round(macs / src.macs, 6),
                params_before=src.params, params_after=params, params_ratio=round(params / src.params, 6),
                channels_removed_fraction=round(run.plan.removed_fraction, 6),
                finetune_seconds=run.finetune_seconds, finetune_cpu_seconds=run.finetune_cpu_seconds,
                train_images=len(train) if train is not None else 0, steps=run.steps,
                stopped_early=run.stopped_early)


def _write_pruned(src: _Source, pruned: nn.Module, run, out: Path, sensitivity, settings: dict,
                  metrics: dict) -> None:
    """Save the pruned state_dict at ``out`` and its manifest."""
    from vggc.artifacts import save_state_dict, write_manifest
    from vggc.compress import sensitivity as sens

    params, macs = metrics["params_after"], metrics["macs_after"]

    widths_after = PruningGraph(pruned, src.size).widths()
    sd = {k: v.contiguous() for k, v in pruned.state_dict().items()}
    save_state_dict(sd, out)
    inputs = {"source": src.path}
    if sensitivity is not None:
        inputs["sensitivity"] = sens.scan_json_path(sensitivity)
    write_manifest(out, kind="state_dict", inputs=inputs, settings=settings, metrics=metrics,
                   extra={"preprocess": src.pre.to_dict(), "params": params, "macs": macs, "precision": "fp32",
                          "arch": src.name, "widths_before": run.plan.widths_before, "widths": widths_after,
                          "plan": run.plan.to_dict(), "config": _config_dict(pruned),
                          "classes": src.meta.get("classes")})


def _config_dict(model: nn.Module) -> dict | None:
    """Return the architecture config read back from the pruned weights' shapes (or ``None``)."""
    from vggc.models.registry import detect

    try:
        _, cfg = detect(model.state_dict())
        return cfg.to_dict()
    except Exception:  # noqa: BLE001 - informational only
        return None
