"""The shared core of INT8 post-training quantization: :func:`quantize`, the one entry point
(``vggc quantize`` and the pipeline call it), and the checks that need no backend.

What a backend does (and its suffix, companion files, evaluation and trial backends, default
calibration) comes from its :class:`vggc.formats.Format` record and its module
(:mod:`vggc.compress.quantize.backend`); see :mod:`vggc.compress.quantize` for what each backend writes.

The output is written atomically; its manifest ``<out>.json`` records the source's SHA-256, the
mode/backend/calibration settings, the calibration indices' hash, per-channel and reduce-range, the
number of quantized layers, sizes, and (when test data is given) the top-1 of the INT8 file and of
the FP32 source on the same test images. Anything that fails leaves nothing at ``out``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch

from vggc import formats
from vggc.artifacts import atomic_path, manifest_path, sha256_file, write_manifest_or_remove
from vggc.compress.quantize.backend import QuantJob
from vggc.compress.quantize.budget import budget_search, check_budget_settings, final_budget_note
from vggc.compress.quantize.calibration import calibration_batches
from vggc.cpu import has_vnni
from vggc.errors import InputError
from vggc.limits import CALIB_METHODS
from vggc.progress import Progress, no_progress

MODES = ("dynamic", "static")
BACKENDS = formats.QuantizeView("quantize")  # live views of the format table (vggc.formats)
SUFFIXES = formats.QuantizeView("suffix")
DEFAULT_CALIB_METHOD = formats.QuantizeView("default_calib")
EVAL_BACKENDS = formats.QuantizeView("eval_backends")


def dynamic_note(model, input_size: int) -> str:
    """The plain statement of what dynamic mode leaves alone, with this model's numbers."""
    from torch import nn

    from vggc.models import count_macs

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    conv_w = sum(m.weight.numel() for m in convs)
    all_w = conv_w + sum(m.weight.numel() for m in lin)
    lin_macs = sum(m.in_features * m.out_features for m in lin)
    macs = count_macs(model, input_size)
    return (f"dynamic quantization touches only Linear layers: the {len(convs)} convolutions "
            f"({100 * (macs - lin_macs) / macs:.1f}% of the MACs, {100 * conv_w / all_w:.1f}% of the weights) "
            "stay FP32, so size and speed barely change")


def resolve_reduce_range(reduce_range: bool | None) -> bool:
    """``None`` (auto): 7-bit range on CPUs without VNNI, where int8 dot products can saturate."""
    return (not has_vnni()) if reduce_range is None else bool(reduce_range)


def check_settings(*, mode: str, backend: str, out, data, calib_size: int, calib_method: str | None,
                   per_channel: bool, opset: int | None, weights=None, preset: str = "performance",
                   fp32_onnx=None) -> str:
    """Validate the options that need no data; return the calibration method to use. One-line
    :class:`InputError` for every bad combination (the CLI calls this before any heavy work). The
    backend's own options are checked by its module's ``check`` (:mod:`vggc.compress.quantize.backend`)."""
    if mode not in MODES:
        raise InputError(f"--mode {mode}: choose dynamic or static")
    fmt = formats.quantize_format(backend)
    fmt.impl().check(mode=mode, calib_method=calib_method, per_channel=per_channel, preset=preset)
    method = calib_method or fmt.default_calib
    if method not in CALIB_METHODS and fmt.default_calib in CALIB_METHODS:
        raise InputError(f"--calib-method {method}: choose minmax, entropy or percentile")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if out.suffix.lower() not in fmt.suffixes:
        raise InputError(f"--out {out}: --backend {backend} writes a {fmt.suffix} file "
                         f"(got '{out.suffix or 'no suffix'}')")
    if weights is not None and Path(weights).exists() and out.exists() and out.resolve() == Path(weights).resolve():
        raise InputError(f"--out {out}: would overwrite the input weights")
    if mode == "static" and not data:
        raise InputError("--mode static needs calibration images: pass --data DIR (or set VGGC_DATA)")
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise InputError(f"--calib-size {calib_size}: must be at least 1")
    if opset is not None:
        if not fmt.takes_opset:
            takers = [f.quantize for f in formats.formats() if f.quantize and f.takes_opset]
            raise InputError(f"--opset applies to --backend {'/'.join(takers)} only")
        from vggc.export.onnx import check_opset

        check_opset(opset)
    if fp32_onnx is not None:
        if not fmt.reads_fp32_onnx:
            readers = [f.quantize for f in formats.formats() if f.quantize and f.reads_fp32_onnx]
            raise InputError(f"--fp32-onnx applies to --backend {'/'.join(readers)} (--backend {backend} "
                             "quantizes the state_dict)")
        if not Path(fp32_onnx).is_file():
            raise InputError(f"--fp32-onnx {fp32_onnx}: no such file")
    return method


