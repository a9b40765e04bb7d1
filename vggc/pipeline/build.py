"""The pipeline's steps for one preset: :func:`build_steps` wires the stages' library functions.

The frontier (``Preset.targets()``): one pruned model per MAC target, each from one sensitivity
scan, fine-tuned with knowledge distillation from the unpruned model whose logits come from its
INT8 OpenVINO IR (the ``int8_ov_static`` step: ~4x cheaper than the bf16 PyTorch teacher here),
stopped early when after ``stop_after`` epochs it is already far outside the budget, then
exported and quantized on every CPU INT8 backend. Every static INT8 step is accuracy-aware: it gets
what is left of the budget after the model it quantizes (the whole budget for the unpruned model,
budget minus the pruning loss for a pruned one, minus the student's loss against the teacher for
the distilled MobileNetV2) and keeps the fewest sensitive layers in FP32 to stay within it
(``vggc quantize --max-drop``); a model already outside the budget gets plain INT8 and a
``budget_note`` that says so.

Step names carry the target in percent (``prune50``, ``pruned25_int8_ov_static``, ``prune12_5``);
:func:`family` maps them to the name without it (``prune``, ``pruned_int8_ov_static``: the names
of the single-target pipeline, still accepted by ``--only`` and ``Preset.skip``). Each step returns
its equivalent ``vggc`` command (:mod:`vggc.pipeline.commands`; files under ``--out`` as ``$OUT/...``,
the source weights and data as the user gave them) in its metrics as ``command``.

Each artifact is made once and passed on: ``source_eval`` evaluates the unpruned model in FP32 once
(top-1 and per-image predictions, :mod:`vggc.reference`) for every budget, prune and teacher check;
ONNX Runtime and NNCF quantize the FP32 ONNX file of the ``onnx_fp32`` / ``pruned<T>_onnx`` /
``student_onnx`` step.
Step factories are module-level functions of a :class:`Build` (what every step needs).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from vggc.compress.quantize import TRIAL_BACKENDS, BudgetNotMetError
from vggc.errors import first_line
from vggc.pipeline import commands as cmds
from vggc.pipeline.presets import Preset
from vggc.pipeline.steps import Step, StepContext
from vggc.progress import Progress, no_progress

TEACHER_STEP = "int8_ov_static"  # the KD teacher of every pruned target and of the student
TEACHER_BACKEND = "openvino-cpu"
SOURCE_EVAL = "source_eval"  # top-1 of the unpruned model on the evaluation images: the budget's baseline
_TARGET_RE = re.compile(r"^(prune|pruned)(\d+(?:_\d+)?)(.*)$")


def target_tag(target: float) -> str:
    """Return a MAC target's tag in step and file names: 0.5 -> ``50``, 0.125 -> ``12_5``."""
    return f"{100 * target:g}".replace(".", "_")


def family(name: str) -> str:
    """Return a step name without its MAC target (``pruned25_onnx`` -> ``pruned_onnx``)."""
    m = _TARGET_RE.match(name)
    return f"{m.group(1)}{m.group(3)}" if m else name


def budget_pt(base_top1: float, max_drop_pt: float | None) -> float:
    """Return the top-1 budget in percentage points: ``max_drop_pt``, default 1 % of the
    unpruned model's top-1 ``base_top1`` (a fraction) (:func:`vggc.bench.baseline.budget_pt`)."""
    from vggc.bench.baseline import budget_pt as bench_budget

    return bench_budget({"top1": base_top1}, max_drop_pt)


def budget_left(source_meta: dict, max_drop_pt: float | None) -> float:
    """Return the points of top-1 an INT8 copy of a model may still lose: the budget (``max_drop_pt``,
    default 1 % of the unpruned model's top-1) minus what the model already lost against the
    unpruned one (its manifest's ``top1_source`` - ``top1``; a distilled student's manifest names the
    unpruned model ``teacher_top1``, measured on the same images; 0 for the unpruned model itself).
    Negative when the model is already outside the budget."""
    m = source_meta.get("metrics") or {}
    base, top1 = m.get("top1_source", m.get("teacher_top1")), m.get("top1")
    if base is None or top1 is None:
        raise ValueError("the model's manifest has no top1/top1_source (or teacher_top1)")
    return budget_pt(base, max_drop_pt) - 100.0 * (float(base) - float(top1))


