"""ONNX Runtime INT8 quantization of an FP32 ONNX export (``onnxruntime.quantization``).

Steps: :func:`vggc.export.onnx.export_onnx` (dynamo exporter, dynamic batch) ->
``quant_pre_process`` (shape inference + graph optimisation, which folds BatchNorm into the convs)
-> ``quantize_static`` or ``quantize_dynamic``.

* **static**: QDQ format, activations *and* weights signed int8 (S8S8), both symmetric (zero point
  0), weights per output channel by default, calibrated with MinMax / Entropy / Percentile on the
  given batches; biases stay FP32 (``QuantizeBias=False``). Symmetric S8S8 QDQ without int32 bias
  Q/DQ is what TensorRT's explicit-quantization parser accepts, so the same file is the input of
  ``vggc engine --precision int8``. On the CPU, ONNX Runtime quantizes the float bias itself and
  fuses each DQ -> Conv -> Q group into ``QLinearConv`` (and Gemm into ``QGemm``), i.e. real int8
  kernels: the optimised graph is the same as with int32 biases (tests/test_gpu_deploy.py checks it).
* **dynamic**: ``quantize_dynamic`` restricted to ``MatMul``/``Gemm`` (the Linear layers): weights
  int8, activations quantized at run time. Convolutions are *not* quantized: ORT's dynamic
  ``ConvInteger`` has no optimised CPU kernel and made this VGG16 ~5x slower than FP32 here.

``reduce_range`` (7-bit weights): ONNX Runtime's x86 int8 GEMM without VNNI uses ``vpmaddubsw``,
whose int16 pair sums can saturate; ORT's documentation recommends ``reduce_range=True`` on such
CPUs. Measured here (AVX2, no VNNI) on 1,000 test images: 88.2% without, 89.6% with (FP32 89.3%).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from vggc.errors import UnavailableError, VggcError, first_line
from vggc.limits import CALIB_METHODS

DEFAULT_PERCENTILE = 99.999
QLINEAR_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger")


def ort_reason() -> str | None:
    """Return why ONNX Runtime quantization cannot run here, or ``None``."""
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_static  # noqa: F401
    except Exception as err:  # noqa: BLE001
        first = first_line(err, 120)
        return f"onnxruntime.quantization not importable ({first})"
    return None


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime.quantization's logging/print chatter (the library never prints)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        root.setLevel(level)


def _reader_cls():
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds pre-built batches; supports ``set_range`` so ORT collects statistics batch by
        batch (``CalibStridedMinMax``) instead of holding every activation of every image."""

        def __init__(self, batches: Sequence[np.ndarray], input_name: str, tick=None):
            self.batches = list(batches)
            self.input_name = input_name
            self.tick = tick
            self.set_range(0, len(self.batches))

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(range(start_index, end_index))

        def get_next(self):
            i = next(self._it, None)
            if i is None:
                return None
            if self.tick:
                self.tick()
            return {self.input_name: self.batches[i]}

    return BatchReader


def calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def export_fp32(model: nn.Module, out: Path, *, input_size: int, opset: int, preprocess=None) -> Path:
    """FP32 ONNX export through the shared exporter (:func:`vggc.export.onnx.export_onnx`)."""
    from vggc.export.onnx import export_onnx

    return export_onnx(model, out, input_size=input_size, opset=opset, fp16=False, preprocess=preprocess)


