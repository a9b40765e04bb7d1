"""ONNX Runtime backends and the ``onnx`` model format for :mod:`vggc.runtime`.

Format ``onnx`` (any ``.onnx`` file): :func:`describe_onnx` reads params from the initializers,
MACs/arch/preprocessing from the manifest ``<file>.onnx.json`` when there is one (else from the
file's ``vggc.*`` metadata, CIFAR-10 defaults and ONNX shape inference), and the file's
precision (``fp32``/``fp16``/``int8``) into ``ModelFile.meta["precision"]``.

Backends (``precision="file"``: each runs a file at the precision stored in it, so the same key
serves FP32, FP16 and QDQ-INT8 files and a result row reports the file's precision through
:func:`vggc.runtime.effective_precision`):

* ``onnxruntime-cpu``: CPU execution provider, intra-op threads = ``torch.get_num_threads()``
  (or the ``threads`` option), all graph optimisations;
* ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: the CUDA / TensorRT execution providers, only
  where ``onnxruntime-gpu`` provides them and a CUDA device is present. ONNX Runtime silently
  falls back to the next provider when one does not load; the runner checks the providers the
  session really uses (``session.get_providers()``) and refuses with
  ``<provider> did not load (session fell back to ...)`` instead of running under the wrong label.

Every ONNX Runtime runner records ``providers`` (what the session uses) and ``threads`` (its intra-op thread
count, read back from the session).

This module imports without onnxruntime installed; the backends then report why they cannot run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from vggc import formats
from vggc.errors import ModelFormatError, UnavailableError, first_line
from vggc.runtime import (
    FILE_PRECISION,
    Backend,
    ModelFile,
    Runner,
    preprocess_from_meta,
    read_manifest,
    register_backend,
    register_format,
)

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
             "MatMulInteger", "DynamicQuantizeLinear", "QGemm"}
# ONNX TensorProto element types
_FLOAT, _UINT8, _INT8, _INT32, _INT64, _FLOAT16, _BFLOAT16 = 1, 2, 3, 6, 7, 10, 16
_WEIGHT_TYPES = {_FLOAT, _UINT8, _INT8, _FLOAT16, _BFLOAT16}


# ----------------------------------------------------------------------------- reading .onnx files

def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() in formats.get("onnx").suffixes and path.is_file()


def load_onnx(path: str | Path, load_external_data: bool = False):
    """Return the ``ModelProto`` of ``path``; raise :class:`ModelFormatError` with one line if unreadable."""
    import onnx

    path = Path(path)
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: file is empty")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and friends
        first = first_line(err, 160)
        raise ModelFormatError(f"{path}: not a readable ONNX model ({first})") from None


def external_data_files(proto, path: Path) -> list[Path]:
    """Return the side files (``.data``) that ``proto``'s initializers are stored in."""
    files = []
    for init in proto.graph.initializer:
        if init.data_location == 1:  # TensorProto.EXTERNAL
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc:
                f = path.parent / loc
                if f not in files:
                    files.append(f)
    return files


def _metadata(proto) -> dict:
    out = {}
    for p in proto.metadata_props:
        if p.key.startswith("vggc."):
            key = p.key[len("vggc."):]
            try:
                out[key] = json.loads(p.value)
            except json.JSONDecodeError:
                out[key] = p.value
    return out


def onnx_precision(proto) -> str:
    """Guess a graph's precision: ``int8`` if it has quantize/QLinear ops, else ``fp16``/``bf16`` if
    its initializers are, else ``fp32``."""
    if any(n.op_type in QUANT_OPS for n in proto.graph.node):
        return "int8"
    types = {init.data_type for init in proto.graph.initializer}
    if _FLOAT16 in types:
        return "fp16"
    if _BFLOAT16 in types:
        return "bf16"
    return "fp32"


def _quant_param_names(proto) -> set[str]:
    """Initializer names used as scale / zero-point inputs of quantization ops."""
    names: set[str] = set()
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            names.update(n.input[1:])
        elif n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm"):
            names.update(n.input[i] for i in range(len(n.input)) if i % 3 != 0 and i < 8)
    return names