@dataclass(frozen=True)
class Build:
    """What every step factory of one pipeline needs: the source ``weights`` (a VGG16 state_dict)
    and ``data`` exactly as the user gave them (the rebuild commands repeat them), the preset, the
    seed, the CPU ``threads`` of the stages that open ONNX Runtime sessions, the progress bar and
    the top-1 budget ``max_drop_pt`` (``None``: 1 % of the unpruned model's)."""

    weights: Path
    data: Path
    preset: Preset
    seed: int = 0
    threads: int | None = None
    progress: Progress = no_progress
    max_drop_pt: float | None = None
    given: tuple[str, str] | None = None  # (weights, data) as typed; default: the paths' strings
    time_budget_s: float | None = None  # None: every trained variant gets its preset's epochs (no pilots)

    @property
    def weights_arg(self) -> str:
        """The source weights as a rebuild command names them (as the user gave them)."""
        return self.given[0] if self.given else str(self.weights)

    @property
    def data_arg(self) -> str:
        return self.given[1] if self.given else str(self.data)

    def source_arg(self, ctx: StepContext, src: str | None) -> str:
        """Return the model a step starts from as its command names it: the source weights as
        given, or ``$OUT/...`` for step ``src``'s output."""
        return self.weights_arg if src is None else ctx.shell(ctx.dep(src))

    @property
    def stem(self) -> str:
        return self.weights.stem

    @property
    def data_s(self) -> str:
        return str(self.data)

    def reads(self, *splits: str) -> dict:
        """Return the ``Step`` fields that say which data splits a step reads (their fingerprints key it)."""
        return {"data": self.data, "splits": splits}

    @property
    def budget_key(self) -> dict:
        return {"max_drop_pt": self.max_drop_pt}  # None: the default rule (1 % of the baseline)

    @cached_property
    def trained_on(self) -> dict:
        """Training runs with precision/device "auto": the key holds what they resolve to on this
        machine (bf16 on CPUs with native bf16, fp32 elsewhere, fp16 on CUDA): it changes the weights."""
        from vggc.train import resolve_device, resolve_precision

        device = resolve_device("auto")
        return {"train_device": device.type, "train_precision": resolve_precision("auto", device)}

    @property
    def kd_on(self) -> bool:
        return self.preset.kd_alpha > 0 and self.preset.prune_finetune_epochs > 0

    @property
    def stop_on(self) -> bool:
        p = self.preset
        return p.stop_margin_pt is not None and p.prune_finetune_epochs > p.stop_after

    def train_cfg(self, epochs: int, lr: float):
        """Return the :class:`~vggc.train.TrainConfig` of a training step (``epochs`` 0: prune
        without fine-tune still needs a valid config; fit is not called then)."""
        from vggc.train import TrainConfig

        return TrainConfig(epochs=max(1, epochs), lr=lr, seed=self.seed, batch_size=self.preset.train_batch)

    def shares(self) -> dict[str, float]:
        """Return each trained step's share of the time budget (:func:`vggc.pipeline.allocate.time_shares`)."""
        from vggc.pipeline.allocate import time_shares

        return time_shares(self.time_budget_s, [f"prune{target_tag(t)}" for t in self.preset.targets()], "distill")

    def allocation_key(self, step: str) -> dict:
        """The settings of a trained step that its epoch allocation depends on (none without a budget)."""
        if self.time_budget_s is None:
            return {}
        return {"time_budget_s": self.time_budget_s, "share_s": round(self.shares()[step], 1),
                "max_epochs": self.preset.max_epochs(step), **self.budget_key}


def _read_json(path: Path) -> dict:
    from vggc.artifacts import read_json_object

    return read_json_object(path)


def _resumable(run: Callable[[bool], dict], work: list[Path], checkpoints: list[Path] | None = None, *,
               resumable: bool) -> dict:
    """Run a training step, continuing from the checkpoint a killed run left behind.

    With ``resumable`` (:attr:`StepContext.resumable`: the killed attempt ran under this step's key)
    and any of ``checkpoints`` (default: all of ``work``) there, ``run(True)`` resumes from it; if it
    was made with other settings (a changed preset or seed) every ``work`` file is deleted and the
    step starts over with ``run(False)``. Without ``resumable`` (the data, the code, a library or
    an input file changed since) the ``work`` files are deleted first. Returns what ``run`` returns.
    """
    from vggc.errors import StaleCheckpointError

    if not resumable:
        for p in work:
            p.unlink(missing_ok=True)
    if any(p.is_file() for p in (work if checkpoints is None else checkpoints)):
        try:
            return run(True)
        except StaleCheckpointError:
            for p in work:
                p.unlink(missing_ok=True)
    return run(False)