def preprocess_for_quant(src: Path, out: Path) -> Path:
    """``quant_pre_process``: symbolic + ONNX shape inference and ORT graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(src), str(out))
    except Exception as err:  # noqa: BLE001
        raise VggcError(f"onnxruntime quant_pre_process failed: {first_line(err)}") from None
    return out


def quantize_onnx_static(src: Path, out: Path, batches: Sequence[np.ndarray], *, calib_method: str = "minmax",
                         per_channel: bool = True, reduce_range: bool = True,
                         percentile: float = DEFAULT_PERCENTILE, input_name: str = "input", tick=None,
                         nodes_to_exclude: Sequence[str] | None = None) -> dict:
    """QDQ S8S8 symmetric static quantization of ``src`` (pre-processed FP32 ONNX) into ``out``;
    ``nodes_to_exclude`` stay FP32. Returns the settings used."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reader = _reader_cls()(batches, input_name, tick)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True,
             # biases stay FP32: ORT's default int32 bias DequantizeLinear is refused by TensorRT's ONNX parser
             # (Q/DQ types INT8/FP8/INT4/FP4 only); TensorRT fuses a float bias into the INT8 conv, and ORT's CPU
             # optimiser quantizes it itself, so the file still runs as QLinearConv/QGemm (runtime_ops shows it)
             "QuantizeBias": False,
             # per-channel weights on the output-channel axis (ORT's defaults are Conv 0, Gemm 0 with transB;
             # a MatMul's B is [in, out]: axis 1) - TensorRT's per-channel scales are per output channel
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
             # statistics gathered one batch at a time (histograms merged), bounded memory
             "CalibStridedMinMax": 1}
    if calib_method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    try:
        with _quiet():
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibration_method(calib_method),
                            calibration_providers=["CPUExecutionProvider"], extra_options=extra,
                            nodes_to_exclude=list(nodes_to_exclude or []))
    except Exception as err:  # noqa: BLE001
        raise VggcError(f"onnxruntime quantize_static failed: {first_line(err)}") from None
    return {"quant_format": "QDQ", "activation_type": "int8", "weight_type": "int8", "symmetric": True,
            "extra_options": extra, "fp32_nodes": list(nodes_to_exclude or [])}


def quantize_onnx_dynamic(src: Path, out: Path, *, per_channel: bool = True, reduce_range: bool = True) -> dict:
    """Dynamic int8 quantization of the MatMul/Gemm (Linear) layers of ``src`` into ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gemm"]
    try:
        with _quiet():
            quantize_dynamic(str(src), str(out), op_types_to_quantize=ops, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8)
    except Exception as err:  # noqa: BLE001
        raise VggcError(f"onnxruntime quantize_dynamic failed: {first_line(err)}") from None
    return {"op_types": ops, "weight_type": "int8"}


def count_quantized_ops(proto) -> dict:
    """Count quantized compute nodes in a QDQ / integer-op graph: convs and linears whose weight comes
    from a DequantizeLinear (QDQ), plus integer ops (dynamic mode)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name for i in proto.graph.initializer}
    counts = {"conv": 0, "linear": 0}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            p = producers.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
                counts["conv" if n.op_type == "Conv" else "linear"] += 1
        elif n.op_type in ("ConvInteger", "QLinearConv"):
            counts["conv"] += 1
        elif n.op_type in ("MatMulInteger", "QLinearMatMul", "QGemm"):
            counts["linear"] += 1
    return counts


