"""The pipeline's steps for one preset: :func:`build_steps` wires the stages' library functions.

The frontier (``Preset.targets()``): one pruned model per MAC target, each from one sensitivity
scan, fine-tuned with knowledge distillation from the unpruned model whose logits come from its
INT8 OpenVINO IR (the ``int8_ov_static`` step: ~4x cheaper than the bf16 PyTorch teacher here),
stopped early when after ``stop_after`` epochs it is already far outside the budget, then
exported and quantized on every CPU INT8 backend. Every static INT8 step is accuracy-aware: it gets
what is left of the budget after the model it quantizes (the whole budget for the unpruned model,
budget minus the pruning loss for a pruned one) and keeps the fewest sensitive layers in FP32 to
stay within it (``vggc quantize --max-drop``).

Step names carry the target in percent (``prune50``, ``pruned25_int8_ov_static``, ``prune12_5``);
:func:`family` maps them to the name without it (``prune``, ``pruned_int8_ov_static``: the names
of the single-target pipeline, still accepted by ``--only`` and ``Preset.skip``). Each step returns
its equivalent ``vggc`` command (:mod:`vggc.pipeline.commands`) in its metrics as ``command``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from vggc.compress.quantize_budget import TRIAL_BACKENDS, BudgetNotMetError
from vggc.errors import first_line
from vggc.pipeline import commands as cmds
from vggc.pipeline.presets import Preset
from vggc.pipeline.steps import Step, StepContext
from vggc.progress import Progress, no_progress

TEACHER_STEP = "int8_ov_static"  # the KD teacher of every pruned target and of the student
TEACHER_BACKEND = "openvino-cpu"
SOURCE_EVAL = "source_eval"  # top-1 of the unpruned model on the evaluation images: the budget's baseline


def _source_eval(ctx: StepContext) -> dict:
    """Return the source_eval step's result (``top1``, ``top1_source``, ``n``)."""
    from vggc.artifacts import read_json_object

    return read_json_object(ctx.dep(SOURCE_EVAL))
_TARGET_RE = re.compile(r"^(prune|pruned)(\d+(?:_\d+)?)(.*)$")


def target_tag(target: float) -> str:
    """Return a MAC target's tag in step and file names: 0.5 -> ``50``, 0.125 -> ``12_5``."""
    return f"{100 * target:g}".replace(".", "_")


def family(name: str) -> str:
    """Return a step name without its MAC target (``pruned25_onnx`` -> ``pruned_onnx``)."""
    m = _TARGET_RE.match(name)
    return f"{m.group(1)}{m.group(3)}" if m else name


def _train_cfg(epochs: int, seed: int, lr: float, batch_size: int = 128):
    from vggc.train import TrainConfig

    # a 0-epoch budget (prune without fine-tune) still needs a valid config; fit is not called then
    return TrainConfig(epochs=max(1, epochs), lr=lr, seed=seed, batch_size=batch_size)


def _resumable(run: Callable[[bool], dict], work: list[Path], checkpoints: list[Path] | None = None) -> dict:
    """Run a training step, continuing from the checkpoint a killed run left behind.

    When any of ``checkpoints`` (default: all of ``work``) exists, ``run(True)`` resumes from it;
    if it was made with other settings (a changed preset or seed) every ``work`` file is deleted
    and the step starts over with ``run(False)``. Returns what ``run`` returns.
    """
    from vggc.errors import StaleCheckpointError

    if any(p.is_file() for p in (work if checkpoints is None else checkpoints)):
        try:
            return run(True)
        except StaleCheckpointError:
            for p in work:
                p.unlink(missing_ok=True)
    return run(False)