# ----------------------------------------------------------------------------- the source's FP32 reference

def _run_source_eval(b: Build, ctx: StepContext) -> dict:
    """Evaluate the unpruned model once; write its :func:`vggc.reference.reference_doc` (with the
    per-image predictions every later step compares against); return it without the predictions."""
    from vggc.artifacts import write_json
    from vggc.data import limit_split, load_split
    from vggc.models import load_weights
    from vggc.reference import evaluate_source, reference_doc
    from vggc.runtime import preprocess_from_meta, read_manifest

    model = load_weights(b.weights).model.eval()
    pre = preprocess_from_meta(read_manifest(b.weights))
    test = limit_split(load_split(b.data_s, "test", progress=b.progress), b.preset.eval_limit, b.seed)
    res = evaluate_source(model, test, pre, progress=b.progress)
    doc = {**reference_doc(res, test, eval_limit=b.preset.eval_limit, seed=b.seed), "top1_source": res.top1}
    write_json(ctx.output(), doc)
    return {k: v for k, v in doc.items() if k != "predictions"}


def source_eval_step(b: Build) -> Step:
    return Step(SOURCE_EVAL, [f"{SOURCE_EVAL}.json"], lambda ctx: _run_source_eval(b, ctx), inputs=[b.weights],
                model=False, settings={"eval_limit": b.preset.eval_limit, "seed": b.seed}, **b.reads("test"),
                label="top-1 of the unpruned model on the evaluation images (the budget's baseline)")


def _reference(b: Build, ctx: StepContext, src: str | None) -> dict | None:
    """Return the FP32 reference of the model a step starts from, measured by an earlier step on the
    evaluation images: ``source_eval``'s record for the unpruned model, the prune or distill step's own
    top-1 (its manifest's metrics: the same images) for a pruned model or the student; ``None`` when
    the step has neither."""
    if src is None:
        return _read_json(ctx.dep(SOURCE_EVAL)) if SOURCE_EVAL in ctx.step.deps else None
    from vggc.artifacts import read_manifest

    meta = read_manifest(ctx.dep(src))
    m, st = meta.get("metrics") or {}, meta.get("settings") or {}
    seed = st.get("seed", (st.get("train") or {}).get("seed"))  # a distilled student's is its training seed
    if m.get("top1") is None or st.get("eval_limit") != b.preset.eval_limit or seed != b.seed:
        return None
    return {"top1": m["top1"], "n": m.get("n"), "eval_limit": st.get("eval_limit"), "seed": seed}


# ----------------------------------------------------------------------------- ONNX export

def _run_export(b: Build, ctx: StepContext, src: str | None, fp16: bool) -> dict:
    from vggc.export.job import export_file

    p = b.preset
    source = b.weights if src is None else ctx.dep(src)
    facts = export_file(str(source), str(ctx.output()), data=b.data_s, fp16=fp16, parity_limit=p.parity_limit,
                        seed=b.seed, threads=b.threads, progress=b.progress)
    parity = facts.get("parity") or {}
    return {"precision": facts.get("precision"), "size_bytes": facts.get("size_bytes"),
            **{k: v for k, v in parity.items() if isinstance(v, (int, float))},
            "command": cmds.export_cmd(b.source_arg(ctx, src), ctx.shell(ctx.output()), b.data_arg, fp16=fp16,
                                       parity_limit=p.parity_limit, seed=b.seed)}


def export_step(b: Build, name: str, src: str | None, out: str, fp16: bool) -> Step:
    """The ONNX export of ``src``'s model (``None``: the source state_dict) to ``out``."""
    return Step(name, [out], lambda ctx: _run_export(b, ctx, src, fp16), deps=[src] if src else [],
                inputs=[] if src else [b.weights],
                settings={"fp16": fp16, "parity_limit": b.preset.parity_limit, "seed": b.seed},
                label=f"ONNX {'FP16' if fp16 else 'FP32'} export", **b.reads("test"))  # parity on test images


# ----------------------------------------------------------------------------- INT8

def _aware(mode: str, backend: str) -> bool:
    """Whether a quantization step is accuracy-aware (keeps what is left of the budget)."""
    return mode == "static" and backend in TRIAL_BACKENDS