def optimized_op_types(path: Path, threads: int | None = None) -> dict:
    """Op types of the graph ONNX Runtime's CPU provider actually runs (after its optimisations):
    shows whether QDQ groups became ``QLinearConv``/``QGemm`` int8 kernels."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="vggc-ortopt-") as d:
        opt = Path(d) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(opt)
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(opt))
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def set_vggc_metadata(path: Path, values: dict) -> None:
    """Rewrite ``vggc.*`` metadata of the ONNX file at ``path`` in place (ORT's quantizer copies the
    FP32 source's ``vggc.precision=fp32`` into the quantized file)."""
    import onnx

    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if not p.key.startswith("vggc.") or p.key[5:] not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in values.items():
        e = proto.metadata_props.add()
        e.key = f"vggc.{k}"
        e.value = v if isinstance(v, str) else json.dumps(v)
    proto.producer_name = "vggc"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def batches_to_numpy(batches: Iterator[torch.Tensor]) -> list[np.ndarray]:
    return [np.ascontiguousarray(b.detach().cpu().float().numpy()) for b in batches]


def require_ort() -> None:
    reason = ort_reason()
    if reason:
        raise UnavailableError(f"onnxruntime quantization: {reason}")




def quantize_to_file(model: nn.Module, tmp: Path, *, mode, batches, method, per_channel, reduce_range, percentile,
                     opset, preprocess, arch, progress, budget=None, threads=None, fp32_onnx=None) -> tuple[dict, int]:
    """Export ``model`` to FP32 ONNX (or use ``fp32_onnx``, an already checked FP32 export of it),
    quantize it (``mode`` static/dynamic) and write the INT8 ONNX to ``tmp``; return ``(facts, FP32
    ONNX size in bytes)``. ``budget`` (static only): the
    :func:`vggc.compress.quantize.budget.budget_search` runner that picks the nodes kept FP32
    (``facts["budget"]``)."""
    from vggc.compress.quantize.budget import ort_trials
    from vggc.export.onnx import DEFAULT_OPSET

    require_ort()
    opset = opset or DEFAULT_OPSET
    with tempfile.TemporaryDirectory(prefix="vggc-quant-") as d:
        fp32 = Path(fp32_onnx) if fp32_onnx else export_fp32(model, Path(d) / "fp32.onnx",
                                                             input_size=preprocess.input_size, opset=opset,
                                                             preprocess=preprocess)
        fp32_size = fp32.stat().st_size
        pre_path = preprocess_for_quant(fp32, Path(d) / "pre.onnx")
        q_path = Path(d) / "int8.onnx"
        if mode == "static":
            arrays = batches_to_numpy(batches)
            kw = {"calib_method": method, "per_channel": per_channel, "reduce_range": reduce_range,
                  "percentile": percentile}
            chosen = None
            if budget is not None:
                chosen = budget(ort_trials(pre_path, lambda out, excl: quantize_onnx_static(
                    pre_path, out, arrays, nodes_to_exclude=excl, **kw), Path(d), threads), arrays)
            bar = iter(progress(range(len(arrays)), total=len(arrays), desc="calibrate"))
            facts = quantize_onnx_static(pre_path, q_path, arrays, tick=lambda: next(bar, None),
                                         nodes_to_exclude=chosen.excluded if chosen else None, **kw)
            for _ in bar:  # close the progress bar
                pass
            if chosen is not None:
                facts["budget"] = chosen.to_dict()
        else:
            facts = quantize_onnx_dynamic(pre_path, q_path, per_channel=per_channel, reduce_range=reduce_range)
        set_vggc_metadata(q_path, {"precision": "int8", "quant_mode": mode, "preprocess": preprocess.to_dict(),
                                   "arch": arch, "input_size": str(preprocess.input_size)})
        import onnx

        facts["quantized_layers"] = count_quantized_ops(onnx.load(str(q_path)))
        facts["runtime_ops"] = optimized_op_types(q_path)
        facts["opset"] = opset
        tmp.write_bytes(q_path.read_bytes())
    return facts, fp32_size


# ----------------------------------------------------------------------------- the backend interface
# (vggc.compress.quantize.backend; the format record is vggc.formats' "onnx")

def reason() -> str | None:
    """Return why ONNX Runtime quantization cannot run here, or ``None``."""
    return ort_reason()


def check(*, mode: str, calib_method: str | None, per_channel: bool, preset: str) -> None:
    """``--backend onnxruntime`` takes every shared option (the calibration methods are checked by the core)."""


def write(job, tmp: Path, companions: list[Path]) -> tuple[dict, int]:
    """Write the INT8 ONNX of ``job`` to ``tmp``; return ``(facts, FP32 ONNX size in bytes)``."""
    return quantize_to_file(job.model, tmp, mode=job.mode, batches=job.batches, method=job.method,
                            per_channel=job.per_channel, reduce_range=job.reduce_range, percentile=job.percentile,
                            opset=job.opset, preprocess=job.preprocess, arch=job.arch, progress=job.progress,
                            budget=job.budget, threads=job.threads, fp32_onnx=job.fp32_onnx)


def open_for_eval(path: Path, companions: list[Path], *, preprocess, batch_size: int, threads: int | None,
                  which: str | None = None):
    """Return ``(runner, "onnxruntime-cpu")`` for the just-written file."""
    from vggc.export.ort_backend import open_onnx_cpu

    return open_onnx_cpu(path, threads=threads), "onnxruntime-cpu"


def manifest_extra(out: Path, facts: dict) -> dict:
    """Return the INT8 ONNX manifest's own keys (the graph's input/output names and opset)."""
    from vggc.export.onnx import INPUT_NAME, OUTPUT_NAME

    return {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "opset": facts["opset"], "dynamic_batch": True}


def settings_extra(job) -> dict:
    """The ONNX Runtime backend adds no settings of its own (``opset`` comes from the written facts)."""
    return {}


def notes(job) -> list[str]:
    """Return what dynamic mode leaves out with ONNX Runtime."""
    if job.mode != "dynamic":
        return []
    return ["ONNX Runtime dynamic mode quantizes MatMul/Gemm only: its ConvInteger kernel is "
            "~5x slower than FP32 Conv on CPU"]


__all__ = ["CALIB_METHODS", "count_quantized_ops", "export_fp32", "optimized_op_types", "ort_reason",
           "preprocess_for_quant", "quantize_onnx_dynamic", "quantize_onnx_static", "quantize_to_file",
           "set_vggc_metadata"]
