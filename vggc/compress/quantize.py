"""INT8 post-training quantization of a trained model: ONNX Runtime (``.onnx``) or PyTorch (``.pt2``).

:func:`quantize` is the one entry point (``vggc quantize`` and the pipeline call it):

==============  ===========================================  ==========================================
                ``backend="onnxruntime"`` -> ``.onnx``       ``backend="torch"`` -> ``.pt2``
==============  ===========================================  ==========================================
``static``      QDQ, S8S8 symmetric, per-channel weights,    PT2E + X86InductorQuantizer (u8 act, s8
                MinMax/Entropy/Percentile calibration;       per-channel weights); fast when compiled
                runs as QLinearConv/QGemm; TensorRT input    (``torch-int8-compiled``: oneDNN int8)
``dynamic``     Linear (MatMul/Gemm) layers only             torchao int8 dyn-act/int8-weight, Linear only
==============  ===========================================  ==========================================

Calibration uses a class-balanced subset of the **training** split (``balanced_indices`` with
``seed``), never test images. Dynamic quantization touches only the Linear layers, so on a CIFAR
VGG16 (13 convs, 512-wide head: ~1.7% of the MACs) it barely changes size or speed; the manifest's
``notes`` say so.

The output is written atomically; its manifest ``<out>.json`` records the source's SHA-256, the
mode/backend/calibration settings, the calibration indices' hash, per-channel and reduce-range, the
number of quantized layers, sizes, and (when test data is given) the top-1 of the INT8 file and of
the FP32 source on the same test images. Anything that fails leaves nothing at ``out``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from pathlib import Path

import torch

from vggc.artifacts import atomic_path, manifest_path, sha256_file, write_manifest_or_remove
from vggc.compress.quantize_budget import budget_search, check_budget_settings, final_budget_note
from vggc.cpu import has_vnni
from vggc.errors import InputError
from vggc.limits import CALIB_METHODS
from vggc.progress import Progress, no_progress

MODES = ("dynamic", "static")
BACKENDS = ("onnxruntime", "torch", "openvino")
SUFFIXES = {"onnxruntime": ".onnx", "torch": ".pt2", "openvino": ".xml"}
DEFAULT_CALIB_METHOD = {"onnxruntime": "minmax", "torch": "entropy", "openvino": "nncf"}
EVAL_BACKENDS = {"onnxruntime": ("onnxruntime-cpu",), "torch": ("torch-int8-compiled", "torch-int8-eager"),
                 "openvino": ("openvino-cpu",)}
CALIB_BATCH = 50


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
    :class:`InputError` for every bad combination (the CLI calls this before any heavy work)."""
    if mode not in MODES:
        raise InputError(f"--mode {mode}: choose dynamic or static")
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose onnxruntime, torch or openvino")
    if backend == "openvino":
        from vggc.compress.quantize_ov import check_ov_settings

        check_ov_settings(mode=mode, preset=preset, calib_method=calib_method)
    method = calib_method or DEFAULT_CALIB_METHOD[backend]
    if method not in CALIB_METHODS and backend != "openvino":
        raise InputError(f"--calib-method {method}: choose minmax, entropy or percentile")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if out.suffix.lower() != SUFFIXES[backend]:
        raise InputError(f"--out {out}: --backend {backend} writes a {SUFFIXES[backend]} file "
                         f"(got '{out.suffix or 'no suffix'}')")
    if weights is not None and Path(weights).exists() and out.exists() and out.resolve() == Path(weights).resolve():
        raise InputError(f"--out {out}: would overwrite the input weights")
    if mode == "static" and not data:
        raise InputError("--mode static needs calibration images: pass --data DIR (or set VGGC_DATA)")
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise InputError(f"--calib-size {calib_size}: must be at least 1")
    if opset is not None:
        if backend != "onnxruntime":
            raise InputError("--opset applies to --backend onnxruntime only")
        from vggc.export.onnx import check_opset

        check_opset(opset)
    if fp32_onnx is not None:
        if backend == "torch":
            raise InputError("--fp32-onnx applies to --backend onnxruntime/openvino (torch quantizes the state_dict)")
        if not Path(fp32_onnx).is_file():
            raise InputError(f"--fp32-onnx {fp32_onnx}: no such file")
    if backend == "torch" and mode == "static" and not per_channel:
        raise InputError("--per-tensor: the torch backend's X86 Inductor int8 lowering handles per-channel "
                         "weights only (per-tensor weights would run as float convolutions); use "
                         "--per-channel or --backend onnxruntime")
    return method