def _budget_options(b: Build, ctx: StepContext, src: str | None, aware: bool) -> tuple[float | None, dict]:
    """Return ``(points left of the budget or None, quantize options that keep to it)``."""
    from vggc.artifacts import read_manifest

    if not aware:
        return None, {}
    # the unpruned model's top-1 is the source_eval step's; a pruned one's is in its manifest
    meta = read_manifest(ctx.dep(src)) if src is not None else {"metrics": _read_json(ctx.dep(SOURCE_EVAL))}
    left = budget_left(meta, b.max_drop_pt)
    if left <= 0:
        return left, {}
    p = b.preset
    return left, {"max_drop": round(left, 4), "max_fp32_layers": p.max_fp32_layers, "evaluate": True,
                  "eval_limit": p.eval_limit}


def _run_quant(b: Build, ctx: StepContext, src: str | None, mode: str, backend: str, reduce_range: bool,
               onnx: str | None) -> dict:
    from vggc.compress.quantize import quantize

    p = b.preset
    source = b.weights if src is None else ctx.dep(src)
    aware = _aware(mode, backend)
    left, extra = _budget_options(b, ctx, src, aware)
    fp32_onnx = ctx.dep(onnx) if onnx else None  # the FP32 export step's file: not exported again
    reference = _reference(b, ctx, src) if aware else None  # the FP32 top-1: not evaluated again

    def run_quantize(options: dict) -> dict:
        return quantize(source, mode=mode, backend=backend, data=b.data_s, calib_size=p.calib_size, seed=b.seed,
                        out=ctx.output(), threads=b.threads, progress=b.progress, fp32_onnx=fp32_onnx,
                        reference=reference,
                        **({"evaluate": False} | options))  # else the bench measures accuracy, once

    missed = None
    try:
        res = run_quantize(extra)
    except BudgetNotMetError as err:  # the variant's row shows the drop; the log and metrics say why
        missed, extra = first_line(err), {}
        res = run_quantize(extra)
    facts = {k: v for k, v in (res or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
    if missed:
        facts["budget_note"] = f"{missed}: wrote plain INT8"
    facts["budget_left_pt"] = None if left is None else round(left, 4)
    if left is not None and left <= 0:
        facts["budget_note"] = (f"{Path(source).name} is already {-left:.2f} pt outside the budget: "
                                "plain INT8, nothing kept FP32")
    facts["fp32_layers"] = ", ".join(res.get("fp32_layers") or []) or None
    facts["command"] = cmds.quantize_cmd(b.source_arg(ctx, src), ctx.shell(ctx.output()), b.data_arg, mode=mode,
                                         backend=backend, calib_size=p.calib_size, seed=b.seed,
                                         reduce_range=reduce_range, max_drop=extra.get("max_drop"),
                                         max_fp32_layers=extra.get("max_fp32_layers"),
                                         eval_limit=extra.get("eval_limit"),
                                         fp32_onnx=ctx.shell(fp32_onnx) if fp32_onnx else None)
    return facts


def quant_step(b: Build, name: str, src: str | None, out: str, mode: str, backend: str,
               onnx: str | None = None) -> Step:
    """INT8 quantization of ``src``'s model (``None``: the source state_dict) on ``backend``;
    ``onnx``: the step whose FP32 ONNX export of the same model ONNX Runtime and NNCF quantize
    (instead of exporting it again). An accuracy-aware step takes the FP32 top-1 from
    ``source_eval`` (the unpruned model) or the prune / distill step's manifest (a pruned model, the
    student)."""
    from vggc.compress.quantize import resolve_reduce_range

    p = b.preset
    reduce_range = resolve_reduce_range(None)  # auto, resolved on this CPU (VNNI or not)
    aware = _aware(mode, backend)
    settings = {"mode": mode, "backend": backend, "calib_size": p.calib_size, "seed": b.seed,
                "reduce_range": reduce_range,
                **({**b.budget_key, "max_fp32_layers": p.max_fp32_layers, "eval_limit": p.eval_limit}
                   if aware else {})}
    # an OpenVINO IR is two files: the .xml (the model the bench opens) and its .bin
    outs = [out, str(Path(out).with_suffix(".bin"))] if backend == "openvino" else [out]
    what = "NNCF, OpenVINO IR" if backend == "openvino" else backend
    splits = ("train", "test") if aware else ("train",) if mode == "static" else ()
    deps = ([src or SOURCE_EVAL] if (src or aware) else []) + ([onnx] if onnx else [])
    return Step(name, outs, lambda ctx: _run_quant(b, ctx, src, mode, backend, reduce_range, onnx),
                deps=deps, inputs=[] if src else [b.weights],
                settings=settings, label=f"{mode} INT8 ({what})", **b.reads(*splits))


# ----------------------------------------------------------------------------- pruning

def _run_scan(b: Build, ctx: StepContext) -> dict:
    from vggc.compress.sensitivity import scan_file

    p = b.preset
    table, _ = scan_file(b.weights, b.data_s, ctx.output().parent, scan_limit=p.scan_limit, seed=b.seed,
                         progress=b.progress)
    return {"baseline_top1": table.baseline, "n": table.n, "max_drop": table.max_drop(),
            "command": cmds.scan_cmd(b.weights_arg, ctx.shell(ctx.output().parent), b.data_arg, scan_limit=p.scan_limit,
                                     seed=b.seed)}


def scan_step(b: Build) -> Step:
    """The per-layer pruning sensitivity scan (``sensitivity`` strategy): a table, not a model."""
    p = b.preset
    return Step("prune_scan", ["prune_scan/sensitivity.csv.json", "prune_scan/sensitivity.csv",
                               "prune_scan/sensitivity.png"], lambda ctx: _run_scan(b, ctx), inputs=[b.weights],
                settings={"scan_limit": p.scan_limit, "seed": b.seed}, model=False, **b.reads("train"),
                label=f"per-layer pruning sensitivity on {p.scan_limit} training images")


def _prune_run(b: Build, ctx: StepContext, target: float) -> Callable[[Path, int], dict]:
    """Return ``run(out, epochs) -> metrics``: prune the source to ``target`` and fine-tune ``epochs``
    (KD from the INT8 teacher, early stop, learning curve) into ``out``, resuming a killed run;
    the run's rebuild command is in the metrics (``command``)."""
    from vggc.compress.bn_recalib import DEFAULT_IMAGES
    from vggc.compress.distill import KDConfig
    from vggc.compress.prune import PruneSpec, prune_file, work_files

    p = b.preset
    spec = PruneSpec(strategy=p.prune_strategy, target_macs=target, round_to=8)
    scan = ctx.dep("prune_scan") if "prune_scan" in ctx.step.deps else None
    teacher = ctx.dep(TEACHER_STEP) if b.kd_on else None
    kd = KDConfig(temperature=p.kd_temperature, alpha=p.kd_alpha) if b.kd_on else None
    margin = p.stop_margin_pt
    # the budget + a margin for what the remaining epochs recover
    stop = (lambda base: budget_pt(base, b.max_drop_pt) + float(margin)) if b.stop_on else None
    lr = 0.01

    def run(out: Path, epochs: int) -> dict:
        metrics = _resumable(lambda resume: prune_file(
            b.weights, b.data_s, out, spec, sensitivity=scan, train_cfg=b.train_cfg(epochs, lr),
            finetune_epochs=epochs, limit=p.prune_limit, eval_limit=p.eval_limit, seed=b.seed,
            resume=resume, progress=b.progress, kd=kd, teacher_model=teacher,
            teacher_backend=TEACHER_BACKEND if teacher else None, stop_drop_pt=stop if epochs > p.stop_after else None,
            stop_after=p.stop_after, reference=_read_json(ctx.dep(SOURCE_EVAL)), curve=True),
            work_files(out, spec.steps), resumable=ctx.resumable)
        rule = metrics.get("stop_rule") or {}
        metrics["command"] = cmds.prune_cmd(
            b.weights_arg, ctx.shell(out), b.data_arg, strategy=p.prune_strategy, target=target,
            scan=ctx.shell(scan) if scan else None, epochs=epochs, lr=lr, batch=p.train_batch,
            limit=p.prune_limit, eval_limit=p.eval_limit, seed=b.seed, kd_alpha=p.kd_alpha if b.kd_on else 0.0,
            kd_temperature=p.kd_temperature, teacher_model=ctx.shell(teacher) if teacher else None,
            teacher_backend=TEACHER_BACKEND if teacher else None, stop_drop=rule.get("max_drop_pt"),
            stop_after=p.stop_after, bn_recalib=DEFAULT_IMAGES, curve=True)
        return metrics

    return run


def _allocation_args(b: Build, ctx: StepContext) -> dict:
    """Return what :func:`vggc.pipeline.pilot.run_allocated` decides a trained step's epochs with: the
    accuracy floor (the unpruned model's top-1 on the evaluation images minus the budget), the step's
    share of the time budget and its most epochs."""
    base = float(_read_json(ctx.dep(SOURCE_EVAL))["top1"])
    name = ctx.step.name
    return {"floor": base - budget_pt(base, b.max_drop_pt) / 100, "share_s": b.shares()[name],
            "max_epochs": b.preset.max_epochs(name)}


def _step_metrics(metrics: dict) -> dict:
    """Return what pipeline.json keeps of a training step's metrics: scalars, the teacher check, the
    stop rule and the epoch allocation (the histories stay in the model's manifest)."""
    keep = ("teacher_model", "stop_rule", "allocation")
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict)) or k in keep}


