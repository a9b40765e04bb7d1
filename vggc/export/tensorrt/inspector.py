"""Reading an engine's layers: deserialise it, list its I/O tensors and profile, fetch the engine
inspector JSON (any TensorRT 10/11 schema), map each layer's type strings to a precision and check
that every convolution / GEMM layer computes in the requested one (:class:`PrecisionCheck`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vggc.errors import VggcError, first_line
from vggc.export.tensorrt.probe import _make_logger

# Layers that carry the arithmetic: their input type is the precision the engine really computes in.
_COMPUTE_PARAMETER_TYPES = {"Convolution", "Deconvolution", "MatrixMultiply", "FullyConnected", "Gemm"}
_COMPUTE_LAYER_HINTS = ("convolution", "gemm", "matrixmultiply", "fullyconnected")
_NON_COMPUTE_TYPES = {"reformat", "noop", "constant", "shuffle", "cast", "quantize", "dequantize",
                      "shape", "identity"}


def precision_from_text(text: str) -> str:
    """Map an inspector type/format string ("Half", "Row major linear FP32 format",
    "Thirty-two wide channel vectorized row major Int8 format", "Float") to fp32/fp16/int8/...;
    ``unknown`` for "N/A due to dynamic shapes" and anything unrecognised."""
    u = text.upper()
    if not u.strip() or "N/A" in u:
        return "unknown"
    if "BF16" in u or "BFLOAT16" in u:
        return "bf16"
    if "FP8" in u or "E4M3" in u:
        return "fp8"
    if "INT8" in u:
        return "int8"
    if "FP16" in u or "HALF" in u:
        return "fp16"
    if "FP32" in u or "FLOAT" in u:
        return "fp32"
    for name in ("INT64", "INT32", "INT4", "UINT8", "BOOL", "FP4"):
        if name in u:
            return name.lower()
    return "unknown"


def tensor_precision(tensor: Any) -> str:
    """Precision of one tensor entry of a layer's ``Inputs``/``Outputs`` (any TensorRT 10/11 schema)."""
    if isinstance(tensor, str):
        return precision_from_text(tensor)
    if not isinstance(tensor, dict):
        return "unknown"
    for key in ("DataType", "Datatype", "Format/Datatype", "Format/DataType", "Format"):
        value = tensor.get(key)
        if isinstance(value, str):
            p = precision_from_text(value)
            if p != "unknown":
                return p
    return "unknown"


def is_fused_layer(layer: dict) -> bool:
    """True for a layer TensorRT compiled into a Myelin graph / ForeignNode: its inspector entry
    lists only the fused subgraph's boundary tensors, so the precision of the convolutions and
    GEMMs inside cannot be read."""
    lt = str(layer.get("LayerType", "")).lower()
    name = str(layer.get("Name", ""))
    return "myelin" in lt or "foreign" in lt or "ForeignNode" in name


def is_compute_layer(layer: dict) -> bool:
    """True for convolution / GEMM / matrix-multiply layers (their precision is the engine's);
    False for layers fused into Myelin/ForeignNode (:func:`is_fused_layer`), counted apart."""
    if is_fused_layer(layer):
        return False
    if layer.get("ParameterType") in _COMPUTE_PARAMETER_TYPES:
        return True
    lt = str(layer.get("LayerType", "")).lower()
    if lt in _NON_COMPUTE_TYPES:
        return False
    return any(h in lt for h in _COMPUTE_LAYER_HINTS)


def layer_precision(layer: dict) -> str:
    """A layer's compute precision from ALL its inputs with a known type: that precision when they
    agree, ``"a+b"`` (sorted) when they differ (e.g. an FP16 conv fused with an FP32 residual
    input), ``unknown`` when none has a type."""
    seen = sorted({p for p in (tensor_precision(t) for t in layer.get("Inputs") or []) if p != "unknown"})
    return "+".join(seen) if seen else "unknown"


def _layers(info: str | dict | list) -> list:
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as err:
            raise VggcError(f"engine inspector returned unreadable JSON ({first_line(err)})") from None
    if isinstance(info, dict):
        info = info.get("Layers", [])
    return list(info) if isinstance(info, list) else []


def summarize_layers(info: str | dict | list) -> dict:
    """Count layers by precision from engine-inspector JSON (``get_engine_information(JSON)``).

    Returns ``layers`` (all), ``detailed`` (False when the engine was built without DETAILED
    profiling verbosity: layers are bare names), ``by_precision`` (all layers), ``compute_layers``
    and ``compute_by_precision`` (conv/GEMM only), ``compute`` (name, type, precision of each) and
    ``fused`` (names of the Myelin/ForeignNode layers, whose precision is not verifiable).
    """
    layers = _layers(info)
    detailed = [ly for ly in layers if isinstance(ly, dict)]
    compute = [{"name": str(ly.get("Name", "?")), "type": str(ly.get("LayerType", "?")),
                "precision": layer_precision(ly)} for ly in detailed if is_compute_layer(ly)]
    fused = [str(ly.get("Name", "?")) for ly in detailed if is_fused_layer(ly)]
    return {"layers": len(layers), "detailed": bool(detailed) and len(detailed) == len(layers),
            "by_precision": dict(Counter(layer_precision(ly) for ly in detailed)),
            "compute_layers": len(compute), "compute_by_precision": dict(Counter(c["precision"] for c in compute)),
            "compute": compute, "fused": fused}