def calibration_batches(data, preprocess, calib_size: int, seed: int, progress: Progress = no_progress,
                        batch_size: int = CALIB_BATCH) -> tuple[list[torch.Tensor], dict]:
    """Return normalised float batches of a class-balanced ``calib_size`` subset of the TRAIN split
    (drawn with ``seed``) and facts about it (size, seed, indices' SHA-256)."""
    from vggc.data import balanced_indices, load_split

    train = load_split(data, "train", progress=progress)
    if calib_size > len(train):
        raise InputError(f"--calib-size {calib_size} is larger than the training split ({len(train)} images)")
    idx = balanced_indices(train.labels, calib_size, seed)
    images = train.images[idx]
    batches = [preprocess(images[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    per_class = torch.bincount(train.labels[idx], minlength=len(train.classes)).tolist()
    facts = {"split": "train", "size": int(len(idx)), "seed": seed, "per_class": per_class,
             "indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()}
    return batches, facts


def _evaluate_runner(runner, data, preprocess, eval_limit, seed, batch_size, progress):
    from vggc.data import limit_split, load_split
    from vggc.evaluate import evaluate

    split = limit_split(load_split(data, "test", progress=progress), eval_limit, seed)
    try:
        return evaluate(runner.predict, split, preprocess, batch_size=batch_size, progress=progress)
    finally:
        runner.close()


def _evaluate_source(model, data, preprocess, eval_limit, seed, batch_size, progress):
    """Return the FP32 source's :class:`~vggc.evaluate.EvalResult` on the evaluation images."""
    from vggc.runtime import TorchRunner

    return _evaluate_runner(TorchRunner(copy.deepcopy(model), "cpu", None, None), data, preprocess, eval_limit, seed,
                            batch_size, progress)


def check_fp32_onnx(fp32_onnx, *, source_sha: str, preprocess, opset: int | None) -> dict:
    """Check that ``fp32_onnx`` is vggc's FP32 ONNX export of the same weights (its manifest
    ``<file>.json``: source SHA-256, FP32, preprocess, and ``opset`` when one was asked); return
    ``{"path", "name", "sha256", "opset", "size_bytes"}``. One-line :class:`InputError` otherwise."""
    from vggc.artifacts import read_json_object

    path = Path(fp32_onnx)
    what = f"--fp32-onnx {path}"
    if not path.is_file():
        raise InputError(f"{what}: no such file")
    if path.suffix.lower() != ".onnx":
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
    ``backend``: ``onnxruntime`` (``out`` ends in ``.onnx``) or ``torch`` (``.pt2``).
    ``calib_size`` training images, class-balanced, drawn with ``seed``; ``calib_method``
    ``minmax``/``entropy``/``percentile`` (default: minmax for ONNX Runtime, entropy = the X86
    HistogramObserver for torch). ``reduce_range=None`` picks 7-bit ranges on CPUs without VNNI.
    With ``data`` and ``evaluate``, the INT8 file and the FP32 source are evaluated on the test
    split (``eval_limit`` class-balanced images, default all). ``eval_backend`` (torch only):
    ``torch-int8-compiled`` (default where a C++ compiler exists) or ``torch-int8-eager``.
    ``backend="openvino"`` (``out`` ends in ``.xml``; its ``.bin`` is written beside it): NNCF PTQ
    with ``preset`` (``performance``/``mixed``) and ``fast_bias_correction`` (static only; see
    :mod:`vggc.compress.quantize_ov`).
    ``max_drop`` (percentage points; static mode, any backend): keep the fewest most sensitive layers
    in FP32 so the drop on the evaluation images stays within it (:mod:`vggc.compress.quantize_budget`;
    torch trials run the eager INT8 program, the written file is evaluated as usual); the manifest's
    ``quantization.budget`` lists what stayed FP32, why, and the backend it was checked on, and
    ``quantization.fp32_nodes`` the layers kept FP32 (ONNX node names; torch module names for torch).
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
    if eval_backend not in (None, "auto", *EVAL_BACKENDS[backend]):
        raise InputError(f"--eval-backend {eval_backend}: --backend {backend} files run on "
                         f"{', '.join(EVAL_BACKENDS[backend])}")
    if max_drop is not None:
        check_budget_settings(max_drop, mode=mode, backend=backend, data=data, evaluate=evaluate,
                               max_fp32_layers=max_fp32_layers)
    out = Path(out)
    rr = resolve_reduce_range(reduce_range)
    lm = load_weights(weights)
    pre = resolve_preprocess(lm.sidecar, mean, std, input_size)
    model = lm.model.eval()
    do_eval = bool(data) and evaluate
    calib_facts = None
    batches: list[torch.Tensor] = []
    if mode == "static":
        batches, calib_facts = calibration_batches(data, pre, calib_size, seed, progress)
    in_ch = getattr(lm.config, "in_channels", 3)
    example = batches[0][:2] if batches else torch.zeros(2, in_ch, pre.input_size, pre.input_size)
    notes: list[str] = []
    if mode == "dynamic":
        notes.append(dynamic_note(model, pre.input_size))
        if backend == "onnxruntime":
            notes.append("ONNX Runtime dynamic mode quantizes MatMul/Gemm only: its ConvInteger kernel is "
                         "~5x slower than FP32 Conv on CPU")
    if rr:
        notes.append("reduce_range: 7-bit " + ("weights" if backend != "torch" else "activations")
                     + " to avoid int16 saturation of u8*s8 dot products on CPUs without VNNI")

    t0 = time.perf_counter()
    eval_res = None
    used_backend = None
    settings = {"mode": mode, "backend": backend, "calib_size": calib_size if mode == "static" else None,
                "calib_method": method if mode == "static" else None, "seed": seed, "per_channel": per_channel,
                "reduce_range": rr, "reduce_range_auto": reduce_range is None, "cpu_has_vnni": has_vnni(),
                "eval_limit": eval_limit}
    if backend == "openvino":
        settings.update({"preset": preset, "fast_bias_correction": fast_bias_correction})
    source_sha = sha256_file(weights)
    reused = None
    if fp32_onnx is not None:
        reused = check_fp32_onnx(fp32_onnx, source_sha=source_sha, preprocess=pre, opset=opset)
        settings["fp32_onnx"] = {"name": reused["name"], "sha256": reused["sha256"]}
        opset = reused["opset"]
    ref_top1 = None
    if reference is not None and (do_eval or max_drop is not None):
        ref_top1 = check_reference(reference, data=data, eval_limit=eval_limit, seed=seed, progress=progress)
        settings["fp32_reference"] = {"top1": ref_top1, "n": reference["n"]}
    fp32_top1 = _Fp32Top1(ref_top1, lambda: _evaluate_source(model, data, pre, eval_limit, seed, eval_batch_size,
                                                             progress))
    budget = None
    if max_drop is not None:
        settings.update({"max_drop_pt": max_drop, "max_fp32_layers": max_fp32_layers})
        budget = budget_search(fp32_top1(), max_drop, max_fp32_layers, data, pre, eval_limit, seed,
                               eval_batch_size, progress)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out))
        # an IR is two files: both are written to temporaries and renamed (the .bin first) only on success
        tmp_bin = stack.enter_context(atomic_path(out.with_suffix(".bin"))) if backend == "openvino" else None
        if backend == "openvino":
            from vggc.compress.quantize_ov import quantize_ir

            q_facts, fp32_size = quantize_ir(model, tmp, tmp_bin, batches=batches, preset=preset,
                                             fast_bias_correction=fast_bias_correction, per_channel=per_channel,
                                             reduce_range=rr, preprocess=pre, opset=opset, progress=progress,
                                             budget=budget, threads=threads, fp32_onnx=reused and reused["path"])
            settings["opset"] = q_facts["opset"]
        elif backend == "onnxruntime":
            from vggc.compress.quantize_ort import quantize_to_file

            q_facts, fp32_size = quantize_to_file(model, tmp, mode=mode, batches=batches, method=method,
                                                  per_channel=per_channel, reduce_range=rr, percentile=percentile,
                                                  opset=opset, preprocess=pre, arch=lm.name, progress=progress,
                                                  budget=budget, threads=threads,
                                                  fp32_onnx=reused and reused["path"])
            settings["opset"] = q_facts["opset"]
        else:
            from vggc.compress.quantize_torch import quantize_to_file

            q_facts, fp32_size = quantize_to_file(model, tmp, mode=mode, batches=batches, method=method,
                                                  reduce_range=rr, percentile=percentile, example=example,
                                                  weights=Path(weights), progress=progress, budget=budget)
        quantize_seconds = time.perf_counter() - t0
        if do_eval:
            runner, used_backend = _open_for_eval(tmp, backend, pre, eval_batch_size, threads, eval_backend, tmp_bin)
            eval_res = _evaluate_runner(runner, data, pre, eval_limit, seed, eval_batch_size, progress)
    if do_eval and q_facts.get("budget"):  # torch trials run eagerly; the file may be evaluated compiled
        notes.extend(filter(None, [final_budget_note(q_facts["budget"], eval_res.top1, fp32_top1(), used_backend)]))

    size = out.stat().st_size + (out.with_suffix(".bin").stat().st_size if backend == "openvino" else 0)
    metrics: dict = {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size,
                     "quantize_seconds": round(quantize_seconds, 2)}
    if eval_res is not None:
        metrics.update({"top1": eval_res.top1, "fp32_top1": fp32_top1(),
                        "delta_pt": round(100 * (eval_res.top1 - fp32_top1()), 3),
                        "retention": eval_res.top1 / fp32_top1() if fp32_top1() else None,
                        "eval_n": eval_res.n, "eval_split": "test", "eval_backend": used_backend,
                        "per_class": eval_res.per_class})
    fmt = {"onnxruntime": "onnx", "torch": "pt2", "openvino": "openvino-ir"}[backend]
    extra = {"precision": "int8", "quant_mode": mode, "quant_backend": backend, "preprocess": pre.to_dict(),
             "params": count_params(model), "macs": count_macs(model, pre.input_size), "arch": lm.name,
             "config": lm.config.to_dict(), "source": {"path": str(weights), "name": Path(weights).name,
                                                       "sha256": source_sha},
             "calibration": calib_facts, "quantization": q_facts, "notes": notes}
    if fmt == "onnx":
        extra.update({"input_name": "input", "output_name": "logits", "opset": q_facts["opset"],
                      "dynamic_batch": True})
    elif fmt == "openvino-ir":
        bin_path = out.with_suffix(".bin")
        extra.update({"dynamic_batch": True, "weights_file": {"name": bin_path.name, "sha256": sha256_file(bin_path),
                                                              "size_bytes": bin_path.stat().st_size},
                      "load": "openvino.Core().read_model(path)", "fast_backend": "openvino-cpu"})
    else:
        extra.update({"dynamic_batch": True, "load": "import torchao; torch.export.load(path).module()",
                      "fast_backend": "torch-int8-compiled"})
    inputs = {"source": weights, **({"fp32_onnx": reused["path"]} if reused else {})}
    if data and mode == "static":
        extra["calibration"]["data"] = str(data)
    write_manifest_or_remove(out, also=(out.with_suffix(".bin"),) if backend == "openvino" else (),
                             kind=fmt, inputs=inputs, settings=settings, metrics=metrics, extra=extra)
    qc = q_facts.get("quantized_layers", {})
    return {"path": str(out), "manifest": str(manifest_path(out)), "mode": mode, "backend": backend,
            "precision": "int8", "format": fmt, "size_bytes": size, "fp32_size_bytes": fp32_size,
            "size_ratio": size / fp32_size, "calib_size": calib_size if mode == "static" else None,
            "calib_method": method if mode == "static" else None, "seed": seed, "per_channel": per_channel,
            "reduce_range": rr, "quantized_conv": qc.get("conv"), "quantized_linear": qc.get("linear"),
            "quantize_seconds": round(quantize_seconds, 2),
            "top1": metrics.get("top1"), "fp32_top1": metrics.get("fp32_top1"), "delta_pt": metrics.get("delta_pt"),
            "retention": metrics.get("retention"), "eval_n": metrics.get("eval_n"), "eval_backend": used_backend,
            "runtime_ops": q_facts.get("runtime_ops"), "fp32_layers": q_facts.get("fp32_nodes", []),
            "budget": q_facts.get("budget"), "notes": notes}


def _open_for_eval(path: Path, backend: str, preprocess, batch_size: int, threads, which: str | None = None,
                   weights: Path | None = None):
    """Open the just-written (not yet renamed) file (IR: with its ``weights`` .bin) on ``which`` or its
    fastest available backend."""
    if backend == "openvino":
        from vggc.export.openvino_backend import open_openvino

        return open_openvino(path, weights=weights, threads=threads, input_size=preprocess.input_size), "openvino-cpu"
    if backend == "onnxruntime":
        from vggc.export.ort_backend import open_onnx_cpu

        return open_onnx_cpu(path, threads=threads), "onnxruntime-cpu"
    from vggc.compress.pt2_backend import _compiled_reason, open_pt2

    if which == "torch-int8-compiled":
        reason = _compiled_reason()
        if reason:
            from vggc.errors import UnavailableError

            raise UnavailableError(f"torch-int8-compiled: {reason}")
    compiled = which == "torch-int8-compiled" or (which in (None, "auto") and _compiled_reason() is None)
    runner = open_pt2(path, compiled=compiled, input_size=preprocess.input_size, warmup_batches=(batch_size,))
    return runner, "torch-int8-compiled" if compiled else "torch-int8-eager"