def prune_history(metrics: dict, *, restored: bool = False) -> list[dict]:
    """Return the fine-tune epoch records of a ``prune_file`` run's ``metrics``; ``restored``: only
    those a resumed run loaded from its checkpoint (trained by an earlier, killed run)."""
    return [h for st in metrics.get("steps", [])
            for h in st.get("history", [])[:st.get("resumed_from_epoch", 0) if restored else None]]


def distill_history(metrics: dict, *, restored: bool = False) -> list[dict]:
    """Return the epoch records of a ``distill`` run's ``metrics``; ``restored``: only those a resumed
    run loaded from its checkpoint."""
    train = metrics.get("train") or {}
    return train.get("history", [])[:train.get("resumed_from", 0) if restored else None]


def _run_prune(b: Build, ctx: StepContext, target: float) -> dict:
    from vggc.pipeline.pilot import run_allocated

    run = _prune_run(b, ctx, target)
    if b.time_budget_s is None:
        return _step_metrics(run(ctx.output(), b.preset.prune_finetune_epochs))
    return _step_metrics(run_allocated(
        ctx, run, pilot_epochs=b.preset.prune_finetune_epochs, **_allocation_args(b, ctx),
        history=prune_history, earlier=lambda m: prune_history(m, restored=True),
        stopped=lambda m: m.get("stopped_early")))