def budget_left(source_meta: dict, max_drop_pt: float | None) -> float:
    """Return the points of top-1 an INT8 copy of a model may still lose: the budget (``max_drop_pt``,
    default 1 % of the unpruned model's top-1) minus what the model already lost against the
    unpruned one (its manifest's ``top1_source`` - ``top1``; 0 for the unpruned model itself).
    Negative when the model is already outside the budget."""
    from vggc.bench.baseline import default_max_drop_pt

    m = source_meta.get("metrics") or {}
    base, top1 = m.get("top1_source"), m.get("top1")
    if base is None or top1 is None:
        raise ValueError("the model's manifest has no top1/top1_source")
    budget = default_max_drop_pt(base) if max_drop_pt is None else float(max_drop_pt)
    return budget - 100.0 * (float(base) - float(top1))


def build_steps(weights: Path, data: Path, preset: Preset, *, seed: int = 0, threads: int | None = None,
                progress: Progress = no_progress, max_drop_pt: float | None = None) -> list[Step]:
    """Return the pipeline's steps for ``weights`` (a VGG16 state_dict) in dependency order.

    Each step names the data splits it reads (their fingerprints key it) and carries every setting
    chosen automatically in its resolved form (quantization's ``reduce_range``). ``threads`` is
    handed to the stages that open ONNX Runtime sessions (torch's count is set by the caller).
    ``max_drop_pt``: the top-1 budget (default 1 % of the unpruned model's) that the accuracy-aware
    INT8 steps and the early stop of pruned targets work to."""
    from vggc.compress.quantize import resolve_reduce_range

    stem = weights.stem
    data_s = str(data)
    reads = lambda *splits: {"data": data, "splits": splits}  # noqa: E731 - the splits a step reads
    budget_key = {"max_drop_pt": max_drop_pt}  # None: the default rule (1 % of the baseline)

    def export_step(name: str, src: str | None, out: str, fp16: bool) -> Step:
        def run(ctx: StepContext) -> dict:
            from vggc.export.job import export_file

            source = weights if src is None else ctx.dep(src)
            facts = export_file(str(source), str(ctx.output()), data=data_s, fp16=fp16,
                                parity_limit=preset.parity_limit, seed=seed, threads=threads, progress=progress)
            parity = facts.get("parity") or {}
            return {"precision": facts.get("precision"), "size_bytes": facts.get("size_bytes"),
                    **{k: v for k, v in parity.items() if isinstance(v, (int, float))},
                    "command": cmds.export_cmd(source, ctx.output(), data, fp16=fp16,
                                               parity_limit=preset.parity_limit, seed=seed)}

        return Step(name, [out], run, deps=[src] if src else [], inputs=[] if src else [weights],
                    settings={"fp16": fp16, "parity_limit": preset.parity_limit, "seed": seed},
                    label=f"ONNX {'FP16' if fp16 else 'FP32'} export", **reads("test"))  # parity on test images

    def quant_step(name: str, src: str | None, out: str, mode: str, backend: str) -> Step:
        reduce_range = resolve_reduce_range(None)  # auto, resolved on this CPU (VNNI or not)
        aware = mode == "static" and backend in TRIAL_BACKENDS  # accuracy-aware: keeps what is left of the budget
        settings = {"mode": mode, "backend": backend, "calib_size": preset.calib_size, "seed": seed,
                    "reduce_range": reduce_range,
                    **({**budget_key, "max_fp32_layers": preset.max_fp32_layers, "eval_limit": preset.eval_limit}
                       if aware else {})}

        def run(ctx: StepContext) -> dict:
            from vggc.artifacts import read_manifest
            from vggc.compress.quantize import quantize

            source = weights if src is None else ctx.dep(src)
            left = None
            if aware:  # the unpruned model's top-1 is the source_eval step's; a pruned one's is in its manifest
                meta = read_manifest(source) if src is not None else {"metrics": _source_eval(ctx)}
                left = budget_left(meta, max_drop_pt)
            extra: dict = {}
            if left is not None and left > 0:
                extra = {"max_drop": round(left, 4), "max_fp32_layers": preset.max_fp32_layers,
                         "evaluate": True, "eval_limit": preset.eval_limit}
            def run_quantize(options: dict) -> dict:
                return quantize(source, mode=mode, backend=backend, data=data_s, calib_size=preset.calib_size,
                                seed=seed, out=ctx.output(), threads=threads, progress=progress,
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
            facts["command"] = cmds.quantize_cmd(source, ctx.output(), data, mode=mode, backend=backend,
                                                 calib_size=preset.calib_size, seed=seed, reduce_range=reduce_range,
                                                 max_drop=extra.get("max_drop"),
                                                 max_fp32_layers=extra.get("max_fp32_layers"),
                                                 eval_limit=extra.get("eval_limit"))
            return facts

        # an OpenVINO IR is two files: the .xml (the model the bench opens) and its .bin
        outs = [out, str(Path(out).with_suffix(".bin"))] if backend == "openvino" else [out]
        return Step(name, outs, run, deps=[src or SOURCE_EVAL] if (src or aware) else [],
                    inputs=[] if src else [weights], settings=settings, label=f"{mode} INT8 ({'NNCF, OpenVINO IR' if backend == 'openvino' else backend})",
                    **reads(*(("train", "test") if aware else ("train",) if mode == "static" else ())))

    def source_eval_run(ctx: StepContext) -> dict:
        import torch

        from vggc.artifacts import write_json
        from vggc.data import limit_split, load_split
        from vggc.evaluate import evaluate
        from vggc.models import load_weights
        from vggc.runtime import preprocess_from_meta, read_manifest

        model = load_weights(weights).model.eval()
        pre = preprocess_from_meta(read_manifest(weights))
        test = limit_split(load_split(data_s, "test", progress=progress), preset.eval_limit, seed)
        with torch.inference_mode():
            res = evaluate(lambda x: model(x), test, pre, progress=progress)
        doc = {"top1": res.top1, "top1_source": res.top1, "n": res.n, "eval_limit": preset.eval_limit, "seed": seed}
        write_json(ctx.output(), doc)
        return doc

    def scan_run(ctx: StepContext) -> dict:
        from vggc.compress.sensitivity import scan_file

        table, _ = scan_file(weights, data_s, ctx.output().parent, scan_limit=preset.scan_limit, seed=seed,
                             progress=progress)
        return {"baseline_top1": table.baseline, "n": table.n, "max_drop": table.max_drop(),
                "command": cmds.scan_cmd(weights, ctx.output().parent, data, scan_limit=preset.scan_limit, seed=seed)}

    from vggc.train import resolve_device, resolve_precision

    # training runs with precision/device "auto": the key holds what they resolve to on this machine
    # (bf16 on CPUs with native bf16, fp32 elsewhere, fp16 on CUDA), which changes the trained weights
    device = resolve_device("auto")
    trained_on = {"train_device": device.type, "train_precision": resolve_precision("auto", device)}
    kd_on = preset.kd_alpha > 0 and preset.prune_finetune_epochs > 0
    stop_on = preset.stop_margin_pt is not None and preset.prune_finetune_epochs > preset.stop_after

    def prune_step(target: float, scan_steps: list[Step]) -> Step:
        tag = target_tag(target)

        def run(ctx: StepContext) -> dict:
            from vggc.bench.baseline import default_max_drop_pt
            from vggc.compress.bn_recalib import DEFAULT_IMAGES
            from vggc.compress.distill import KDConfig
            from vggc.compress.prune import PruneSpec, prune_file, work_files

            spec = PruneSpec(strategy=preset.prune_strategy, target_macs=target, round_to=8)
            scan = ctx.dep("prune_scan") if "prune_scan" in ctx.step.deps else None
            teacher = ctx.dep(TEACHER_STEP) if kd_on else None
            kd = KDConfig(temperature=preset.kd_temperature, alpha=preset.kd_alpha) if kd_on else None
            stop = None
            if stop_on:
                def stop(base: float) -> float:  # the budget + a margin for what the remaining epochs recover
                    budget = default_max_drop_pt(base) if max_drop_pt is None else float(max_drop_pt)
                    return budget + float(preset.stop_margin_pt)
            lr = 0.01
            metrics = _resumable(lambda resume: prune_file(
                weights, data_s, ctx.output(), spec, sensitivity=scan,
                train_cfg=_train_cfg(preset.prune_finetune_epochs, seed, lr, preset.train_batch),
                finetune_epochs=preset.prune_finetune_epochs, limit=preset.prune_limit,
                eval_limit=preset.eval_limit, seed=seed, resume=resume, progress=progress, kd=kd,
                teacher_model=teacher, teacher_backend=TEACHER_BACKEND if teacher else None,
                stop_drop_pt=stop, stop_after=preset.stop_after),
                work_files(ctx.output(), spec.steps))
            rule = metrics.get("stop_rule") or {}
            metrics["command"] = cmds.prune_cmd(
                weights, ctx.output(), data, strategy=preset.prune_strategy, target=target, scan=scan,
                epochs=preset.prune_finetune_epochs, lr=lr, batch=preset.train_batch, limit=preset.prune_limit,
                eval_limit=preset.eval_limit, seed=seed, kd_alpha=preset.kd_alpha if kd_on else 0.0,
                kd_temperature=preset.kd_temperature, teacher_model=teacher,
                teacher_backend=TEACHER_BACKEND if teacher else None, stop_drop=rule.get("max_drop_pt"),
                stop_after=preset.stop_after, bn_recalib=DEFAULT_IMAGES)
            return {k: v for k, v in metrics.items()
                    if not isinstance(v, (list, dict)) or k in ("teacher_model", "stop_rule")}

        ft = {**trained_on, "strategy": preset.prune_strategy, "epochs": preset.prune_finetune_epochs,
              "batch": preset.train_batch, "limit": preset.prune_limit, "target": target,
              "eval_limit": preset.eval_limit, "seed": seed,
              "kd": {"alpha": preset.kd_alpha, "T": preset.kd_temperature, "teacher": TEACHER_STEP,
                     "teacher_backend": TEACHER_BACKEND} if kd_on else None,
              "stop": {"margin_pt": preset.stop_margin_pt, "after": preset.stop_after, **budget_key}
              if stop_on else None}
        return Step(f"prune{tag}", [f"{stem}_pruned{tag}.pt"], run, inputs=[weights], settings=ft,
                    deps=[s.name for s in scan_steps] + ([TEACHER_STEP] if kd_on else []), **reads("train", "test"),
                    label=f"L1 prune ({preset.prune_strategy}) to {target:.1%} MACs + fine-tune"
                          + (" with KD (INT8 OpenVINO teacher)" if kd_on else ""))

    def distill_run(ctx: StepContext) -> dict:
        from vggc.compress.distill import KDConfig, distill, work_files

        teacher = ctx.dep(TEACHER_STEP)
        work = work_files(ctx.output())  # [checkpoint, its settings]: only the checkpoint means "resume"
        metrics = _resumable(lambda resume: distill(
            weights, data_s, ctx.output(), _train_cfg(preset.distill_epochs, seed, preset.distill_lr, preset.train_batch),
            KDConfig(temperature=4.0, alpha=0.9), width_mult=preset.distill_width,
            limit=preset.distill_limit, eval_limit=preset.eval_limit, resume=resume, progress=progress,
            teacher_model=teacher, teacher_backend=TEACHER_BACKEND),
            work, checkpoints=work[:1])
        metrics["command"] = cmds.distill_cmd(
            weights, ctx.output(), data, epochs=preset.distill_epochs, lr=preset.distill_lr, batch=preset.train_batch,
            limit=preset.distill_limit, eval_limit=preset.eval_limit, width=preset.distill_width, temperature=4.0,
            alpha=0.9, seed=seed, teacher_model=teacher, teacher_backend=TEACHER_BACKEND)
        return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict)) or k == "teacher_model"}

    def engine_step(name: str, src: str, out: str, precision: str) -> Step:
        def run(ctx: StepContext) -> dict:
            from vggc.export.tensorrt import build_engine

            return build_engine(ctx.dep(src), ctx.output(), precision=precision) or {}

        def available() -> str | None:
            from vggc.export.tensorrt import tensorrt_reason

            return tensorrt_reason()

        return Step(name, [out], run, deps=[src], settings={"precision": precision}, available=available,
                    label=f"TensorRT {precision.upper()} engine")

    scan_steps = []
    if preset.prune_strategy == "sensitivity":
        scan_steps.append(Step("prune_scan", ["prune_scan/sensitivity.csv.json", "prune_scan/sensitivity.csv",
                                              "prune_scan/sensitivity.png"], scan_run, inputs=[weights],
                               settings={"scan_limit": preset.scan_limit, "seed": seed}, model=False, **reads("train"),
                               label=f"per-layer pruning sensitivity on {preset.scan_limit} training images"))
    kd = {**trained_on, "epochs": preset.distill_epochs, "batch": preset.train_batch, "limit": preset.distill_limit,
          "width": preset.distill_width, "eval_limit": preset.eval_limit, "seed": seed, "T": 4.0, "alpha": 0.9,
          "lr": preset.distill_lr, "teacher": TEACHER_STEP, "teacher_backend": TEACHER_BACKEND}
    frontier: list[Step] = []
    for t in preset.targets():
        tag = target_tag(t)
        frontier += [
            prune_step(t, scan_steps),
            export_step(f"pruned{tag}_onnx", f"prune{tag}", f"{stem}_pruned{tag}.onnx", fp16=False),
            quant_step(f"pruned{tag}_int8_ort_static", f"prune{tag}", f"{stem}_pruned{tag}_int8_ort_static.onnx",
                       "static", "onnxruntime"),
            quant_step(f"pruned{tag}_int8_torch_static", f"prune{tag}", f"{stem}_pruned{tag}_int8_torch_static.pt2",
                       "static", "torch"),
            quant_step(f"pruned{tag}_int8_ov_static", f"prune{tag}", f"{stem}_pruned{tag}_int8_ov_static.xml",
                       "static", "openvino"),
        ]
    return [
        Step(SOURCE_EVAL, [f"{SOURCE_EVAL}.json"], source_eval_run, inputs=[weights], model=False,
             settings={"eval_limit": preset.eval_limit, "seed": seed}, **reads("test"),
             label="top-1 of the unpruned model on the evaluation images (the budget's baseline)"),
        export_step("onnx_fp32", None, f"{stem}.onnx", fp16=False),
        export_step("onnx_fp16", None, f"{stem}_fp16.onnx", fp16=True),
        quant_step("int8_ort_dynamic", None, f"{stem}_int8_ort_dynamic.onnx", "dynamic", "onnxruntime"),
        quant_step("int8_ort_static", None, f"{stem}_int8_ort_static.onnx", "static", "onnxruntime"),
        quant_step("int8_torch_dynamic", None, f"{stem}_int8_torch_dynamic.pt2", "dynamic", "torch"),
        quant_step("int8_torch_static", None, f"{stem}_int8_torch_static.pt2", "static", "torch"),
        quant_step(TEACHER_STEP, None, f"{stem}_int8_ov_static.xml", "static", "openvino"),
        *scan_steps,
        *frontier,
        Step("distill", [f"{stem}_student_mbv2.pt"], distill_run, inputs=[weights], settings=kd, deps=[TEACHER_STEP],
             label="distil into MobileNetV2 (INT8 OpenVINO teacher)", **reads("train", "test")),
        export_step("student_onnx", "distill", f"{stem}_student_mbv2.onnx", fp16=False),
        engine_step("trt_fp16", "onnx_fp16", f"{stem}_fp16.engine", "fp16"),
        engine_step("trt_int8", "int8_ort_static", f"{stem}_int8.engine", "int8"),
    ]