def onnx_params(proto) -> int:
    """Count weight elements in the initializers (float/int8 tensors; shapes, scales and zero points
    are not weights). BatchNorm folded into convs by the exporter no longer counts separately."""
    skip = _quant_param_names(proto)
    total = 0
    for init in proto.graph.initializer:
        if init.data_type in _WEIGHT_TYPES and init.name not in skip and len(init.dims) >= 1:
            total += int(np.prod(init.dims, dtype=np.int64))
    return total


def _input_shape(proto) -> list:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def onnx_macs(proto, input_size: int) -> int | None:
    """Multiply-accumulates of one image, from ONNX shape inference (Conv, Gemm, MatMul), or ``None``.

    Shape inference runs on a skeleton of the graph (large initializers become typed inputs), so
    it is cheap even for a 500 MB model.
    """
    import onnx
    from onnx import helper

    g = onnx.GraphProto()
    g.node.extend(proto.graph.node)
    g.output.extend(proto.graph.output)
    shapes: dict[str, list[int]] = {}
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
        if init.data_type in (_INT64, _INT32) and int(np.prod(init.dims, dtype=np.int64)) <= 64:
            g.initializer.append(init)  # shape constants: inference needs their values
        else:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    names = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in names:
            continue
        shape = _input_shape(proto)
        if len(shape) != 4:
            return None
        g.input.append(helper.make_tensor_value_info(inp.name, inp.type.tensor_type.elem_type,
                                                     [1, shape[1] or 3, input_size, input_size]))
    skel = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(skel, data_prop=True)
    except Exception:  # noqa: BLE001 - MACs are informative; unknown beats failing
        return None
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(vi.name, [d.dim_value for d in dims])
    total = 0
    for n in proto.graph.node:
        if n.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            w_name = n.input[3] if n.op_type == "QLinearConv" else n.input[1]
            out, w = shapes.get(n.output[0]), shapes.get(w_name)
            if not out or not w:
                return None
            total += int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        elif n.op_type in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "QGemm"):
            a_name = n.input[0]
            out = shapes.get(n.output[0])
            a = shapes.get(a_name)
            if not out or not a:
                return None
            k = a[-1]
            if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                k = a[0]
            total += int(np.prod(out, dtype=np.int64)) * int(k)
    return total


def describe_onnx(path: Path) -> ModelFile:
    """Return the :class:`ModelFile` of an ONNX file (see the module docstring for the sources)."""
    path = Path(path)
    proto = load_onnx(path)
    meta = read_manifest(path)
    if meta.get("kind") not in (None, "onnx") and "preprocess" not in meta:
        meta = {}  # e.g. a weights sidecar named <stem>.json that is not about this file
    embedded = _metadata(proto)
    pre_src = meta.get("preprocess") or embedded.get("preprocess")
    if not pre_src:
        shape = _input_shape(proto)
        size = shape[-1] if len(shape) == 4 and shape[-1] and shape[-1] == shape[-2] else None
        pre_src = {"input_size": size} if size else {}
    pre = preprocess_from_meta({"preprocess": pre_src})
    precision = meta.get("precision") or embedded.get("precision") or onnx_precision(proto)
    macs = meta.get("macs")
    if macs is None:
        macs = onnx_macs(proto, pre.input_size)
    files = [path, *external_data_files(proto, path)]
    doc = {**meta, "precision": precision, "onnx_metadata": embedded,
           "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
           "source_params": meta.get("params")}
    return ModelFile(path=path, format="onnx", preprocess=pre, files=files, params=onnx_params(proto),
                     macs=macs, arch=meta.get("arch") or embedded.get("arch") or "", meta=doc)