def prune_step(b: Build, target: float, scan_steps: list[Step]) -> Step:
    """Prune the source to ``target`` of its MACs and fine-tune it (KD from the INT8 teacher); with a
    time budget the fine-tune's epochs are allocated after a pilot (:mod:`vggc.pipeline.allocate`)."""
    p = b.preset
    tag = target_tag(target)
    ft = {**b.trained_on, "strategy": p.prune_strategy, "epochs": p.prune_finetune_epochs,
          "batch": p.train_batch, "limit": p.prune_limit, "target": target, "eval_limit": p.eval_limit,
          "seed": b.seed,
          "kd": {"alpha": p.kd_alpha, "T": p.kd_temperature, "teacher": TEACHER_STEP,
                 "teacher_backend": TEACHER_BACKEND} if b.kd_on else None,
          "stop": {"margin_pt": p.stop_margin_pt, "after": p.stop_after, **b.budget_key} if b.stop_on else None,
          "curve": True, **b.allocation_key(f"prune{tag}")}
    outputs = [f"{b.stem}_pruned{tag}.pt"] + ([f"{b.stem}_pruned{tag}_pilot.pt"] if b.time_budget_s else [])
    return Step(f"prune{tag}", outputs, lambda ctx: _run_prune(b, ctx, target),
                inputs=[b.weights], settings=ft,
                deps=[s.name for s in scan_steps] + ([TEACHER_STEP] if b.kd_on else []) + [SOURCE_EVAL],
                **b.reads("train", "test"),
                label=f"L1 prune ({p.prune_strategy}) to {target:.1%} MACs + fine-tune"
                      + (" with KD (INT8 OpenVINO teacher)" if b.kd_on else "")
                      + (", epochs allocated after a pilot" if b.time_budget_s else ""))