def _test_split(data, eval_limit, seed, progress):
    """Return the evaluation images: the test split's class-balanced ``eval_limit`` subset (``seed``)."""
    from vggc.data import limit_split, load_split

    return limit_split(load_split(data, "test", progress=progress), eval_limit, seed)


def _evaluate_runner(runner, split, preprocess, batch_size, progress):
    """Return ``runner``'s :class:`~vggc.evaluate.EvalResult` on ``split``; the runner is closed after."""
    from vggc.evaluate import evaluate

    try:
        return evaluate(runner.predict, split, preprocess, batch_size=batch_size, progress=progress)
    finally:
        runner.close()


def _evaluate_source(model, data, preprocess, eval_limit, seed, batch_size, progress):
    """Return the FP32 source's :class:`~vggc.evaluate.EvalResult` on the evaluation images (only when
    no ``reference`` was given); counted as one ``fp32_source_eval`` of that set (:mod:`vggc.work`)."""
    from vggc import work
    from vggc.reference import split_digest
    from vggc.runtime import TorchRunner

    split = _test_split(data, eval_limit, seed, progress)
    res = _evaluate_runner(TorchRunner(copy.deepcopy(model), "cpu", None, None), split, preprocess, batch_size,
                           progress)
    work.count("fp32_source_eval", key=split_digest(split))
    return res


def check_fp32_onnx(fp32_onnx, *, source_sha: str, preprocess, opset: int | None) -> dict:
    """Check that ``fp32_onnx`` is vggc's FP32 ONNX export of the same weights (its manifest
    ``<file>.json``: source SHA-256, FP32, preprocess, and ``opset`` when one was asked); return
    ``{"path", "name", "sha256", "opset", "size_bytes"}``. One-line :class:`InputError` otherwise."""
    from vggc.artifacts import read_json_object

    path = Path(fp32_onnx)
    what = f"--fp32-onnx {path}"
    if not path.is_file():
        raise InputError(f"{what}: no such file")
    if path.suffix.lower() not in formats.get("onnx").suffixes:
        raise InputError(f"{what}: expected an .onnx file")
    man_file = manifest_path(path)
    if not man_file.is_file():
        raise InputError(f"{what}: no manifest {man_file.name} beside it (pass a file written by vggc export)")
    man = read_json_object(man_file, "manifest JSON")
    sha = sha256_file(path)
    if man.get("kind") != "onnx" or man.get("sha256") != sha:
        raise InputError(f"{what}: its manifest {man_file.name} does not describe this file (stale or not vggc export's)")
    got_source = ((man.get("inputs") or {}).get("source") or {}).get("sha256")
    if got_source != source_sha:
        raise InputError(f"{what}: exported from other weights (source sha256 {str(got_source)[:12]}, "
                         f"weights {source_sha[:12]})")
    if man.get("precision") != "fp32":
        raise InputError(f"{what}: precision {man.get('precision')}, expected fp32")
    if man.get("preprocess") != preprocess.to_dict():
        raise InputError(f"{what}: exported with other preprocessing (mean/std/input size) than this quantization's")
    file_opset = man.get("opset")
    if opset is not None and file_opset != opset:
        raise InputError(f"{what}: opset {file_opset}, but --opset {opset} was asked")
    return {"path": str(path), "name": path.name, "sha256": sha, "opset": file_opset, "size_bytes": path.stat().st_size}


def check_reference(reference: dict, *, data, eval_limit: int | None, seed: int, progress: Progress = no_progress
                    ) -> float:
    """Check that ``reference`` (the FP32 source's ``top1``, ``n``, ``eval_limit``, ``seed`` on the
    evaluation images, computed elsewhere) was measured on this quantization's evaluation images;
    return its ``top1``. One-line :class:`InputError` otherwise."""
    from vggc.data import limit_split, load_split

    if not isinstance(reference, dict) or not {"top1", "n", "eval_limit", "seed"} <= set(reference):
        raise InputError("reference: needs top1, n, eval_limit and seed (the FP32 source on the evaluation images)")
    if reference["eval_limit"] != eval_limit or reference["seed"] != seed:
        raise InputError(f"reference: measured with eval_limit {reference['eval_limit']}, seed {reference['seed']}; "
                         f"this quantization evaluates with eval_limit {eval_limit}, seed {seed}")
    n = len(limit_split(load_split(data, "test", progress=progress), eval_limit, seed))
    if reference["n"] != n:
        raise InputError(f"reference: measured on {reference['n']} images, the evaluation split has {n}")
    top1 = reference["top1"]
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 1:
        raise InputError(f"reference: top1 {top1!r} is not a fraction in 0..1")
    return float(top1)