# ----------------------------------------------------------------------------- running

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtRunner(Runner):
    """An ONNX Runtime session. ``predict`` takes a float batch and returns CPU float32 logits.

    ``compile_seconds`` is the session build (graph optimisation, and for TensorRT the warm-up
    engine build) time.
    """

    def __init__(self, path: Path, providers: list, threads: int | None = None, warmup: bool = False,
                 input_size: int | None = None, require: str | None = None):
        """``require``: the execution provider the session must really use (raises
        :class:`UnavailableError` naming what it fell back to when it did not load)."""
        import onnxruntime as ort

        t0 = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            first = first_line(err, 200)
            raise ModelFormatError(f"{path}: ONNX Runtime cannot load it ({first})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = _NP_TYPES.get(inp.type, np.float32)
        self.providers = list(self.session.get_providers())
        self.threads = int(self.session.get_session_options().intra_op_num_threads)
        if require and require not in self.providers:
            self.session = None
            raise UnavailableError(f"{require} did not load (session fell back to "
                                   f"{', '.join(self.providers) or 'no provider'})")
        if warmup and input_size:
            shape = [1, inp.shape[1] if isinstance(inp.shape[1], int) else 3, input_size, input_size]
            self.session.run([self.output_name], {self.input_name: np.zeros(shape, self.input_dtype)})
        self.compile_seconds = time.perf_counter() - t0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.input_dtype is not np.float32:
            arr = arr.astype(self.input_dtype)
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def close(self) -> None:
        self.session = None


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


def _cpu_reason() -> str | None:
    provs = _ort_providers()
    if provs is None:
        return "onnxruntime not installed"
    return None if "CPUExecutionProvider" in provs else "onnxruntime has no CPU execution provider"


def _gpu_reason(ep: str, what: str) -> str | None:
    provs = _ort_providers()
    if provs is None:
        return "onnxruntime not installed"
    if ep not in provs:
        return f"onnxruntime-gpu not installed ({what} execution provider missing)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _open_cpu(model: ModelFile, options: dict) -> Runner:
    return OrtRunner(model.path, ["CPUExecutionProvider"], threads=options.get("threads"),
                     require="CPUExecutionProvider")


def _open_cuda(model: ModelFile, options: dict) -> Runner:
    dev = int(options.get("device_id", 0))
    return OrtRunner(model.path, [("CUDAExecutionProvider", {"device_id": dev}), "CPUExecutionProvider"],
                     threads=options.get("threads"), warmup=True, input_size=model.preprocess.input_size,
                     require="CUDAExecutionProvider")


def _open_tensorrt(model: ModelFile, options: dict) -> Runner:
    s = model.preprocess.input_size
    max_batch = int(options.get("max_batch", 1024))
    opt_batch = int(options.get("opt_batch", min(256, max_batch)))
    dev = int(options.get("device_id", 0))
    trt = {"device_id": dev, "trt_max_workspace_size": int(options.get("workspace", 4 << 30)),
           "trt_profile_min_shapes": f"input:1x3x{s}x{s}",
           "trt_profile_opt_shapes": f"input:{opt_batch}x3x{s}x{s}",
           "trt_profile_max_shapes": f"input:{max_batch}x3x{s}x{s}"}
    if model.meta.get("precision") == "int8":
        trt["trt_int8_enable"] = True  # QDQ graphs: TensorRT takes the scales from the Q/DQ nodes
    return OrtRunner(model.path, [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": dev}),
                                  "CPUExecutionProvider"],
                     threads=options.get("threads"), warmup=True, input_size=s, require="TensorrtExecutionProvider")


def open_onnx_cpu(path: str | Path, threads: int | None = None) -> OrtRunner:
    """Open an ONNX file on the ONNX Runtime CPU provider (for code outside the registry)."""
    reason = _cpu_reason()
    if reason:
        raise UnavailableError(f"onnxruntime-cpu: {reason}")
    return OrtRunner(Path(path), ["CPUExecutionProvider"], threads=threads)


register_format("onnx", _is_onnx, describe_onnx)
register_backend(Backend("onnxruntime-cpu", FILE_PRECISION, ("onnx",), "cpu", _open_cpu, available=_cpu_reason))
register_backend(Backend("onnxruntime-cuda", FILE_PRECISION, ("onnx",), "cuda", _open_cuda,
                         available=lambda: _gpu_reason("CUDAExecutionProvider", "CUDA")))
register_backend(Backend("onnxruntime-tensorrt", FILE_PRECISION, ("onnx",), "cuda", _open_tensorrt,
                         available=lambda: _gpu_reason("TensorrtExecutionProvider", "TensorRT")))