def frontier_steps(b: Build, target: float, scan_steps: list[Step]) -> list[Step]:
    """One target of the frontier: the pruned model, its ONNX export and its INT8 copies."""
    tag, stem = target_tag(target), b.stem
    src, onnx = f"prune{tag}", f"pruned{tag}_onnx"
    return [
        prune_step(b, target, scan_steps),
        export_step(b, onnx, src, f"{stem}_pruned{tag}.onnx", fp16=False),
        quant_step(b, f"pruned{tag}_int8_ort_static", src, f"{stem}_pruned{tag}_int8_ort_static.onnx",
                   "static", "onnxruntime", onnx=onnx),
        quant_step(b, f"pruned{tag}_int8_torch_static", src, f"{stem}_pruned{tag}_int8_torch_static.pt2",
                   "static", "torch"),
        quant_step(b, f"pruned{tag}_int8_ov_static", src, f"{stem}_pruned{tag}_int8_ov_static.xml",
                   "static", "openvino", onnx=onnx),
    ]


# ----------------------------------------------------------------------------- distillation, engines

def _distill_settings(b: Build) -> dict:
    p = b.preset
    return {**b.trained_on, "epochs": p.distill_epochs, "batch": p.train_batch, "limit": p.distill_limit,
            "width": p.distill_width, "eval_limit": p.eval_limit, "seed": b.seed, "T": 4.0, "alpha": 0.9,
            "lr": p.distill_lr, "teacher": TEACHER_STEP, "teacher_backend": TEACHER_BACKEND, "curve": True,
            **b.allocation_key("distill")}


def _distill_run(b: Build, ctx: StepContext) -> Callable[[Path, int], dict]:
    """Return ``run(out, epochs) -> metrics``: distil the source into a fresh student for ``epochs``
    (the INT8 teacher's logits, learning curve) into ``out``, resuming a killed run; with its command."""
    from vggc.compress.distill import KDConfig, distill, work_files

    p = b.preset
    teacher = ctx.dep(TEACHER_STEP)

    def run(out: Path, epochs: int) -> dict:
        work = work_files(out)  # [checkpoint, its settings]: only the checkpoint means "resume"
        metrics = _resumable(lambda resume: distill(
            b.weights, b.data_s, out, b.train_cfg(epochs, p.distill_lr),
            KDConfig(temperature=4.0, alpha=0.9), width_mult=p.distill_width, limit=p.distill_limit,
            eval_limit=p.eval_limit, resume=resume, progress=b.progress, teacher_model=teacher,
            teacher_backend=TEACHER_BACKEND, reference=_read_json(ctx.dep(SOURCE_EVAL)), curve=True),
            work, checkpoints=work[:1], resumable=ctx.resumable)
        metrics["command"] = cmds.distill_cmd(
            b.weights_arg, ctx.shell(out), b.data_arg, epochs=epochs, lr=p.distill_lr, batch=p.train_batch,
            limit=p.distill_limit, eval_limit=p.eval_limit, width=p.distill_width, temperature=4.0, alpha=0.9,
            seed=b.seed, teacher_model=ctx.shell(teacher), teacher_backend=TEACHER_BACKEND, curve=True)
        return metrics

    return run


def _run_distill(b: Build, ctx: StepContext) -> dict:
    from vggc.pipeline.pilot import run_allocated

    run = _distill_run(b, ctx)
    if b.time_budget_s is None:
        return _step_metrics(run(ctx.output(), b.preset.distill_epochs))
    return _step_metrics(run_allocated(ctx, run, pilot_epochs=b.preset.distill_epochs, **_allocation_args(b, ctx),
                                       history=distill_history, earlier=lambda m: distill_history(m, restored=True),
                                       stopped=lambda m: None))


def distill_step(b: Build) -> Step:
    """Distil the source into a MobileNetV2 student (the INT8 OpenVINO teacher's logits); with a time
    budget its epochs are allocated after a pilot (:mod:`vggc.pipeline.allocate`)."""
    outputs = [f"{b.stem}_student_mbv2.pt"] + ([f"{b.stem}_student_mbv2_pilot.pt"] if b.time_budget_s else [])
    return Step("distill", outputs, lambda ctx: _run_distill(b, ctx), inputs=[b.weights],
                settings=_distill_settings(b), deps=[TEACHER_STEP, SOURCE_EVAL],
                label="distil into MobileNetV2 (INT8 OpenVINO teacher)"
                      + (", epochs allocated after a pilot" if b.time_budget_s else ""),
                **b.reads("train", "test"))