class _Fp32Top1:
    """The FP32 source's top-1 on the evaluation images: ``reference``'s when given, else measured
    once (on first use) and kept."""

    def __init__(self, reference_top1: float | None, measure):
        self._top1, self._measure = reference_top1, measure

    def __call__(self) -> float:
        if self._top1 is None:
            self._top1 = self._measure().top1
        return self._top1


def quantize(weights, *, mode: str, backend: str, out, data=None, calib_size: int = 1000,
             calib_method: str | None = None, per_channel: bool = True, seed: int = 0,
             reduce_range: bool | None = None, opset: int | None = None, eval_limit: int | None = None,
             evaluate: bool = True, eval_batch_size: int = 256, percentile: float = 99.999,
             threads: int | None = None, mean=None, std=None, input_size=None, eval_backend: str | None = None,
             preset: str = "performance", fast_bias_correction: bool = True,
             max_drop: float | None = None, max_fp32_layers: int | None = None,
             fp32_onnx: str | Path | None = None, reference: dict | None = None,
             progress: Progress = no_progress) -> dict:
    """Quantize the state_dict ``weights`` to INT8 and write ``out`` (+ ``out.json``); return the facts.

    ``mode``: ``static`` (calibrated activations; needs ``data``) or ``dynamic`` (Linear layers only).
    ``backend``: a ``vggc quantize --backend`` name of :mod:`vggc.formats` (``onnxruntime`` -> ``.onnx``,
    ``torch`` -> ``.pt2``, ``openvino`` -> ``.xml``).
    ``calib_size`` training images, class-balanced, drawn with ``seed``; ``calib_method``
    ``minmax``/``entropy``/``percentile`` (default: minmax for ONNX Runtime, entropy = the X86
    HistogramObserver for torch). ``reduce_range=None`` picks 7-bit ranges on CPUs without VNNI.
    With ``data`` and ``evaluate``, the INT8 file and the FP32 source are evaluated on the test
    split (``eval_limit`` class-balanced images, default all). ``eval_backend`` (torch only):
    ``torch-int8-compiled`` (default where a C++ compiler exists) or ``torch-int8-eager``.
    ``backend="openvino"`` (``.xml`` + ``.bin``): NNCF PTQ with ``preset`` and ``fast_bias_correction``.
    ``max_drop`` (points; static): keep the fewest most sensitive layers FP32 so the drop on the
    evaluation images stays within it (:mod:`vggc.compress.quantize.budget`); the manifest's
    ``quantization.budget`` says what stayed FP32, why, and the backend it was checked on.
    ``fp32_onnx`` (onnxruntime/openvino): vggc export's FP32 ONNX of the same ``weights`` (checked
    against its manifest by :func:`check_fp32_onnx`), quantized instead of exporting again; the
    manifest's ``inputs.fp32_onnx`` and ``settings.fp32_onnx`` record it. ``reference``: the FP32
    source's ``{"top1", "n", "eval_limit", "seed"}`` on the same evaluation images, measured elsewhere
    (the pipeline's ``source_eval``; :func:`check_reference`): the budget's baseline and ``fp32_top1``
    without evaluating the source again.

    Returned keys: ``path``, ``manifest``, ``mode``, ``backend``, ``precision`` (``int8``), ``format``,
    ``size_bytes``, ``fp32_size_bytes``, ``size_ratio``, ``calib_size``, ``calib_method``, ``seed``,
    ``per_channel``, ``reduce_range``, ``quantized_conv``, ``quantized_linear``, ``quantize_seconds``,
    ``top1``, ``fp32_top1``, ``delta_pt``, ``retention`` (None when not evaluated), ``eval_n``,
    ``eval_backend``, ``fp32_layers`` (nodes kept FP32), ``budget`` (the ``max_drop`` search; None
    without it), ``notes``.
    """
    from vggc.data import resolve_preprocess
    from vggc.models import count_macs, count_params, load_weights

    method = check_settings(mode=mode, backend=backend, out=out, data=data, calib_size=calib_size,
                            calib_method=calib_method, per_channel=per_channel, opset=opset, weights=weights,
                            preset=preset, fp32_onnx=fp32_onnx)
    fmt = formats.quantize_format(backend)
    if eval_backend not in (None, "auto", *fmt.eval_backends):
        raise InputError(f"--eval-backend {eval_backend}: --backend {backend} files run on "
                         f"{', '.join(fmt.eval_backends)}")
    if max_drop is not None:
        check_budget_settings(max_drop, mode=mode, backend=backend, data=data, evaluate=evaluate,
                              max_fp32_layers=max_fp32_layers)
    out, lm = Path(out), load_weights(weights)
    pre = resolve_preprocess(lm.sidecar, mean, std, input_size)
    batches, calib_facts = calibration_batches(data, pre, calib_size, seed, progress) if mode == "static" else ([], None)
    job = QuantJob(fmt, lm.model.eval(), Path(weights), lm.name, mode, method, batches, _example(batches, lm, pre),
                   pre, per_channel, resolve_reduce_range(reduce_range), percentile, opset, threads, preset,
                   fast_bias_correction, progress=progress)
    notes = _notes(job)
    t0 = time.perf_counter()
    settings = _settings(job, calib_size=calib_size, seed=seed, auto=reduce_range is None, eval_limit=eval_limit)
    source_sha = sha256_file(weights)
    if fp32_onnx is not None:
        reused = check_fp32_onnx(fp32_onnx, source_sha=source_sha, preprocess=pre, opset=opset)
        settings["fp32_onnx"] = {"name": reused["name"], "sha256": reused["sha256"]}
        job.fp32_onnx, job.opset = reused["path"], reused["opset"]
    evaluation = (data, eval_limit, seed, eval_batch_size, progress)  # the evaluation images and how to run them
    fp32_top1 = _fp32_top1(job, reference, evaluation, settings, needed=(bool(data) and evaluate) or max_drop is not None)
    if max_drop is not None:
        settings.update({"max_drop_pt": max_drop, "max_fp32_layers": max_fp32_layers})
        job.budget = budget_search(fp32_top1(), max_drop, max_fp32_layers, data, pre, eval_limit, seed,
                                   eval_batch_size, progress)
    q_facts, fp32_size, seconds, eval_res, used_backend = _write_and_evaluate(
        job, out, t0, evaluation if (data and evaluate) else None, eval_backend)
    if "opset" in q_facts:
        settings["opset"] = q_facts["opset"]
    if eval_res is not None and q_facts.get("budget"):  # torch trials run eagerly; the file may run compiled
        notes.extend(filter(None, [final_budget_note(q_facts["budget"], eval_res.top1, fp32_top1(), used_backend)]))
    size = sum(p.stat().st_size for p in [out, *fmt.companion_paths(out)])
    metrics = _metrics(size, fp32_size, seconds, eval_res, fp32_top1, used_backend)
    extra = {"precision": "int8", "quant_mode": mode, "quant_backend": backend, "preprocess": pre.to_dict(),
             "params": count_params(job.model), "macs": count_macs(job.model, pre.input_size), "arch": lm.name,
             "config": lm.config.to_dict(), "source": {"path": str(weights), "name": Path(weights).name,
                                                       "sha256": source_sha},
             "calibration": calib_facts, "quantization": q_facts, "notes": notes,
             **fmt.impl().manifest_extra(out, q_facts)}
    if data and mode == "static":
        extra["calibration"]["data"] = str(data)
    inputs = {"source": weights, **({"fp32_onnx": job.fp32_onnx} if job.fp32_onnx else {})}
    write_manifest_or_remove(out, also=tuple(fmt.companion_paths(out)), kind=fmt.name, inputs=inputs,
                             settings=settings, metrics=metrics, extra=extra)
    return _result(job, out, settings, metrics, q_facts, size, fp32_size, notes)