@dataclass
class PrecisionCheck:
    """Whether every compute layer of an engine runs in the requested precision."""

    requested: str
    compute_layers: int
    matching: int
    offending: list[dict] = field(default_factory=list)  # known precision != requested
    unknown: int = 0
    detailed: bool = True
    fused: list[str] = field(default_factory=list)  # Myelin/ForeignNode layers: precision not verifiable

    @property
    def verified(self) -> bool:
        """True when the inspector gave a type for every compute layer (and there is at least one) and
        no layer hides its precision inside a Myelin/ForeignNode."""
        return self.detailed and self.compute_layers > 0 and self.unknown == 0 and not self.fused

    @property
    def ok(self) -> bool:
        return self.verified and not self.offending

    @property
    def none_matching(self) -> bool:
        return self.verified and self.matching == 0

    def message(self) -> str:
        want = self.requested.upper()
        if not self.detailed:
            return "layer precisions unverifiable: engine built without DETAILED profiling verbosity"
        if self.fused:
            names = ", ".join(n[:60] for n in self.fused[:2]) + (f" (+{len(self.fused) - 2} more)"
                                                               if len(self.fused) > 2 else "")
            seen = (f"; of the other {self.compute_layers} convolution/GEMM layers {self.matching} run in {want}"
                    if self.compute_layers else "")
            return (f"precision not verifiable: {len(self.fused)} layer(s) fused into Myelin/ForeignNode "
                    f"({names}){seen}")
        if self.compute_layers == 0:
            return "layer precisions unverifiable: the engine inspector lists no convolution/GEMM layers"
        if self.unknown:
            return (f"layer precisions unverifiable: {self.unknown}/{self.compute_layers} convolution/GEMM layers "
                    "have no type in the inspector output")
        if not self.offending:
            return f"all {self.compute_layers} convolution/GEMM layers run in {want}"
        kinds = Counter(o["precision"].upper() for o in self.offending)
        what = ", ".join(f"{n} in {k}" for k, n in kinds.most_common())
        names = ", ".join(o["name"][:60] for o in self.offending[:3])
        more = f" (+{len(self.offending) - 3} more)" if len(self.offending) > 3 else ""
        return (f"{len(self.offending)}/{self.compute_layers} convolution/GEMM layers do not run in {want} "
                f"({what}): {names}{more}")

    def to_dict(self) -> dict:
        return {"requested": self.requested, "ok": self.ok, "verified": self.verified,
                "compute_layers": self.compute_layers, "matching": self.matching, "unknown": self.unknown,
                "not_verifiable": len(self.fused), "fused_layers": self.fused[:50],
                "offending": self.offending[:50], "message": self.message()}


def check_layer_precision(info: str | dict | list, requested: str) -> PrecisionCheck:
    """Check the engine-inspector JSON ``info``: every conv/GEMM layer must compute in ``requested``."""
    s = summarize_layers(info)
    offending = [c for c in s["compute"] if c["precision"] not in ("unknown", requested)]
    unknown = sum(1 for c in s["compute"] if c["precision"] == "unknown")
    matching = sum(1 for c in s["compute"] if c["precision"] == requested)
    return PrecisionCheck(requested, s["compute_layers"], matching, offending, unknown,
                          detailed=s["detailed"] or s["layers"] == 0, fused=s["fused"])



def _torch_dtype_name(trt_dtype) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    return {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
            "BOOL": "bool", "UINT8": "uint8", "BF16": "bfloat16", "FP8": "float8_e4m3fn"}.get(name, name.lower())


def inspect_engine(trt, engine_bytes: bytes, logger=None) -> dict:
    """Deserialise ``engine_bytes`` and return its I/O tensors, profile shapes and the inspector JSON
    (read with an execution context at the profile's opt shape, so dynamic shapes resolve)."""
    logger = logger or _make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        why = logger.errors[-1] if getattr(logger, "errors", None) else "deserialize_cuda_engine returned None"
        raise VggcError(f"TensorRT cannot load the engine it just built ({why})")
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {"name": name, "dtype": _torch_dtype_name(engine.get_tensor_dtype(name)),
                 "shape": [int(d) for d in engine.get_tensor_shape(name)]}
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            entry["profile"] = {"min": [int(d) for d in lo], "opt": [int(d) for d in opt], "max": [int(d) for d in hi]}
            inputs.append(entry)
        else:
            outputs.append(entry)
    context = engine.create_execution_context()
    for entry in inputs:
        context.set_input_shape(entry["name"], tuple(entry["profile"]["opt"]))
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    detailed = str(getattr(engine, "profiling_verbosity", "")).endswith("DETAILED")
    return {"inputs": inputs, "outputs": outputs, "info": info, "num_layers": int(engine.num_layers),
            "profiling_detailed": detailed}

