"""Torch-TensorRT builds: a vggc state_dict compiled (dynamo, explicit typing, FP16 inside and FP32
I/O) into an exported program (``.ep``) checked against eager FP16, or into a plain serialized
engine (``.engine``/``.plan``) checked layer by layer like :func:`build_engine`'s."""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from pathlib import Path
from typing import Any

from vggc.artifacts import atomic_path, sha256_file, write_manifest_or_remove
from vggc.errors import InputError, UnavailableError, VggcError, first_line
from vggc.export.tensorrt.build import (
    ENGINE_SUFFIXES,
    _check_out,
    _check_timing_cache,
    _finish_engine,
    check_batch_range,
)
from vggc.export.tensorrt.probe import (
    TRT_MISSING,
    current_environment,
    import_tensorrt,
    import_torch_tensorrt,
    require_cuda,
)
from vggc.export.tensorrt.qdq import PRECISIONS

TORCH_TRT_SUFFIXES = (".ep",)
TORCH_TRT_KIND = "torch-tensorrt"


def _fp32_io_half_model(model):
    """Wrap ``model`` (converted to FP16) so it takes and returns float32: explicit casts at each end,
    which a strongly typed TensorRT network keeps (FP16 inside, FP32 I/O, like the FP16 ONNX)."""
    import torch
    from torch import nn

    class Fp32IO(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.to(torch.float16)).to(torch.float32)

    return Fp32IO(copy.deepcopy(model).eval().half())