def student_steps(b: Build) -> list[Step]:
    """The student's FP32 ONNX export and its static INT8 copies on every CPU INT8 backend, each
    accuracy-aware with what is left of the budget after the student's own loss against the teacher
    (the unpruned model): outside the budget already, plain INT8 and its ``budget_note`` says so."""
    stem, src, onnx = b.stem, "distill", "student_onnx"
    return [
        export_step(b, onnx, src, f"{stem}_student_mbv2.onnx", fp16=False),
        quant_step(b, "student_int8_ort_static", src, f"{stem}_student_mbv2_int8_ort_static.onnx",
                   "static", "onnxruntime", onnx=onnx),
        quant_step(b, "student_int8_torch_static", src, f"{stem}_student_mbv2_int8_torch_static.pt2",
                   "static", "torch"),
        quant_step(b, "student_int8_ov_static", src, f"{stem}_student_mbv2_int8_ov_static.xml",
                   "static", "openvino", onnx=onnx),
    ]


def _run_engine(ctx: StepContext, src: str, precision: str) -> dict:
    from vggc.export.tensorrt import build_engine

    return build_engine(ctx.dep(src), ctx.output(), precision=precision) or {}


def _tensorrt_reason() -> str | None:
    from vggc.export.tensorrt import tensorrt_reason

    return tensorrt_reason()


def engine_step(name: str, src: str, out: str, precision: str) -> Step:
    """A TensorRT engine of ``src``'s ONNX file (unavailable without TensorRT and a GPU)."""
    return Step(name, [out], lambda ctx: _run_engine(ctx, src, precision), deps=[src],
                settings={"precision": precision}, available=_tensorrt_reason,
                label=f"TensorRT {precision.upper()} engine")


def build_steps(weights: str | os.PathLike, data: str | os.PathLike, preset: Preset, *, seed: int = 0, threads: int | None = None,
                progress: Progress = no_progress, max_drop_pt: float | None = None,
                time_budget_s: "float | None | str" = "preset") -> list[Step]:
    """Return the pipeline's steps for ``weights`` (a VGG16 state_dict) in dependency order.

    ``weights`` and ``data`` as the user gave them (the recorded rebuild commands repeat them).
    Each step names the data splits it reads (their fingerprints key it) and carries every setting
    chosen automatically in its resolved form (quantization's ``reduce_range``). ``threads`` is
    handed to the stages that open ONNX Runtime sessions (torch's count is set by the caller).
    ``max_drop_pt``: the top-1 budget (default 1 % of the unpruned model's) that the accuracy-aware
    INT8 steps and the early stop of pruned targets work to. ``time_budget_s``: the training budget
    (:mod:`vggc.pipeline.allocate`; default the preset's, ``None`` in ``quick``)."""
    b = Build(Path(weights), Path(data), preset, seed=seed, threads=threads, progress=progress,
              max_drop_pt=max_drop_pt, given=(os.fspath(weights), os.fspath(data)),
              time_budget_s=preset.time_budget_s if time_budget_s == "preset" else time_budget_s)
    stem = b.stem
    scan_steps = [scan_step(b)] if preset.prune_strategy == "sensitivity" else []
    frontier = [s for t in preset.targets() for s in frontier_steps(b, t, scan_steps)]
    return [
        source_eval_step(b),
        export_step(b, "onnx_fp32", None, f"{stem}.onnx", fp16=False),
        export_step(b, "onnx_fp16", None, f"{stem}_fp16.onnx", fp16=True),
        quant_step(b, "int8_ort_dynamic", None, f"{stem}_int8_ort_dynamic.onnx", "dynamic", "onnxruntime",
                   onnx="onnx_fp32"),
        quant_step(b, "int8_ort_static", None, f"{stem}_int8_ort_static.onnx", "static", "onnxruntime",
                   onnx="onnx_fp32"),
        quant_step(b, "int8_torch_dynamic", None, f"{stem}_int8_torch_dynamic.pt2", "dynamic", "torch"),
        quant_step(b, "int8_torch_static", None, f"{stem}_int8_torch_static.pt2", "static", "torch"),
        quant_step(b, TEACHER_STEP, None, f"{stem}_int8_ov_static.xml", "static", "openvino", onnx="onnx_fp32"),
        *scan_steps,
        *frontier,
        distill_step(b),
        *student_steps(b),
        engine_step("trt_fp16", "onnx_fp16", f"{stem}_fp16.engine", "fp16"),
        engine_step("trt_int8", "int8_ort_static", f"{stem}_int8.engine", "int8"),
    ]
