"""The main job: one state_dict in, every variant built and measured, one comparison table out.

``run_pipeline(weights, data, preset=...)`` chains the stages (export, quantize, prune, distill,
engines, bench) as cached :class:`~vggc.pipeline.steps.Step`\\ s under ``out_dir``. Each stage is
the same library function its command calls; the pipeline only wires files between them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from vggc.errors import InputError
from vggc.pipeline.steps import Step, StepContext, StepResult, claim_out_dir, run_steps
from vggc.progress import Progress, no_progress


@dataclass(frozen=True)
class Preset:
    """Budgets for one pipeline run. ``bench_limit=None`` means all 10,000 test images."""

    name: str
    parity_limit: int | None
    calib_size: int
    prune_target_macs: float
    prune_finetune_epochs: int
    prune_limit: int | None
    distill_epochs: int
    distill_limit: int | None
    distill_width: float
    eval_limit: int | None
    bench_quick: bool
    bench_limit: int | None = None
    bench_batch: int = 64
    train_batch: int = 128
    prune_strategy: str = "uniform"  # sensitivity adds a cached per-layer scan step first
    distill_lr: float = 0.05  # OneCycle peak learning rate of the student
    scan_limit: int = 1000
    skip: tuple[str, ...] = ()  # steps left out of this preset (their rows say so)


PRESETS = {
    # ~10 minutes on a 2-core CPU: every stage runs, training stages on small budgets (their
    # accuracy is labelled as such; use --preset full for real numbers).
    # Its training budgets are spent where they show the method rather than chance: BatchNorm
    # statistics re-estimated after pruning (no training) plus 1 epoch on 5,000 images for the
    # pruned model; 2 epochs on 5,000 images for the student (~85 % and ~37 % on the quick subset).
    "quick": Preset("quick", parity_limit=256, calib_size=128, prune_target_macs=0.5, prune_finetune_epochs=1,
                    prune_limit=5000, distill_epochs=2, distill_limit=5000, distill_width=1.0, eval_limit=500,
                    distill_lr=0.1,
                    bench_quick=True, bench_limit=1000,
                    # each torch.compile'd INT8 program costs ~1 min of compile time in the bench
                    skip=("int8_torch_dynamic", "pruned_int8_torch_static", "pruned_int8_ov_static")),
    # Real budgets, sized for a 2-core CPU (about 4 hours: prune fine-tune ~70 min, distillation
    # ~2.3 h, bench on all 10,000 test images); a CUDA machine trains the same steps in minutes.
    # Every training step checkpoints each epoch (and every 10 minutes within one), so a killed run
    # resumes where it stopped.
    "full": Preset("full", parity_limit=None, calib_size=1000, prune_target_macs=0.5, prune_finetune_epochs=5,
                   prune_limit=None, distill_epochs=5, distill_limit=None, distill_width=1.0, eval_limit=None,
                   bench_quick=False, prune_strategy="sensitivity", scan_limit=1000),
}


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


def build_steps(weights: Path, data: Path, preset: Preset, *, seed: int = 0, threads: int | None = None,
                progress: Progress = no_progress) -> list[Step]:
    """Return the pipeline's steps for ``weights`` (a VGG16 state_dict) in dependency order.

    Each step names the data splits it reads (their fingerprints key it) and carries every setting
    chosen automatically in its resolved form (quantization's ``reduce_range``). ``threads`` is
    handed to the stages that open ONNX Runtime sessions (torch's count is set by the caller)."""
    from vggc.compress.quantize import resolve_reduce_range

    stem = weights.stem
    data_s = str(data)
    reads = lambda *splits: {"data": data, "splits": splits}  # noqa: E731 - the splits a step reads

    def export_step(name: str, src: str | None, out: str, fp16: bool) -> Step:
        def run(ctx: StepContext) -> dict:
            from vggc.export.job import export_file

            source = str(weights if src is None else ctx.dep(src))
            facts = export_file(source, str(ctx.output()), data=data_s, fp16=fp16,
                                parity_limit=preset.parity_limit, seed=seed, threads=threads, progress=progress)
            parity = facts.get("parity") or {}
            return {"precision": facts.get("precision"), "size_bytes": facts.get("size_bytes"),
                    **{k: v for k, v in parity.items() if isinstance(v, (int, float))}}

        return Step(name, [out], run, deps=[src] if src else [], inputs=[] if src else [weights],
                    settings={"fp16": fp16, "parity_limit": preset.parity_limit, "seed": seed},
                    label=f"ONNX {'FP16' if fp16 else 'FP32'} export", **reads("test"))  # parity on test images

    def quant_step(name: str, src: str | None, out: str, mode: str, backend: str) -> Step:
        reduce_range = resolve_reduce_range(None)  # auto, resolved on this CPU (VNNI or not)
        settings = {"mode": mode, "backend": backend, "calib_size": preset.calib_size, "seed": seed,
                    "reduce_range": reduce_range}

        def run(ctx: StepContext) -> dict:
            from vggc.compress.quantize import quantize

            source = weights if src is None else ctx.dep(src)
            # accuracy of the INT8 file is measured once, by the bench step, on the same images as every row
            res = quantize(source, mode=mode, backend=backend, data=data_s, calib_size=preset.calib_size,
                           seed=seed, out=ctx.output(), evaluate=False, threads=threads,
                           progress=progress)  # reduce_range auto: the manifest says so; the key has its value
            return {k: v for k, v in (res or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}

        # an OpenVINO IR is two files: the .xml (the model the bench opens) and its .bin
        outs = [out, str(Path(out).with_suffix(".bin"))] if backend == "openvino" else [out]
        return Step(name, outs, run, deps=[src] if src else [], inputs=[] if src else [weights],
                    settings=settings, label=f"{mode} INT8 ({'NNCF, OpenVINO IR' if backend == 'openvino' else backend})",
                    **reads(*(("train",) if mode == "static" else ())))  # calibration images

    def prune_run(ctx: StepContext) -> dict:
        from vggc.compress.prune import PruneSpec, prune_file, work_files

        spec = PruneSpec(strategy=preset.prune_strategy, target_macs=preset.prune_target_macs, round_to=8)
        scan = ctx.dep("prune_scan") if "prune_scan" in ctx.step.deps else None
        return _resumable(lambda resume: prune_file(
            weights, data_s, ctx.output(), spec, sensitivity=scan,
            train_cfg=_train_cfg(preset.prune_finetune_epochs, seed, 0.01, preset.train_batch),
            finetune_epochs=preset.prune_finetune_epochs, limit=preset.prune_limit,
            eval_limit=preset.eval_limit, seed=seed, resume=resume, progress=progress),
            work_files(ctx.output(), spec.steps))

    def scan_run(ctx: StepContext) -> dict:
        from vggc.compress.sensitivity import scan_file

        table, _ = scan_file(weights, data_s, ctx.output().parent, scan_limit=preset.scan_limit, seed=seed,
                             progress=progress)
        return {"baseline_top1": table.baseline, "n": table.n, "max_drop": table.max_drop()}

    def distill_run(ctx: StepContext) -> dict:
        from vggc.compress.distill import KDConfig, distill, work_files

        work = work_files(ctx.output())  # [checkpoint, its settings]: only the checkpoint means "resume"
        return _resumable(lambda resume: distill(
            weights, data_s, ctx.output(), _train_cfg(preset.distill_epochs, seed, preset.distill_lr, preset.train_batch),
            KDConfig(temperature=4.0, alpha=0.9), width_mult=preset.distill_width,
            limit=preset.distill_limit, eval_limit=preset.eval_limit, resume=resume, progress=progress),
            work, checkpoints=work[:1])

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
    from vggc.train import resolve_device, resolve_precision

    # training runs with precision/device "auto": the key holds what they resolve to on this machine
    # (bf16 on CPUs with native bf16, fp32 elsewhere, fp16 on CUDA), which changes the trained weights
    device = resolve_device("auto")
    trained_on = {"train_device": device.type, "train_precision": resolve_precision("auto", device)}
    ft = {**trained_on, "strategy": preset.prune_strategy, "epochs": preset.prune_finetune_epochs, "batch": preset.train_batch, "limit": preset.prune_limit, "target": preset.prune_target_macs,
          "eval_limit": preset.eval_limit, "seed": seed}
    kd = {**trained_on, "epochs": preset.distill_epochs, "batch": preset.train_batch, "limit": preset.distill_limit, "width": preset.distill_width,
          "eval_limit": preset.eval_limit, "seed": seed, "T": 4.0, "alpha": 0.9, "lr": preset.distill_lr}
    return [
        export_step("onnx_fp32", None, f"{stem}.onnx", fp16=False),
        export_step("onnx_fp16", None, f"{stem}_fp16.onnx", fp16=True),
        quant_step("int8_ort_dynamic", None, f"{stem}_int8_ort_dynamic.onnx", "dynamic", "onnxruntime"),
        quant_step("int8_ort_static", None, f"{stem}_int8_ort_static.onnx", "static", "onnxruntime"),
        quant_step("int8_torch_dynamic", None, f"{stem}_int8_torch_dynamic.pt2", "dynamic", "torch"),
        quant_step("int8_torch_static", None, f"{stem}_int8_torch_static.pt2", "static", "torch"),
        quant_step("int8_ov_static", None, f"{stem}_int8_ov_static.xml", "static", "openvino"),
        *scan_steps,
        Step("prune", [f"{stem}_pruned.pt"], prune_run, inputs=[weights], settings=ft,
             deps=[s.name for s in scan_steps], **reads("train", "test"),
             label=f"L1 prune ({preset.prune_strategy}) to {preset.prune_target_macs:.0%} MACs + fine-tune"),
        export_step("pruned_onnx", "prune", f"{stem}_pruned.onnx", fp16=False),
        quant_step("pruned_int8_ort_static", "prune", f"{stem}_pruned_int8_ort_static.onnx", "static", "onnxruntime"),
        quant_step("pruned_int8_torch_static", "prune", f"{stem}_pruned_int8_torch_static.pt2", "static", "torch"),
        quant_step("pruned_int8_ov_static", "prune", f"{stem}_pruned_int8_ov_static.xml", "static", "openvino"),
        Step("distill", [f"{stem}_student_mbv2.pt"], distill_run, inputs=[weights], settings=kd,
             label="distil into MobileNetV2", **reads("train", "test")),
        export_step("student_onnx", "distill", f"{stem}_student_mbv2.onnx", fp16=False),
        engine_step("trt_fp16", "onnx_fp16", f"{stem}_fp16.engine", "fp16"),
        engine_step("trt_int8", "int8_ort_static", f"{stem}_int8.engine", "int8"),
    ]


def _unavailable_row(step: Step, result: StepResult, batch: int) -> dict:
    """A bench row for a variant whose step did not produce a file (Ultralytics-style)."""
    fmt = {".onnx": "onnx", ".pt2": "pt2", ".pt": "state_dict", ".engine": "tensorrt-engine", ".xml": "openvino-ir"}
    suffix = Path(step.outputs[0]).suffix
    backend = {"tensorrt-engine": "tensorrt", "openvino-ir": "openvino-cpu"}.get(fmt.get(suffix, ""), "-")
    return {"model": Path(step.outputs[0]).name, "path": "", "format": fmt.get(suffix), "backend": backend,
            "precision": step.settings.get("precision") or ("int8" if "int8" in step.name else "-"),
            "status": result.status.removeprefix("unavailable: "), "top1": None, "delta_pt": None, "latency_p50_ms": None,
            "latency_p90_ms": None, "throughput": None, "speedup": None, "batch": batch, "size_mb": None,
            "params": None, "macs": None, "note": f"pipeline step {step.name}"}


def run_pipeline(weights: str | os.PathLike, data: str | os.PathLike, *, preset: str = "quick",
                 out_dir: str | os.PathLike | None = None, seed: int = 0, force: bool = False,
                 only: list[str] | None = None, threads: int | None = None, progress: Progress = no_progress,
                 log: Callable[[str], None] = lambda _m: None, max_drop_pt: float | None = None) -> dict:
    """Run every stage on ``weights`` and bench the results; return a summary dict.

    ``threads`` (default: all cores) is the CPU thread count of every step, the bench included;
    it keys the bench's timings (another count re-times the bench, nothing else reruns).
    The summary holds ``steps`` (name, status, seconds, ``why`` it ran or was reused and the
    ``key_inputs`` it was keyed on), ``rows`` (the bench rows, including a row for each variant
    that could not be built), ``report`` (path of report.md), ``threads`` and timings.
    ``max_drop_pt``: the bench's top-1 budget (``vggc bench --max-drop``; default 1 % of the baseline's).
    """
    import torch

    from vggc.data import detect_layout
    from vggc.models import load_weights

    if preset not in PRESETS:
        raise InputError(f"--preset {preset}: use one of {', '.join(PRESETS)}")
    weights, data = Path(weights), Path(data)
    detect_layout(data)
    load_weights(weights)  # fail fast, one line, on a bad weights file
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    n_threads = int(threads or os.cpu_count() or 1)
    p = PRESETS[preset]
    out = Path(out_dir) if out_dir else Path("artifacts") / f"{weights.stem}-{preset}"
    steps = build_steps(weights, data, p, seed=seed, threads=n_threads, progress=progress)
    if only:
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise InputError(f"--only {', '.join(unknown)}: unknown step; steps are "
                             f"{', '.join(s.name for s in steps)}")
        keep = set(only)
        changed = True
        while changed:  # pull in dependencies
            changed = False
            for s in steps:
                if s.name in keep and not set(s.deps) <= keep:
                    keep |= set(s.deps)
                    changed = True
        steps = [s for s in steps if s.name in keep]
    skipped = [s for s in steps if s.name in p.skip and not (only and s.name in only)]
    steps = [s for s in steps if s not in skipped]
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        return _run(weights, data, p, preset, out, steps, skipped, seed=seed, force=force, threads=n_threads,
                    progress=progress, log=log, max_drop_pt=max_drop_pt)
    finally:
        torch.set_num_threads(prev_threads)


def _run(weights: Path, data: Path, p: Preset, preset: str, out: Path, steps: list[Step], skipped: list[Step], *,
         seed: int, force: bool, threads: int, progress: Progress, log: Callable[[str], None],
         max_drop_pt: float | None = None) -> dict:
    """Run the steps and the bench under ``out`` (see :func:`run_pipeline`); return the summary."""
    from vggc import provenance
    from vggc.artifacts import sha256_file, write_json
    from vggc.bench.core import run_bench
    from vggc.bench.report import write_outputs
    from vggc.bench.timing import timing_policy

    with claim_out_dir(out) as stale:
        if stale:
            log(f"-- removed {len(stale)} temporary file(s) left by an interrupted run")
        t0 = time.perf_counter()
        results = run_steps(steps, out, force=force, log=log)
        for s in skipped:
            steps.append(s)
            results.append(StepResult(s.name, f"skipped: not in the {p.name} preset (use --preset full or --only)"))

        # The bench is a step too: keyed by every model file it measures, its settings, the test split
        # and the timing environment (CPU, kernel flags, threads, libraries): another machine or thread
        # count re-times it (the bench's own accuracy cache keeps the accuracies that still hold).
        models = [weights] + [out / s.outputs[0] for s, r in zip(steps, results) if r.ok and s.model]
        bench_dir = out / "bench"
        bench_settings = {"quick": p.bench_quick, "limit": p.bench_limit, "batch": p.bench_batch,
                          "timing": timing_policy(quick=p.bench_quick).to_dict(),
                          "models": [m.name for m in models],
                          "failed": {s.name: r.status for s, r in zip(steps, results) if not r.ok},
                          **({"max_drop_pt": max_drop_pt} if max_drop_pt is not None else {})}

        def bench_run(ctx: StepContext) -> dict:
            rows = run_bench(models, data, batch=p.bench_batch, quick=p.bench_quick, limit=p.bench_limit, baseline=weights,
                             threads=threads, out=bench_dir, progress=progress, log=log, max_drop_pt=max_drop_pt,
                             command=f"vggc pipeline {weights} --data {data} --preset {preset} --threads {threads}")
            extra = [_unavailable_row(s, r, p.bench_batch) for s, r in zip(steps, results) if not r.ok and s.model]
            if extra:
                rows.extend(extra)
                write_outputs(rows, bench_dir, plot=True)
            return {"rows": len(rows), "ok": sum(r.get("status") == "ok" for r in rows)}

        bench_step = Step("bench", ["bench/results.json", "bench/report.md"], bench_run, inputs=models,
                          settings=bench_settings, label=f"bench {len(models)} model files", data=data, splits=("test",),
                          environment=lambda: provenance.timing_environment(threads))
        bench_result = run_steps([bench_step], out, force=force, log=log)[0]
        results.append(bench_result)
        rows = json.loads((bench_dir / "results.json").read_text()) if bench_result.ok else []
        summary = {
            "weights": str(weights), "weights_sha256": sha256_file(weights), "data": str(data),
            "preset": asdict(p), "seed": seed, "threads": threads, "out": str(out),
            "steps": [r.to_dict() for r in results],
            "step_seconds": round(sum(r.seconds for r in results), 2),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "report": str(bench_dir / "report.md"), "rows": rows,
        }
        write_json(out / "pipeline.json", {k: v for k, v in summary.items() if k != "rows"})
        return summary


__all__ = ["PRESETS", "Preset", "build_steps", "run_pipeline"]
