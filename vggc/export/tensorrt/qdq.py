"""What a source ONNX file must be for a TensorRT engine: its facts (precision from manifest or
graph, I/O names, shapes), that its precision is the requested one, and that an INT8 file is the
explicit symmetric-int8 Q/DQ form TensorRT's ONNX parser takes."""

from __future__ import annotations

from pathlib import Path

from vggc.errors import InputError, ModelFormatError

PRECISIONS = ("fp16", "int8")


# ONNX TensorProto element types a Q/DQ node may carry in TensorRT's ONNX parser (onnx-tensorrt
# docs/operators.md, QuantizeLinear / DequantizeLinear: "INT8, FP8, FP4, INT4", zero point must be zero)
_TRT_QDQ_TYPES = {3: "INT8", 17: "FP8 (E4M3FN)", 22: "INT4", 23: "FP4 (E2M1)"}
_ONNX_TYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                    10: "FLOAT16", 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2",
                    20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}


def qdq_type(node, inits: dict, producers: dict) -> int | None:
    """The quantized element type (ONNX TensorProto enum) of a QuantizeLinear / DequantizeLinear node:
    a DQ's quantized input (initializer, zero point, or the Q that feeds it), a Q's zero point,
    ``output_dtype`` attribute or ONNX's default UINT8. ``None`` when only run-time values decide it."""
    zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "DequantizeLinear":
        if node.input[0] in inits:
            return inits[node.input[0]].data_type
        if zp is not None:
            return zp.data_type
        src = producers.get(node.input[0])
        return qdq_type(src, inits, producers) if src is not None and src.op_type == "QuantizeLinear" else None
    if zp is not None:
        return zp.data_type
    if len(node.input) > 2 and node.input[2]:
        return None  # zero point computed by a node
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return int(attr.i)
    return 2  # QuantizeLinear without a zero point: uint8 (ONNX spec)


def check_qdq_for_tensorrt(proto, path: Path) -> None:
    """Raise :class:`InputError` (one line, naming the node) unless ``proto``'s quantization is
    TensorRT's explicit form: QuantizeLinear/DequantizeLinear (QDQ format, not QLinearConv & co.)
    whose quantized type TensorRT's ONNX parser takes (INT8, FP8 E4M3, INT4, FP4 - so no INT32 bias
    DQ, which ONNX Runtime writes unless ``QuantizeBias=False``, and no UINT8) and whose INT8 zero
    points are 0 (TensorRT supports symmetric INT8 only; ONNX Runtime's default
    ``activation_type=QUInt8`` gives uint8/asymmetric activations)."""
    import numpy as np
    from onnx import numpy_helper

    qop = sorted({n.op_type for n in proto.graph.node
                  if n.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")})
    if qop:
        raise InputError(f"{path}: quantized in QOperator format ({', '.join(qop)}); TensorRT needs QDQ format "
                         "(quantize_static(..., quant_format=QuantFormat.QDQ))")
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        what = f"Q/DQ node {n.name or n.output[0]}"
        t = qdq_type(n, inits, producers)
        if t == 2:  # TensorProto.UINT8: ONNX Runtime's default QUInt8 activations
            raise InputError(f"{path}: {what} is uint8 (asymmetric activations); TensorRT "
                             "needs symmetric int8: quantize with activation_type=QuantType.QInt8, weight_type="
                             "QuantType.QInt8, extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}")
        if t == 6:  # TensorProto.INT32: ONNX Runtime's quantized biases
            raise InputError(f"{path}: {what} is INT32 (a quantized bias); TensorRT's ONNX parser takes INT8/FP8/"
                             "INT4/FP4 Q/DQ only: quantize with extra_options={'QuantizeBias': False} (biases stay "
                             "float) - `vggc quantize --backend onnxruntime --mode static` does")
        if t is not None and t not in _TRT_QDQ_TYPES:
            raise InputError(f"{path}: {what} is {_ONNX_TYPE_NAMES.get(t, f'type {t}')}; TensorRT's ONNX parser "
                             f"takes {'/'.join(_TRT_QDQ_TYPES.values())} Q/DQ only")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and zp.data_type == 3 and np.any(numpy_helper.to_array(zp) != 0):
            raise InputError(f"{path}: {what} has a non-zero zero point; TensorRT "
                             "supports symmetric INT8 only (extra_options ActivationSymmetric/WeightSymmetric=True)")


def onnx_facts(onnx_path: Path) -> dict:
    """Read an ONNX file's precision (manifest, else embedded metadata, else graph), I/O names and
    shapes, preprocessing and sizes. Raises :class:`ModelFormatError` for unreadable files."""
    from vggc.export.ort_backend import describe_onnx, load_onnx, onnx_precision
    from vggc.runtime import read_manifest

    proto = load_onnx(onnx_path)
    mf = describe_onnx(onnx_path)
    graph_precision = onnx_precision(proto)
    manifest = read_manifest(Path(onnx_path))
    # the manifest is authoritative; otherwise the graph itself. Embedded vggc.precision metadata is not
    # trusted: onnxruntime's quantize_static copies the FP32 source's metadata into the QDQ file.
    if manifest.get("precision"):
        precision, source = str(manifest["precision"]), "manifest"
    else:
        precision, source = graph_precision, "graph"
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ModelFormatError(f"{onnx_path}: expected one input and one output, found {len(inputs)} and "
                               f"{len(proto.graph.output)}")

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    in_shape = dims(inputs[0])
    if len(in_shape) != 4 or any(d is None for d in in_shape[1:]):
        raise ModelFormatError(f"{onnx_path}: input {inputs[0].name} has shape {in_shape}; expected N x C x H x W "
                               "with fixed C, H, W")
    return {"proto": proto, "model": mf, "precision": precision,
            "precision_source": source, "graph_precision": graph_precision, "input_name": inputs[0].name,
            "input_shape": in_shape, "input_elem_type": inputs[0].type.tensor_type.elem_type,
            "output_name": proto.graph.output[0].name, "output_shape": dims(proto.graph.output[0]),
            "output_elem_type": proto.graph.output[0].type.tensor_type.elem_type}


def check_source_precision(facts: dict, requested: str, path: Path) -> None:
    """Raise :class:`InputError` when the ONNX file's precision is not the requested engine precision."""
    if requested not in PRECISIONS:
        raise InputError(f"--precision {requested}: choose from {', '.join(PRECISIONS)}")
    have, graph = facts["precision"], facts["graph_precision"]
    if requested == "fp16" and have != "fp16":
        raise InputError(f"{path}: is an {have.upper()} ONNX ({facts['precision_source']}), not FP16; FP16 engines "
                         "are built from an FP16 export (TensorRT 11 has no FP16 builder flag): "
                         "vggc export MODEL.pt --fp16 --out model-fp16.onnx")
    if requested == "int8" and have != "int8":
        raise InputError(f"{path}: is an {have.upper()} ONNX ({facts['precision_source']}), not a QDQ INT8 one; INT8 "
                         "engines are built from explicit Q/DQ: vggc quantize MODEL --backend onnxruntime "
                         "--mode static")
    if have != graph:
        raise InputError(f"{path}: its {facts['precision_source']} says {have.upper()} but the graph is "
                         f"{graph.upper()}; re-export it")
    if requested == "int8":
        check_qdq_for_tensorrt(facts["proto"], path)