def _example(batches: list, lm, pre) -> torch.Tensor:
    """Return an example input batch of 2: calibration images, else zeros of the model's input shape."""
    in_ch = getattr(lm.config, "in_channels", 3)
    return batches[0][:2] if batches else torch.zeros(2, in_ch, pre.input_size, pre.input_size)


def _notes(job: QuantJob) -> list[str]:
    """Return the manifest's ``notes`` that the settings alone decide (dynamic mode, the backend's, reduce-range)."""
    notes = [dynamic_note(job.model, job.preprocess.input_size)] if job.mode == "dynamic" else []
    notes.extend(job.fmt.impl().notes(job))
    if job.reduce_range:
        notes.append(f"reduce_range: 7-bit {job.fmt.reduce_range_of} to avoid int16 saturation of u8*s8 dot "
                     "products on CPUs without VNNI")
    return notes


def _settings(job: QuantJob, *, calib_size: int, seed: int, auto: bool, eval_limit: int | None) -> dict:
    """Return the manifest's ``settings`` (the backend's own ones last)."""
    static = job.mode == "static"
    return {"mode": job.mode, "backend": job.fmt.quantize, "calib_size": calib_size if static else None,
            "calib_method": job.method if static else None, "seed": seed, "per_channel": job.per_channel,
            "reduce_range": job.reduce_range, "reduce_range_auto": auto, "cpu_has_vnni": has_vnni(),
            "eval_limit": eval_limit, **job.fmt.impl().settings_extra(job)}