def _supported_kwargs(fn, wanted: dict) -> dict:
    """The subset of ``wanted`` that ``fn`` accepts by name (Torch-TensorRT's options move between
    releases: ``use_explicit_typing`` exists in 2.5-2.12, is default True in 2.12 and was removed in
    2.13 where strong typing is always on, commit 03cbbd7 "Remove deprecated apis")."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in wanted.items() if k in params}


def torch_tensorrt_typing_kwargs(tt, fn) -> dict:
    """Keyword arguments that make ``fn`` (a torch_tensorrt compile entry point) respect the model's
    dtypes: ``use_explicit_typing=True`` where it exists, nothing where strong typing is the only mode."""
    return _supported_kwargs(fn, {"use_explicit_typing": True})


# the keywords vggc passes to Torch-TensorRT's entry points (checked against its source in tests/test_trt_api.py)
COMPILE_KEYWORDS = ("ir", "arg_inputs")  # + compile_options() + torch_tensorrt_typing_kwargs()
ENGINE_KEYWORDS = ("arg_inputs", "ir")  # convert_method_to_trt_engine(model, "forward", ...)
INPUT_KEYWORDS = ("min_shape", "opt_shape", "max_shape", "dtype")  # torch_tensorrt.Input(...)


def compile_options(workspace_gib: float, timing_cache: Path | None) -> dict:
    """The Torch-TensorRT compile settings vggc passes (to ``compile`` and
    ``convert_method_to_trt_engine``, which forward them to the dynamo compiler)."""
    options = {"workspace_size": int(float(workspace_gib) * 2**30), "min_block_size": 1,
               "require_full_compilation": True}
    if timing_cache is not None:
        options["timing_cache_path"] = str(timing_cache)
    return options


def save_options(save_params, x, min_batch: int, max_batch: int) -> dict:
    """Keywords for ``torch_tensorrt.save`` given its parameter names ``save_params``: an exported
    program, the example input, and (2.12+) a dynamic batch dimension with ``retrace=True``."""
    import torch

    save_kw: dict[str, Any] = {"output_format": "exported_program", "arg_inputs": [x]}
    if "dynamic_shapes" in save_params:  # 2.12+: keep the batch dimension dynamic in the saved program
        save_kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=min_batch, max=max_batch)}}
        save_kw["retrace"] = True
    elif "retrace" in save_params:  # older: serialise the compiled graph's own symbolic shapes
        save_kw["retrace"] = False
    return save_kw


def _check_torch_trt_args(weights: Path, out: Path, precision: str, min_batch: int, opt_batch: int, max_batch: int,
                          workspace_gib: float, timing_cache):
    """Refuse bad :func:`build_torch_tensorrt` arguments (one line each, before any GPU work); return
    the checked timing cache path (or ``None``)."""
    if not weights.is_file():
        raise InputError(f"{weights}: no such file")
    _check_out(out, ENGINE_SUFFIXES + TORCH_TRT_SUFFIXES, weights)
    if precision == "int8":
        raise InputError("--builder torch-tensorrt --precision int8: needs a ModelOpt-quantized model; build INT8 "
                         "engines from the QDQ ONNX with --builder tensorrt")
    if precision != "fp16":
        raise InputError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    check_batch_range(min_batch, opt_batch, max_batch)
    if not 0 < float(workspace_gib) <= 1024:
        raise InputError(f"--workspace {workspace_gib}: must be in (0, 1024] GiB")
    return _check_timing_cache(timing_cache)


def build_torch_tensorrt(weights, out, *, precision: str = "fp16", min_batch: int = 1, opt_batch: int = 64,
                         max_batch: int = 256, workspace_gib: float = 4, timing_cache=None,
                         allow_mixed: bool = False, device: int = 0) -> dict:
    """Compile the state_dict ``weights`` with Torch-TensorRT (dynamo) in FP16 with FP32 I/O.

    ``out`` ending in ``.ep``: ``torch_tensorrt.compile(ir="dynamo")`` then ``torch_tensorrt.save(...,
    output_format="exported_program")`` (load with ``torch_tensorrt.load(out).module()``; vggc runs it
    on the ``torch-tensorrt`` backend). ``.engine``/``.plan``: ``convert_method_to_trt_engine`` gives a
    plain serialized TensorRT engine for the ``tensorrt`` backend and Triton. Explicit typing
    (``use_explicit_typing=True`` where the installed version has it) keeps the FP16 model FP16.
    INT8 is refused: it needs a ModelOpt-quantized module; build INT8 engines from the QDQ ONNX.
    """
    from vggc.data import resolve_preprocess
    from vggc.models import count_macs, count_params, load_weights

    weights, out = Path(weights), Path(out)
    tc = _check_torch_trt_args(weights, out, precision, min_batch, opt_batch, max_batch, workspace_gib, timing_cache)
    lm = load_weights(weights)  # one-line ModelFormatError for bad files, before any GPU work
    pre = resolve_preprocess(lm.sidecar)
    s = pre.input_size

    tt = import_torch_tensorrt()
    require_cuda("Torch-TensorRT")
    import torch

    dev = torch.device("cuda", device)
    model = _fp32_io_half_model(lm.model).to(dev)
    spec = tt.Input(min_shape=(min_batch, 3, s, s), opt_shape=(opt_batch, 3, s, s), max_shape=(max_batch, 3, s, s),
                    dtype=torch.float32)
    options = compile_options(workspace_gib, tc)
    env = {"torch_tensorrt": str(getattr(tt, "__version__", "?"))}
    trt = None
    with contextlib.suppress(UnavailableError):
        trt = import_tensorrt()
        env = {**current_environment(trt, device), **env}
    settings = {"precision": precision, "min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
                "workspace_gib": workspace_gib, "timing_cache": str(tc) if tc else None, "device": device,
                "builder": "torch-tensorrt"}
    extra = {"preprocess": pre.to_dict(), "params": count_params(lm.model), "macs": count_macs(lm.model, s),
             "arch": lm.name, "source": {"path": str(weights), "sha256": sha256_file(weights)}}
    t0 = time.perf_counter()
    try:
        if out.suffix in ENGINE_SUFFIXES:
            fn = tt.convert_method_to_trt_engine
            typing_kw = torch_tensorrt_typing_kwargs(tt, getattr(tt.dynamo, "convert_exported_program_to_serialized_"
                                                                           "trt_engine", fn))
            engine_bytes = bytes(fn(model, "forward", arg_inputs=[spec], ir="dynamo", **typing_kw, **options))
        else:
            typing_kw = torch_tensorrt_typing_kwargs(tt, getattr(tt.dynamo, "compile", tt.compile))
            trt_gm = tt.compile(model, ir="dynamo", arg_inputs=[spec], **typing_kw, **options)
    except VggcError:
        raise
    except Exception as err:  # noqa: BLE001 - Torch-TensorRT raises many types
        raise VggcError(f"Torch-TensorRT compilation failed: {first_line(err)}") from None
    build_s = time.perf_counter() - t0
    extra["typing_kwargs"] = typing_kw

    if out.suffix in ENGINE_SUFFIXES:
        if trt is None:
            raise UnavailableError(TRT_MISSING)
        # Torch-TensorRT builds with LAYER_NAMES_ONLY verbosity (DETAILED only under its Debugger), so the
        # layer check may be unverifiable here; explicit typing is what guarantees FP16 for this path.
        return _finish_engine(trt, engine_bytes, out, precision=precision, builder="torch-tensorrt",
                              allow_mixed=allow_mixed, require_verified=False, env=env, inputs={"source": weights},
                              settings=settings, extra=extra, build_seconds=build_s)

    # exported program: check it against eager FP16 on a random batch, then save it atomically
    g = torch.Generator().manual_seed(0)
    x = torch.randn(opt_batch, 3, s, s, generator=g).to(dev)
    with torch.no_grad():
        ref = model(x).float()
        got = trt_gm(x)
        got = (got[0] if isinstance(got, (tuple, list)) else got).float()
    max_diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    save_kw = save_options(inspect.signature(tt.save).parameters, x, min_batch, max_batch)
    try:
        with atomic_path(out) as tmp:
            tt.save(trt_gm, str(tmp), **save_kw)
    except Exception as err:  # noqa: BLE001
        raise VggcError(f"torch_tensorrt.save failed: {first_line(err)}") from None
    doc = {"precision": precision, "builder": "torch-tensorrt", "build_environment": env,
           "profile": {"input": "x", "min": [min_batch, 3, s, s], "opt": [opt_batch, 3, s, s],
                       "max": [max_batch, 3, s, s]},
           "min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
           "check_vs_eager_fp16": {"n": opt_batch, "max_abs_logit_diff": max_diff, "top1_agreement": agree}, **extra}
    write_manifest_or_remove(out, kind=TORCH_TRT_KIND, inputs={"source": weights}, settings=settings,
                             metrics={"build_seconds": round(build_s, 2)}, extra=doc)
    return {"path": str(out), "manifest": str(out.with_name(out.name + ".json")), "precision": precision,
            "builder": "torch-tensorrt", "size_bytes": out.stat().st_size, "build_seconds": round(build_s, 2),
            "check_vs_eager_fp16": doc["check_vs_eager_fp16"], **env, "profile": doc["profile"]}
