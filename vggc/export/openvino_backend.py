"""OpenVINO backends and the ``openvino-ir`` model format (``.xml`` + ``.bin``) for :mod:`vggc.runtime`.

Format ``openvino-ir``: an IR ``<name>.xml`` whose weights are ``<name>.bin`` beside it (OpenVINO
finds the ``.bin`` by name). :func:`describe_ir` refuses, with one line, an ``.xml`` without its
``.bin`` and an IR OpenVINO cannot read (truncated ``.xml``, a ``.bin`` shorter than the
weights it must hold); facts come from the manifest ``<name>.xml.json`` when there is one, else
from the graph (precision: ``int8`` when it has ``FakeQuantize`` ops, ``fp16`` for f16 weights).

Backends (``onnx`` and ``openvino-ir`` files), CPU plugin, synchronous, one infer request:

* ``openvino-cpu`` (``precision="file"``: the file's own precision, like ``onnxruntime-cpu``):
  ``INFERENCE_PRECISION_HINT=f32``. On CPUs with AVX512-BF16/AMX OpenVINO would otherwise run
  FP32 layers in bf16 (its default there), which changes accuracy; a row labelled ``fp32`` must
  compute in f32. Quantized (FakeQuantize / QDQ) layers still run as int8 kernels under this hint.
* ``openvino-cpu-bf16`` (not in the default set): ``INFERENCE_PRECISION_HINT=bf16``, only where the
  CPU has native bf16; float layers in bf16, a separately labelled precision.

Settings, like the ONNX Runtime rows: ``INFERENCE_NUM_THREADS`` = the ``threads`` option (else
``torch.get_num_threads()``), ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY`` (one request at a
time on all threads, as every vggc row is timed). The model is compiled for a static input shape
on the first call of each batch size (the bench uses two: N and 1). After compiling, the precision
the compiled model reports is checked against the request (a mismatch is an error, never a
silent relabel), and :attr:`OvRunner.facts` records the OpenVINO version, ``FULL_DEVICE_NAME``,
``OPTIMIZATION_CAPABILITIES``, the compiled ``INFERENCE_PRECISION_HINT``, threads, streams, hint
and the runtime precision of the convolutions (``u8``/``i8`` = int8 kernels); bench rows carry
them under ``runtime``.

OpenVINO's runtime sends no telemetry (only its Python conversion tool ``ovc``/``convert_model``
does, which vggc never calls; files are read with ``Core.read_model``). This module imports
without openvino installed; the backends then report why they cannot run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vggc import formats
from vggc.artifacts import read_manifest
from vggc.cpu import has_native_bf16
from vggc.errors import ModelFormatError, UnavailableError, first_line
from vggc.runtime import (
    FILE_PRECISION,
    Backend,
    ModelFile,
    Runner,
    preprocess_from_meta,
    register_backend,
    register_format,
)

FORMAT = "openvino-ir"
HINTS = {"fp32": "f32", "bf16": "bf16"}
MAX_SHAPES = 4  # compiled static shapes kept per runner


def ov_reason() -> str | None:
    """Return why OpenVINO cannot run here, or ``None``."""
    try:
        import openvino  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"openvino not installed ({first_line(err, 120)})"
    return None


def ov_version() -> str:
    """Return the OpenVINO runtime version string."""
    import openvino as ov

    return ov.get_version()


# ----------------------------------------------------------------------------- IR files

def _is_ir(path: Path) -> bool:
    return path.suffix.lower() in formats.get(FORMAT).suffixes and path.is_file()


def ir_files(xml: str | Path) -> tuple[Path, Path]:
    """Return ``(xml, bin)`` of an IR; raise :class:`ModelFormatError` if the ``.bin`` is missing."""
    xml = Path(xml)
    weights = formats.get(FORMAT).companion_paths(xml)[0]
    if not weights.is_file():
        raise ModelFormatError(f"{xml}: OpenVINO IR weights file {weights.name} is missing beside it")
    return xml, weights


def read_model(path: str | Path, core=None, weights: str | Path | None = None):
    """Return the ``openvino.Model`` of an ``.onnx`` or IR ``.xml`` file (``weights``: an IR's ``.bin``
    when it is not ``<name>.bin`` beside it); one-line :class:`ModelFormatError` when OpenVINO cannot
    read it (or an IR's ``.bin`` is missing/short)."""
    import openvino as ov

    path = Path(path)
    if path.suffix.lower() == ".xml" and weights is None:
        weights = ir_files(path)[1]
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: file is empty")
    core = core or ov.Core()
    try:
        model = core.read_model(str(path), str(weights) if weights else None)
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError with a long trace
        raise ModelFormatError(f"{path}: OpenVINO cannot read it ({_ov_line(err)})") from None
    if not model.inputs or not model.outputs:
        raise ModelFormatError(f"{path}: OpenVINO model has no inputs or outputs")
    return model


def _ov_line(err: BaseException) -> str:
    """The informative line of an OpenVINO exception (they start with 'Exception from src/...')."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(err).__name__])[0])[:160]


def ir_precision(model) -> str:
    """Return ``int8`` if the graph has FakeQuantize ops, ``fp16`` if its weights are f16, else ``fp32``."""
    types = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in types:
        return "int8"
    import openvino as ov

    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16:
            return "fp16"
    return "fp32"


def describe_ir(path: Path) -> ModelFile:
    """Return the :class:`ModelFile` of an IR ``.xml`` (files: the ``.xml`` and its ``.bin``)."""
    xml, weights = ir_files(path)
    model = read_model(xml)
    meta = read_manifest(xml)
    pre_src = meta.get("preprocess")
    if not pre_src:
        shape = model.inputs[0].get_partial_shape()
        size = shape[3].get_length() if shape.rank.get_length() == 4 and shape[3].is_static else None
        pre_src = {"input_size": size} if size else {}
    pre = preprocess_from_meta({"preprocess": pre_src})
    doc = {**meta, "precision": meta.get("precision") or ir_precision(model)}
    return ModelFile(path=xml, format=FORMAT, preprocess=pre, files=[xml, weights], params=meta.get("params"),
                     macs=meta.get("macs"), arch=meta.get("arch") or "", meta=doc)


# ----------------------------------------------------------------------------- running

class OvRunner(Runner):
    """A model on OpenVINO's CPU plugin (see the module docstring for the settings).

    ``predict`` compiles a static-shape copy on the first call of each batch size (that time is
    the first-call cost the bench reports); ``compile_seconds`` is the read + first compile at
    open. ``facts``: what the compiled model reports (recorded in bench rows).
    """

    def __init__(self, path: Path, *, precision: str = "fp32", threads: int | None = None,
                 input_size: int | None = None, weights: Path | None = None):
        import openvino as ov

        if precision not in HINTS:
            raise UnavailableError(f"openvino-cpu: precision {precision} not offered (fp32 or bf16)")
        t0 = time.perf_counter()
        self.path = Path(path)
        self.core = ov.Core()
        self.model = read_model(path, self.core, weights)
        self.hint = HINTS[precision]
        self.threads = int(threads or torch.get_num_threads())
        self.config = {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": self.threads,
                       "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        shape = self.model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ModelFormatError(f"{path}: expected one 4-D image input, got {shape}")
        self.channels = shape[1].get_length() if shape[1].is_static else 3
        self.size = input_size or (shape[3].get_length() if shape[3].is_static else None)
        self._compiled: dict[tuple, tuple] = {}
        self.facts: dict = {}
        if self.size:
            self._request((1, self.channels, self.size, self.size))
        self.compile_seconds = time.perf_counter() - t0

    def _request(self, shape: tuple):
        hit = self._compiled.get(shape)
        if hit is not None:
            return hit[1]
        import openvino as ov

        if len(self._compiled) >= MAX_SHAPES:
            self._compiled.pop(next(iter(self._compiled)))
        self.model.reshape({self.model.inputs[0]: ov.PartialShape(list(shape))})
        try:
            compiled = self.core.compile_model(self.model, "CPU", self.config)
        except Exception as err:  # noqa: BLE001
            raise ModelFormatError(f"{self.path}: OpenVINO cannot compile it ({_ov_line(err)})") from None
        got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if _type_name(got) != self.hint:
            raise UnavailableError(f"openvino-cpu: asked INFERENCE_PRECISION_HINT={self.hint}, the compiled "
                                   f"model uses {got}")
        if not self.facts:
            self.facts = runtime_facts(self.core, compiled)
        request = compiled.create_infer_request()
        self._compiled[shape] = (compiled, request)
        return request

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        request = self._request(tuple(arr.shape))
        request.infer({0: arr})
        out = request.get_output_tensor(0).data
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def close(self) -> None:
        self._compiled.clear()
        self.model = None


def _type_name(value: str) -> str:
    """``"<Type: 'float32'>"`` or ``"f32"`` -> ``"f32"``; ``bfloat16`` -> ``"bf16"``."""
    v = value.lower()
    for full, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16")):
        if full in v:
            return short
    return v


def runtime_facts(core, compiled) -> dict:
    """Return JSON-able facts about a compiled CPU model: version, device, the precision and threads it
    really uses, and the runtime precision of its convolution layers (from the execution graph)."""
    conv: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and str(rt["layerType"].astype(str)) == "Convolution":
            prec = str(rt["runtimePrecision"].astype(str)) if "runtimePrecision" in rt else "?"
            conv[prec] = conv.get(prec, 0) + 1

    def prop(name: str):
        value = compiled.get_property(name)
        return value if isinstance(value, (int, float)) else str(value)

    return {"openvino": ov_version(), "device": "CPU",
            "full_device_name": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "optimization_capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
            "inference_precision": _type_name(str(compiled.get_property("INFERENCE_PRECISION_HINT"))),
            "inference_num_threads": prop("INFERENCE_NUM_THREADS"), "num_streams": prop("NUM_STREAMS"),
            "performance_hint": prop("PERFORMANCE_HINT"), "execution_mode": prop("EXECUTION_MODE_HINT"),
            "conv_runtime_precision": conv}


def open_openvino(path: str | Path, *, precision: str = "fp32", threads: int | None = None,
                  input_size: int | None = None, weights: str | Path | None = None) -> OvRunner:
    """Open an ``.onnx`` or IR ``.xml`` (``weights``: its ``.bin`` if not beside it under the same name)
    on OpenVINO CPU, for code outside the registry; return the runner."""
    reason = ov_reason()
    if reason:
        raise UnavailableError(f"openvino-cpu: {reason}")
    return OvRunner(Path(path), precision=precision, threads=threads, input_size=input_size,
                    weights=Path(weights) if weights else None)


def _open(precision: str):
    def run(model: ModelFile, options: dict) -> Runner:
        return OvRunner(model.path, precision=precision, threads=options.get("threads"),
                        input_size=model.preprocess.input_size)

    return run


def _bf16_reason() -> str | None:
    reason = ov_reason()
    if reason:
        return reason
    return None if has_native_bf16() else "this CPU has no native bf16 (AVX512-BF16/AMX)"


register_format(FORMAT, _is_ir, describe_ir)
register_backend(Backend("openvino-cpu", FILE_PRECISION, ("onnx", FORMAT), "cpu", _open("fp32"),
                         available=ov_reason))
register_backend(Backend("openvino-cpu", "bf16", ("onnx", FORMAT), "cpu", _open("bf16"),
                         available=_bf16_reason, default=False))