def _fp32_top1(job: QuantJob, reference: dict | None, evaluation: tuple, settings: dict, *, needed: bool
               ) -> "_Fp32Top1":
    """Return the FP32 source's top-1 on the evaluation images, on demand: ``reference``'s (checked,
    recorded in ``settings["fp32_reference"]``) when given and ``needed``, else measured once."""
    data, eval_limit, seed, batch_size, progress = evaluation
    ref_top1 = None
    if reference is not None and needed:
        ref_top1 = check_reference(reference, data=data, eval_limit=eval_limit, seed=seed, progress=progress)
        settings["fp32_reference"] = {"top1": ref_top1, "n": reference["n"]}
    return _Fp32Top1(ref_top1, lambda: _evaluate_source(job.model, data, job.preprocess, eval_limit, seed,
                                                        batch_size, progress))


def _write_and_evaluate(job: QuantJob, out: Path, t0: float, evaluation: tuple | None, which: str | None):
    """Write ``out`` (and its companion files) through the backend's module, atomically, and evaluate
    the written file before it is renamed into place when ``evaluation`` is given. Returns
    ``(facts, fp32_size, quantize_seconds, EvalResult or None, evaluation backend or None)``."""
    impl = job.fmt.impl()
    eval_res = used = None
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out))
        # companion files (an IR's .bin) go to temporaries too, renamed (before the file) only on success
        companions = [stack.enter_context(atomic_path(c)) for c in job.fmt.companion_paths(out)]
        facts, fp32_size = impl.write(job, tmp, companions)
        seconds = time.perf_counter() - t0
        if evaluation is not None:
            data, eval_limit, seed, batch_size, progress = evaluation
            runner, used = impl.open_for_eval(tmp, companions, preprocess=job.preprocess, batch_size=batch_size,
                                              threads=job.threads, which=which)
            eval_res = _evaluate_runner(runner, _test_split(data, eval_limit, seed, progress), job.preprocess,
                                        batch_size, progress)
    return facts, fp32_size, seconds, eval_res, used


def _metrics(size: int, fp32_size: int, seconds: float, eval_res, fp32_top1: "_Fp32Top1", used_backend) -> dict:
    """Return the manifest's ``metrics``: sizes, time, and the accuracy next to the FP32 source's when evaluated."""
    metrics: dict = {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size,
                     "quantize_seconds": round(seconds, 2)}
    if eval_res is not None:
        ref = fp32_top1()
        metrics.update({"top1": eval_res.top1, "fp32_top1": ref, "delta_pt": round(100 * (eval_res.top1 - ref), 3),
                        "retention": eval_res.top1 / ref if ref else None, "eval_n": eval_res.n,
                        "eval_split": "test", "eval_backend": used_backend, "per_class": eval_res.per_class})
    return metrics


def _result(job: QuantJob, out: Path, settings: dict, metrics: dict, q_facts: dict, size: int, fp32_size: int,
            notes: list[str]) -> dict:
    """Return :func:`quantize`'s facts (its docstring lists the keys)."""
    qc = q_facts.get("quantized_layers", {})
    return {"path": str(out), "manifest": str(manifest_path(out)), "mode": job.mode, "backend": job.fmt.quantize,
            "precision": "int8", "format": job.fmt.name, "size_bytes": size, "fp32_size_bytes": fp32_size,
            "size_ratio": size / fp32_size, "calib_size": settings["calib_size"],
            "calib_method": settings["calib_method"], "seed": settings["seed"], "per_channel": job.per_channel,
            "reduce_range": job.reduce_range, "quantized_conv": qc.get("conv"), "quantized_linear": qc.get("linear"),
            "quantize_seconds": metrics["quantize_seconds"],
            "top1": metrics.get("top1"), "fp32_top1": metrics.get("fp32_top1"), "delta_pt": metrics.get("delta_pt"),
            "retention": metrics.get("retention"), "eval_n": metrics.get("eval_n"),
            "eval_backend": metrics.get("eval_backend"), "runtime_ops": q_facts.get("runtime_ops"),
            "fp32_layers": q_facts.get("fp32_nodes", []), "budget": q_facts.get("budget"), "notes": notes}
