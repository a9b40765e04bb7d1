"""What a source ONNX file must be for a TensorRT engine: its facts (precision from manifest or
graph, I/O names, shapes), that its precision is the requested one, and that an INT8 file is the
explicit symmetric-int8 Q/DQ form TensorRT's ONNX parser takes."""

from __future__ import annotations

from pathlib import Path

from vggc.errors import InputError, ModelFormatError

PRECISIONS = ("fp16", "int8")


def check_qdq_for_tensorrt(proto, path: Path) -> None:
    """Raise :class:`InputError` unless ``proto``'s quantization is TensorRT's explicit INT8 form:
    QuantizeLinear/DequantizeLinear pairs (QDQ format, not QLinearConv & co.) with signed int8
    zero points equal to 0 (TensorRT supports symmetric INT8 only; ONNX Runtime's default
    ``activation_type=QUInt8`` gives uint8/asymmetric activations that TensorRT rejects).
    For TensorRT, ONNX Runtime's quantizer also documents ``DedicatedQDQPair=True`` ("In TRT, QDQ
    pair can't be shared between nodes", onnxruntime/quantization/qdq_quantizer.py) and
    ``QuantizeBias=False`` keeps biases float; those are not enforced here."""
    import numpy as np
    from onnx import numpy_helper

    qop = sorted({n.op_type for n in proto.graph.node
                  if n.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")})
    if qop:
        raise InputError(f"{path}: quantized in QOperator format ({', '.join(qop)}); TensorRT needs QDQ format "
                         "(quantize_static(..., quant_format=QuantFormat.QDQ))")
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or not n.input[2]:
            continue
        zp = inits.get(n.input[2])
        if zp is None:
            continue  # produced by a node; TensorRT's parser will judge it
        if zp.data_type == 2:  # TensorProto.UINT8: ONNX Runtime's default QUInt8 activations
            raise InputError(f"{path}: Q/DQ node {n.name or n.output[0]} is uint8 (asymmetric activations); TensorRT "
                             "needs symmetric int8: quantize with activation_type=QuantType.QInt8, weight_type="
                             "QuantType.QInt8, extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}")
        if zp.data_type == 3 and np.any(numpy_helper.to_array(zp) != 0):  # INT8 with a non-zero zero point
            raise InputError(f"{path}: Q/DQ node {n.name or n.output[0]} has a non-zero zero point; TensorRT "
                             "supports symmetric INT8 only (extra_options ActivationSymmetric/WeightSymmetric=True)")
        # other zero-point types (int32 for quantized biases, fp8) are left to TensorRT's parser to judge


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

