"""GPU deployment: TensorRT engines, Torch-TensorRT, Triton repositories, GPU backends.

Nothing here needs a GPU. Without tensorrt / CUDA every command must fail with one line and exit
code 3; the logic around TensorRT (precision check of inspector JSON, engine/GPU compatibility,
the build orchestration) is tested on fakes; the Triton repository is parsed back and its ONNX
run on ONNX Runtime CPU. Tests that need a real TensorRT + CUDA skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_tiny_vgg
from conftest import run_cli as run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vggc import runtime  # noqa: E402
from vggc.artifacts import save_state_dict, sha256_file, write_manifest  # noqa: E402
from vggc.errors import InputError, UnavailableError, VggcError  # noqa: E402
from vggc.export import tensorrt as vtrt  # noqa: E402
from vggc.export.tensorrt import probe as vtrt_probe  # noqa: E402
from vggc.export.triton import parse_pbtxt, to_pbtxt, write_triton_repo  # noqa: E402

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None
HAVE_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny VGG state_dict with its FP32 and FP16 ONNX exports (with manifests)."""
    d = tmp_path_factory.mktemp("gpu")
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(100.0)  # O(1) logits
    weights = d / "tiny.pt"
    save_state_dict(model.state_dict(), weights)
    # the FP16 export also writes a Triton repository with a (fake, manifest-only) engine as second model
    engine = _fake_engine_for_triton(d)
    res = run("export", weights, "--no-parity", "--out", d / "tiny.onnx")
    assert res.exit_code == 0, res.output
    res = run("export", weights, "--no-parity", "--fp16", "--out", d / "tiny16.onnx", "--triton", d / "repo",
              "--triton-engine", engine, "--json")
    assert res.exit_code == 0, res.output
    return {"dir": d, "model": model, "weights": weights, "fp32": d / "tiny.onnx", "fp16": d / "tiny16.onnx",
            "repo": d / "repo", "export_facts": json.loads(res.stdout)}


def _qdq(tiny_files, name: str, **kw) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            g = np.random.default_rng(0)
            self.it = iter([{"input": g.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.it, None)

    out = tiny_files["dir"] / f"{name}.onnx"
    if not out.exists():
        kw.setdefault("quant_format", QuantFormat.QDQ)
        quantize_static(str(tiny_files["fp32"]), str(out), Reader(), **kw)
    return out


# ----------------------------------------------------------------------------- one-line errors, exit codes

@pytest.mark.skipif(HAVE_TRT and HAVE_CUDA, reason="tensorrt and CUDA present: the engine builds here")
def test_engine_without_tensorrt_or_cuda_exits_3(tiny_files, tmp_path):
    out = tmp_path / "m.engine"
    res = run("engine", tiny_files["fp16"], "--precision", "fp16", "--out", out)
    pattern = "tensorrt not installed: pip install 'vggc[gpu]' on a CUDA machine" if not HAVE_TRT else "no CUDA device"
    assert_one_line_error(res, 3, pattern)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAVE_TORCH_TRT and HAVE_CUDA, reason="torch_tensorrt and CUDA present")
def test_torch_tensorrt_builder_without_it_exits_3(tiny_files, tmp_path):
    for out in (tmp_path / "m.ep", tmp_path / "m.engine"):
        res = run("engine", tiny_files["weights"], "--builder", "torch-tensorrt", "--precision", "fp16", "--out", out)
        assert_one_line_error(res, 3, "torch_tensorrt not installed" if not HAVE_TORCH_TRT else "no CUDA device")
    assert list(tmp_path.iterdir()) == []


def test_engine_bad_input_is_exit_2_before_any_gpu_work(tiny_files, tmp_path):
    out = tmp_path / "m.engine"
    assert_one_line_error(run("engine", tiny_files["fp32"], "--precision", "fp16", "--out", out), 2,
                          "is an FP32 ONNX (manifest), not FP16")
    assert_one_line_error(run("engine", tiny_files["fp16"], "--precision", "int8", "--out", out), 2,
                          "not a QDQ INT8 one")
    assert_one_line_error(run("engine", tmp_path / "nope.onnx", "--precision", "fp16", "--out", out), 2,
                          "no such file")
    assert_one_line_error(run("engine", tiny_files["fp16"], "--precision", "fp16", "--out", tmp_path / "m.onnx"), 2,
                          "expected a file ending in .engine or .plan")
    assert_one_line_error(run("engine", tiny_files["fp16"], "--precision", "fp16", "--out", out, "--min-batch", 8,
                              "--opt-batch", 4), 2, "need 1 <= min <= opt <= max")
    assert_one_line_error(run("engine", tiny_files["weights"], "--builder", "torch-tensorrt", "--precision", "int8",
                              "--out", tmp_path / "m.ep"), 2, "needs a ModelOpt-quantized model")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not an onnx file" * 8)
    assert_one_line_error(run("engine", junk, "--precision", "fp16", "--out", out), 2, "not a readable ONNX model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_int8_source_must_be_symmetric_int8_qdq(tiny_files):
    from onnxruntime.quantization import QuantFormat, QuantType

    sym = _qdq(tiny_files, "q_sym", activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
               extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    asym = _qdq(tiny_files, "q_asym", activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"QuantizeBias": False})
    qop = _qdq(tiny_files, "q_qop", quant_format=QuantFormat.QOperator)
    bias32 = _qdq(tiny_files, "q_bias32", activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                  extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})  # ORT default: int32 biases
    facts = vtrt.onnx_facts(sym)
    assert facts["precision"] == "int8" and facts["precision_source"] == "graph"
    vtrt.check_source_precision(facts, "int8", sym)  # accepted
    with pytest.raises(InputError, match="not FP16"):
        vtrt.check_source_precision(facts, "fp16", sym)
    with pytest.raises(InputError, match="uint8 .asymmetric activations.*QuantType.QInt8") as exc:
        vtrt.check_source_precision(vtrt.onnx_facts(asym), "int8", asym)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="QOperator format .*QLinearConv"):
        vtrt.check_source_precision(vtrt.onnx_facts(qop), "int8", qop)
    # INT32 bias DequantizeLinear: TensorRT's parser takes INT8/FP8/INT4/FP4 Q/DQ only; the node is named
    proto = onnx.load(str(bias32))
    first_bias_dq = next(n.name for n in proto.graph.node if n.op_type == "DequantizeLinear"
                         and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT32
                                 for i in proto.graph.initializer))
    with pytest.raises(InputError) as exc:
        vtrt.check_source_precision(vtrt.onnx_facts(bias32), "int8", bias32)
    msg = str(exc.value)
    assert f"Q/DQ node {first_bias_dq} is INT32 (a quantized bias)" in msg and "'QuantizeBias': False" in msg
    assert "\n" not in msg
    # other types TensorRT does not take (INT16 here), named by node, one line
    i16 = onnx.load(str(sym))
    zp = next(i for i in i16.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("zero_point"))
    zp.CopyFrom(onnx.numpy_helper.from_array(np.zeros(onnx.numpy_helper.to_array(zp).shape, np.int16), zp.name))
    user = next(n for n in i16.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and zp.name in n.input)
    if user.op_type == "DequantizeLinear" and any(i.name == user.input[0] for i in i16.graph.initializer):
        pytest.fail("expected an activation zero point")  # weight DQs read the weight's own type first
    with pytest.raises(InputError, match=rf"Q/DQ node {user.name} is INT16; TensorRT's ONNX parser takes "
                                         r"INT8/FP8 \(E4M3FN\)/INT4/FP4 \(E2M1\) Q/DQ only$"):
        vtrt.check_qdq_for_tensorrt(i16, sym)
    # a manifest that disagrees with the graph is refused (the quantize stage writes precision: int8)
    bad = tiny_files["dir"] / "claims_int8.onnx"
    bad.write_bytes(tiny_files["fp16"].read_bytes())
    write_manifest(bad, kind="onnx", inputs={}, settings={}, extra={"precision": "int8"})
    with pytest.raises(InputError, match="manifest says INT8 but the graph is FP16"):
        vtrt.check_source_precision(vtrt.onnx_facts(bad), "int8", bad)


def test_one_qdq_file_for_cpu_and_tensorrt(tiny_files):
    """Float biases (what TensorRT needs) cost the CPU nothing: ONNX Runtime's optimiser quantizes them
    itself, so the graph it runs is the same QLinearConv/QGemm graph as with int32 bias DQ nodes, and
    the outputs agree. This is why vggc writes one static QDQ file for both."""
    from onnxruntime.quantization import QuantType

    from vggc.compress.quantize.backend_ort import optimized_op_types

    common = {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "per_channel": True}
    fbias = _qdq(tiny_files, "q_fbias_pc", **common,
                 extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    ibias = _qdq(tiny_files, "q_ibias_pc", **common, extra_options={"ActivationSymmetric": True,
                                                                     "WeightSymmetric": True})
    ops_f, ops_i = optimized_op_types(fbias, threads=1), optimized_op_types(ibias, threads=1)
    assert ops_f == ops_i and ops_f.get("QLinearConv") == 8 and ops_f.get("QGemm") == 3
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    yf, yi = _run_repo_onnx(fbias, x), _run_repo_onnx(ibias, x)
    assert (yf.argmax(1) == yi.argmax(1)).all() and np.abs(yf - yi).max() <= 0.05 * np.abs(yi).max()
    # per-channel weights on the output-channel axis (axis 0 of Conv / transposed Gemm weights)
    proto = onnx.load(str(fbias))
    inits = {i.name: i for i in proto.graph.initializer}
    consumers = {i: n for n in proto.graph.node for i in n.input}
    weight_dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dqs) == 11
    for n in weight_dqs:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        w = inits[n.input[0]]
        assert axis == 0 and list(inits[n.input[1]].dims) == [w.dims[0]], (n.name, consumers[n.output[0]].op_type)
    vtrt.check_qdq_for_tensorrt(proto, fbias)


def test_gpu_backends_registered_with_reasons(tiny_files, tmp_path):
    keys = {b.key: b for b in runtime.backends()}
    for k in ("tensorrt", "torch-tensorrt", "torch-cuda-fp16-compiled", "onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert k in keys, k
    compiled = keys["torch-cuda-fp16-compiled"]
    assert compiled.precision == "fp16" and compiled.device == "cuda" and "state_dict" in compiled.formats
    assert compiled in runtime.backends_for("state_dict")
    if not HAVE_CUDA:
        assert compiled.available() == "no CUDA device"
        assert keys["tensorrt"].available() in (vtrt.TRT_MISSING, "no CUDA device")
        assert keys["torch-tensorrt"].available() in (vtrt.TORCH_TRT_MISSING, "no CUDA device")

    # an engine file (contents never read without TensorRT) with a vggc manifest is recognised
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"not really an engine")
    write_manifest(eng, kind="tensorrt-engine", inputs={}, settings={},
                   extra={"precision": "fp16", "params": 123, "macs": 456, "arch": "vgg_tiny",
                          "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 32}})
    mf = runtime.describe(eng)
    assert mf.format == "tensorrt-engine" and mf.params == 123 and mf.preprocess.mean == (0.5, 0.5, 0.5)
    assert [b.key for b in runtime.backends_for("tensorrt-engine")] == ["tensorrt"]
    assert runtime.effective_precision(keys["tensorrt"], mf) == "fp16"
    if not (HAVE_TRT and HAVE_CUDA):
        with pytest.raises(UnavailableError, match="^tensorrt: "):
            runtime.open_model(mf, keys["tensorrt"])
        res = run("eval", eng, "--data", tmp_path, "--backend", "tensorrt")
        assert res.exit_code in (2, 3)  # no data here (2) or tensorrt missing (3); never a traceback
        assert "Traceback" not in res.output


@pytest.mark.skipif(HAVE_CUDA, reason="CUDA present: the bench runs this row")
def test_bench_has_gpu_rows_with_reason(tiny_files, tmp_path):
    from conftest import make_imagefolder

    from vggc.bench import run_bench
    from vggc.bench.timing import TimingPolicy

    data = make_imagefolder(tmp_path / "data", per_class=1)
    rows = run_bench([tiny_files["weights"]], data, batch=4, out=None,
                     backends="torch-fp32,torch-cuda-fp16-compiled",
                     timing=TimingPolicy(warmup=0, min_reps=1, min_time=0.0, max_time=0.05))
    row = {r["backend"]: r for r in rows}["torch-cuda-fp16-compiled"]
    assert row["status"] == "no CUDA device" and row["precision"] == "fp16" and row["top1"] is None


# ----------------------------------------------------------------------------- inspector JSON: precision check

def _layer(name, ltype, fmt, key="Format/Datatype", param=None):
    d = {"Name": name, "LayerType": ltype, "Inputs": [{"Name": f"{name}_in", "Dimensions": [64, 8, 32, 32], key: fmt}],
         "Outputs": [{"Name": f"{name}_out", "Dimensions": [64, 8, 32, 32], key: fmt}]}
    if param:
        d["ParameterType"] = param
    return d


FP16_FMT = "Channel major FP16 format where channel % 8 == 0"
FP32_FMT = "Row major linear FP32 format"
INT8_FMT = "Thirty-two wide channel vectorized row major Int8 format"


def test_precision_check_flags_one_fp32_conv_in_fp16_engine():
    layers = [_layer("Reformatting CopyNode for Input Tensor 0", "Reformat", FP32_FMT),
              _layer("/features/0/Conv + /features/2/Relu", "CaskConvolution", FP16_FMT, param="Convolution"),
              _layer("/features/3/Conv + /features/5/Relu", "CaskConvolution", FP32_FMT, param="Convolution"),
              _layer("/features/6/MaxPool", "CaskPooling", FP16_FMT),
              _layer("/classifier/0/Gemm", "CaskGemmConvolution", FP16_FMT)]
    info = json.dumps({"Layers": layers, "Bindings": ["input", "logits"]})
    check = vtrt.check_layer_precision(info, "fp16")
    assert check.compute_layers == 3 and check.matching == 2 and check.verified and not check.ok
    assert [o["name"] for o in check.offending] == ["/features/3/Conv + /features/5/Relu"]
    msg = check.message()
    assert "1/3 convolution/GEMM layers do not run in FP16 (1 in FP32)" in msg and "/features/3/Conv" in msg
    assert "\n" not in msg
    summary = vtrt.summarize_layers(info)
    assert summary["compute_by_precision"] == {"fp16": 2, "fp32": 1}
    assert summary["by_precision"]["fp32"] == 2  # the reformat of the FP32 input counts in all layers only

    all_fp16 = [ly for ly in layers if "features/3" not in ly["Name"]]
    assert vtrt.check_layer_precision({"Layers": all_fp16}, "fp16").ok
    silently_fp32 = [_layer(f"conv{i}", "CaskConvolution", FP32_FMT, param="Convolution") for i in range(3)]
    assert vtrt.check_layer_precision({"Layers": silently_fp32}, "fp16").none_matching


def test_precision_check_schemas_int8_and_unverifiable():
    # TensorRT 10.9+ short type names and TensorRT 11's split Format / DataType keys
    t10 = [_layer("c1", "CaskConvolution", "Half"), _layer("g1", "gemm", "Half")]
    assert vtrt.check_layer_precision({"Layers": t10}, "fp16").ok
    t11 = {"Layers": [_layer("c1", "CaskConvolution", "Half", key="DataType"),
                      _layer("c2", "CaskConvolution", "Float", key="DataType")],
           "I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"}]}
    assert [o["name"] for o in vtrt.check_layer_precision(t11, "fp16").offending] == ["c2"]
    # INT8 engine: quantized convs in Int8, the classifier left in FP16 is flagged
    i8 = [_layer("c1", "CaskConvolution", INT8_FMT), _layer("c2", "CaskConvolution", INT8_FMT),
          _layer("fc", "CaskGemmConvolution", FP16_FMT)]
    c = vtrt.check_layer_precision({"Layers": i8}, "int8")
    assert c.matching == 2 and [o["precision"] for o in c.offending] == ["fp16"] and not c.none_matching
    # dynamic shapes without an execution context, or LAYER_NAMES_ONLY verbosity: not verifiable
    na = vtrt.check_layer_precision({"Layers": [_layer("c1", "CaskConvolution", "N/A due to dynamic shapes")]}, "fp16")
    assert not na.verified and not na.ok and "unverifiable" in na.message()
    names = vtrt.check_layer_precision({"Layers": ["conv1 + relu1", "pool1"]}, "fp16")
    assert not names.verified and "DETAILED" in names.message()
    assert vtrt.precision_from_text("BFloat16") == "bf16" and vtrt.precision_from_text("Float") == "fp32"


# ----------------------------------------------------------------------------- engine / GPU compatibility

BUILT = {"build_environment": {"tensorrt": "10.8.0.43", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}}


def test_engine_compatibility_with_fake_manifests():
    same = {"tensorrt": "10.8.0.43", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert vtrt.engine_compatibility(BUILT, same) == (None, None)
    err, _ = vtrt.engine_compatibility(BUILT, {**same, "tensorrt": "10.9.0.34"})
    assert "TensorRT 10.8.0.43" in err and "TensorRT 10.9.0.34" in err and "rebuild it here" in err
    err, _ = vtrt.engine_compatibility(BUILT, {**same, "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in err and "NVIDIA H100 80GB HBM3" in err
    assert "\n" not in err
    err, warn = vtrt.engine_compatibility(BUILT, {**same, "gpu": "NVIDIA A100-PCIE-40GB"})
    assert err is None and "same compute capability 8.0" in warn
    err, warn = vtrt.engine_compatibility({}, same)
    assert err is None and "no engine manifest" in warn
    vc = {"build_environment": {**BUILT["build_environment"], "version_compatible": True}}
    assert vtrt.engine_compatibility(vc, {**same, "tensorrt": "10.9.0.34"})[0] is None


def test_engine_built_elsewhere_fails_to_open_with_one_line(tmp_path, monkeypatch):
    from vggc.export import gpu_backends

    eng = tmp_path / "other.engine"
    eng.write_bytes(b"x")
    write_manifest(eng, kind="tensorrt-engine", inputs={}, settings={}, extra={"precision": "fp16", **BUILT})
    monkeypatch.setattr(gpu_backends, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.13.0.35"))
    monkeypatch.setattr(gpu_backends, "require_cuda", lambda *a: None)
    monkeypatch.setattr(vtrt_probe, "gpu_info", lambda device=0: {"gpu": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(InputError) as exc:
        gpu_backends.check_engine_here(runtime.describe(eng))
    msg = str(exc.value)
    assert msg.startswith("other.engine: engine built with TensorRT 10.8.0.43 for NVIDIA A100-SXM4-80GB")
    assert "TensorRT 10.13.0.35 and NVIDIA L4 (compute capability 8.9)" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- build orchestration on a fake TensorRT

@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(vtrt_probe, "cuda_reason", lambda: None)
    monkeypatch.setattr(vtrt_probe, "gpu_info", lambda device=0: {"gpu": "Fake GPU", "compute_capability": "9.0",
                                                             "gpu_memory_gib": 80.0, "cuda": "12.8"})

    from fake_tensorrt import fake_tensorrt

    def install(**kw):
        trt = fake_tensorrt(**kw)
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
        return trt

    return install


def test_build_engine_orchestration_on_fake_tensorrt(tiny_files, tmp_path, fake_gpu):
    trt = fake_gpu()
    out, cache = tmp_path / "m.engine", tmp_path / "trt.cache"
    cache.write_bytes(b"OLD")
    facts = vtrt.build_engine(tiny_files["fp16"], out, precision="fp16", min_batch=1, opt_batch=32, max_batch=128,
                              workspace_gib=2, timing_cache=cache)
    c = trt.calls
    assert c["network_flags"] == 1 << 1  # TRT 10: strongly typed (the fake config has no set_flag to call)
    assert c["caches_set"] == [(b"OLD", False)] and facts["timing_cache_rejected"] is False
    assert c["workspace"] == ("WORKSPACE", 2 * 2**30)
    assert c["profile"] == {"name": "input", "min": (1, 3, 32, 32), "opt": (32, 3, 32, 32), "max": (128, 3, 32, 32)}
    assert c["verbosity"] == "ProfilingVerbosity.DETAILED" and c["cache_in"] == b"OLD"
    assert c["inspector_had_context"] and c["input_shapes"] == [("input", (32, 3, 32, 32))]
    assert out.read_bytes() == b"FAKE-ENGINE" and cache.read_bytes() == b"CACHE:OLD"
    man = json.loads((tmp_path / "m.engine.json").read_text())
    assert man["kind"] == "tensorrt-engine" and man["precision"] == "fp16" and man["typing"] == "strong"
    assert man["build_environment"] == {"tensorrt": "10.8.0.43", "gpu": "Fake GPU", "compute_capability": "9.0",
                                        "gpu_memory_gib": 80.0, "cuda": "12.8"}
    assert man["profile"] == {"input": "input", "min": [1, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [128, 3, 32, 32]}
    assert man["source_onnx"]["sha256"] == man["inputs"]["onnx"]["sha256"] == sha256_file(tiny_files["fp16"])
    assert man["source_onnx"]["precision_source"] == "manifest"
    assert man["layer_precision"]["compute_by_precision"] == {"fp16": 2} and man["precision_check"]["ok"]
    assert man["input_dtype"] == man["output_dtype"] == "float32" and man["output_shape"] == [-1, 10]
    assert facts["gpu"] == "Fake GPU" and facts["precision_check"]["ok"]
    # the runtime picks the file up with the manifest's facts
    mf = runtime.describe(out)
    assert mf.format == "tensorrt-engine" and mf.meta["precision"] == "fp16" and mf.params > 0


def test_fake_build_typing_by_version_and_parse_errors(tiny_files, tmp_path, fake_gpu):
    trt = fake_gpu(version="11.1.0.5")
    vtrt.build_engine(tiny_files["fp16"], tmp_path / "a.engine", precision="fp16")
    assert trt.calls["network_flags"] == 0  # 11.x: always strongly typed, no flag
    trt = fake_gpu(version="10.16.1.11")
    vtrt.build_engine(tiny_files["fp16"], tmp_path / "a10.engine", precision="fp16")
    assert trt.calls["network_flags"] == 1 << 1  # 10.x: STRONGLY_TYPED
    for version, st in (("9.3.0.1", False), ("10.0.0.6", False), ("8.6.1", True)):  # no weakly typed fallback
        fake_gpu(version=version, strongly_typed=st)
        with pytest.raises(UnavailableError, match=rf"^TensorRT {version}: vggc builds strongly typed networks and "
                                                   r"needs TensorRT >= 10"):
            vtrt.build_engine(tiny_files["fp16"], tmp_path / "b.engine", precision="fp16")
        assert not (tmp_path / "b.engine").exists()
    fake_gpu(parse_ok=False)
    with pytest.raises(VggcError, match=r"TensorRT cannot parse .*In node 3 \(Conv\): UNSUPPORTED_NODE: fake$"):
        vtrt.build_engine(tiny_files["fp16"], tmp_path / "c.engine", precision="fp16")
    assert not (tmp_path / "c.engine").exists()


@pytest.mark.parametrize("mode, why", [
    ("corrupt", "Error Code 1: Serialization (Serialized timing cache version mismatch)"),
    ("mismatch", "set_timing_cache refused it"),
])
def test_fake_build_rejected_timing_cache_is_reported_and_build_goes_on(tiny_files, tmp_path, fake_gpu, mode, why):
    trt = fake_gpu(cache_mode=mode)
    out, cache = tmp_path / "m.engine", tmp_path / "trt.cache"
    cache.write_bytes(b"FROM-ANOTHER-TENSORRT")
    facts = vtrt.build_engine(tiny_files["fp16"], out, precision="fp16", timing_cache=cache)
    assert facts["timing_cache_rejected"] is True and facts["timing_cache_rejected_why"] == why
    assert out.read_bytes() == b"FAKE-ENGINE"  # built without the cache ...
    assert trt.calls["caches_set"][-1] == (b"", False) and cache.read_bytes() == b"CACHE:"  # ... and rewrote it
    man = json.loads((tmp_path / "m.engine.json").read_text())
    assert man["timing_cache_rejected"] is True and man["timing_cache_rejected_why"] == why
    res = run("engine", tiny_files["fp16"], "--precision", "fp16", "--out", tmp_path / "cli.engine",
              "--timing-cache", cache)
    assert res.exit_code == 0, res.output  # the CLI says so and carries on
    assert f"  timing cache rejected ({why}): built without it, rewritten\n" in res.output


def test_precision_check_myelin_foreignnode_not_verifiable():
    fc_inside = {"Name": "{ForeignNode[/classifier/0/Gemm.../classifier/6/Gemm]}", "LayerType": "Myelin",
                 "Inputs": [{"Name": "x", "Format/Datatype": FP16_FMT}], "Outputs": [{"Name": "logits",
                                                                                     "Format/Datatype": FP32_FMT}]}
    convs = [_layer(f"conv{i}", "CaskConvolution", FP16_FMT, param="Convolution") for i in range(3)]
    c = vtrt.check_layer_precision({"Layers": [*convs, fc_inside]}, "fp16")
    assert c.compute_layers == 3 and c.matching == 3 and not c.offending  # the convs pass ...
    assert not c.verified and not c.ok and not c.none_matching  # ... but the engine does not
    d = c.to_dict()
    assert d["not_verifiable"] == 1 and d["fused_layers"] == [fc_inside["Name"]] and d["ok"] is False
    assert d["message"].startswith("precision not verifiable: 1 layer(s) fused into Myelin/ForeignNode "
                                   "({ForeignNode[/classifier/0/Gemm")
    assert "of the other 3 convolution/GEMM layers 3 run in FP16" in d["message"]
    only = vtrt.check_layer_precision({"Layers": [{**fc_inside, "LayerType": "kgen"}]}, "fp16")  # by name alone
    assert only.to_dict()["not_verifiable"] == 1 and not only.ok
    # all inputs count: an FP16 conv whose second (residual) input is FP32 is not an FP16 layer
    two = _layer("conv_add", "CaskConvolution", FP16_FMT, param="Convolution")
    two["Inputs"].append({"Name": "skip", "Format/Datatype": FP32_FMT})
    c2 = vtrt.check_layer_precision({"Layers": [two]}, "fp16")
    assert [o["precision"] for o in c2.offending] == ["fp16+fp32"] and not c2.ok


def test_fake_build_with_myelin_layer_needs_allow_mixed(tiny_files, tmp_path, fake_gpu):
    layers = [_layer("conv0", "CaskConvolution", FP16_FMT),
              {"Name": "{ForeignNode[/classifier/0/Gemm]}", "LayerType": "Myelin", "Inputs": [], "Outputs": []}]
    fake_gpu(layers=layers)
    with pytest.raises(VggcError, match="FP16 engine check failed: precision not verifiable: 1 layer.s. fused into "
                                        "Myelin/ForeignNode .*pass --allow-mixed"):
        vtrt.build_engine(tiny_files["fp16"], tmp_path / "m.engine", precision="fp16")
    assert not (tmp_path / "m.engine").exists()
    fake_gpu(layers=layers)
    kept = vtrt.build_engine(tiny_files["fp16"], tmp_path / "m.engine", precision="fp16", allow_mixed=True)
    assert kept["precision_check"]["not_verifiable"] == 1 and kept["precision_check"]["ok"] is False


def test_fake_build_refuses_silently_fp32_engine(tiny_files, tmp_path, fake_gpu):
    fp32 = [_layer(f"conv{i}", "CaskConvolution", FP32_FMT) for i in range(3)]
    fake_gpu(layers=fp32)
    out = tmp_path / "m.engine"
    with pytest.raises(VggcError, match="FP16 engine check failed: 3/3 convolution/GEMM layers do not run in FP16"):
        vtrt.build_engine(tiny_files["fp16"], out, precision="fp16", allow_mixed=True)  # none FP16: never kept
    mixed = [_layer("conv0", "CaskConvolution", FP16_FMT), _layer("conv1", "CaskConvolution", FP32_FMT)]
    fake_gpu(layers=mixed)
    with pytest.raises(VggcError, match="1/2 .*conv1; pass --allow-mixed to keep it"):
        vtrt.build_engine(tiny_files["fp16"], out, precision="fp16")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp files left
    fake_gpu(layers=mixed)
    facts = vtrt.build_engine(tiny_files["fp16"], out, precision="fp16", allow_mixed=True)
    assert not facts["precision_check"]["ok"] and facts["precision_check"]["offending"][0]["name"] == "conv1"
    assert json.loads((tmp_path / "m.engine.json").read_text())["precision_check"]["offending"][0]["precision"] == "fp32"
    fake_gpu(layers=[_layer("conv0", "CaskConvolution", "N/A due to dynamic shapes")])
    with pytest.raises(VggcError, match="unverifiable"):
        vtrt.build_engine(tiny_files["fp16"], tmp_path / "n.engine", precision="fp16")
    assert not (tmp_path / "n.engine").exists()
    fake_gpu(layers=[_layer("conv0", "CaskConvolution", "N/A due to dynamic shapes")])
    kept = vtrt.build_engine(tiny_files["fp16"], tmp_path / "n.engine", precision="fp16", allow_mixed=True)
    assert kept["precision_check"]["verified"] is False and (tmp_path / "n.engine").exists()


# ----------------------------------------------------------------------------- Triton repository

def parse_with_protobuf(text: str):
    """Parse config.pbtxt with ``google.protobuf.text_format`` against Triton's own ``ModelConfig``
    (tritonclient's model_config_pb2, a dev dependency): unknown fields or bad enum names fail."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_pbtxt_writer_and_parser_roundtrip():
    from vggc.export.triton import Enum_

    doc = {"name": "m", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum_("TYPE_FP32"), "dims": [3, 4]}],
           "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}}
    text = to_pbtxt(doc) + '# a comment\nplatform: "onnxruntime_onnx"\n'
    back = parse_pbtxt(text)
    assert back["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3, 4]}]
    assert back["dynamic_batching"]["preferred_batch_size"] == [4, 8] and back["platform"] == "onnxruntime_onnx"
    for bad in ("name: ", "input [ { name: 1 ", "a: b c", "dims: [ 1 2 ]"):
        with pytest.raises(ValueError):
            parse_pbtxt(bad)
    # well-formed text that Triton's schema refuses: unknown field, bad enum name, wrong type
    for bad in ("max_batch: 8", "instance_group [ { kind: KIND_TPU } ]", 'max_batch_size: "8"'):
        with pytest.raises(ValueError, match="^not a Triton ModelConfig: "):
            parse_pbtxt(bad)


def _fake_engine_for_triton(tmp_path, opt=64, max_batch=128, min_batch=1):
    eng = tmp_path / f"fake-{min_batch}-{opt}-{max_batch}.engine"
    eng.write_bytes(b"FAKE-ENGINE")
    write_manifest(eng, kind="tensorrt-engine", inputs={}, settings={},
                   extra={"precision": "fp16", "input_name": "input", "output_name": "logits",
                          "input_dtype": "float32", "output_dtype": "float32", "output_shape": [-1, 10],
                          "profile": {"input": "input", "min": [min_batch, 3, 32, 32], "opt": [opt, 3, 32, 32],
                                      "max": [max_batch, 3, 32, 32]},
                          "build_environment": {"tensorrt": "10.8.0.43", "gpu": "Fake GPU",
                                                "compute_capability": "9.0"}})
    return eng


def _run_repo_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_export_triton_repo_configs_parse_and_onnx_runs(tiny_files):
    repo, out = tiny_files["repo"], tiny_files["fp16"]  # written by `vggc export --fp16 --triton ... --triton-engine`
    facts = tiny_files["export_facts"]
    assert [m["name"] for m in facts["triton"]["models"]] == ["tiny16", "tiny16_trt"]
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["tiny16/1/model.onnx", "tiny16/config.pbtxt", "tiny16/config.pbtxt.json",
                     "tiny16_trt/1/model.plan", "tiny16_trt/config.pbtxt", "tiny16_trt/config.pbtxt.json"]
    assert not [p for p in repo.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    for m in ("tiny16", "tiny16_trt"):  # the writer checked each config against Triton's ModelConfig
        man = json.loads((repo / m / "config.pbtxt.json").read_text())
        assert man["schema_check"].startswith("tritonclient ") and man["schema_check"].endswith(" model_config_pb2")

    onnx_cfg_text = (repo / "tiny16" / "config.pbtxt").read_text()
    pb = parse_with_protobuf(onnx_cfg_text)
    assert pb.name == "tiny16" and pb.platform == "onnxruntime_onnx" and pb.max_batch_size == 256
    assert list(pb.input[0].dims) == [3, 32, 32] and list(pb.output[0].dims) == [10]
    assert list(pb.dynamic_batching.preferred_batch_size) == [64, 256]
    assert pb.dynamic_batching.max_queue_delay_microseconds == 100
    assert len(pb.instance_group) == 1 and pb.instance_group[0].count == 1
    cfg = parse_pbtxt(onnx_cfg_text)
    assert cfg["input"][0]["data_type"] == "TYPE_FP32" and cfg["output"][0]["name"] == "logits"
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"

    trt_cfg = parse_pbtxt((repo / "tiny16_trt" / "config.pbtxt").read_text())
    parse_with_protobuf((repo / "tiny16_trt" / "config.pbtxt").read_text())
    assert trt_cfg["platform"] == "tensorrt_plan" and trt_cfg["max_batch_size"] == 128  # capped at the profile max
    assert trt_cfg["dynamic_batching"]["preferred_batch_size"] == [64, 128]
    assert trt_cfg["input"][0]["dims"] == [3, 32, 32] and trt_cfg["output"][0]["dims"] == [10]
    assert (repo / "tiny16_trt" / "1" / "model.plan").read_bytes() == b"FAKE-ENGINE"

    # the repository's ONNX runs at batch 1 and at max_batch_size and matches the exported file
    model_onnx = repo / "tiny16" / "1" / "model.onnx"
    assert model_onnx.read_bytes() == out.read_bytes()
    g = np.random.default_rng(3)
    for n in (1, cfg["max_batch_size"]):
        x = g.standard_normal((n, 3, 32, 32)).astype(np.float32)
        got = _run_repo_onnx(model_onnx, x)
        assert got.shape == (n, 10) and got.dtype == np.float32
        with torch.no_grad():
            ref = tiny_files["model"](torch.from_numpy(x)).numpy()
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95

    # KIND_CPU option, rewriting an existing model in place (in a copy of the repository)
    import shutil

    repo2 = tiny_files["dir"] / "repo2"
    shutil.copytree(repo, repo2, dirs_exist_ok=True)
    repo = repo2
    again = write_triton_repo(repo, out, instance_kind="cpu", max_batch=32)
    cfg = parse_pbtxt((repo / "tiny16" / "config.pbtxt").read_text())
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and cfg["max_batch_size"] == 32
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [32]
    assert [m["name"] for m in again["models"]] == ["tiny16"]


def test_export_triton_without_out_and_trt_model_always_gpu(tiny_files, tmp_path):
    """`vggc export WEIGHTS --triton DIR` (no --out): the model is named after the weights' stem and the
    ONNX goes only into the repository; --triton-instance cpu applies to the ONNX model, the TensorRT
    plan stays KIND_GPU; every config parses with Triton's own ModelConfig."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    weights = src / "tiny.pt"
    shutil.copyfile(tiny_files["weights"], weights)
    engine = _fake_engine_for_triton(src)
    before = sorted(p.name for p in src.iterdir())
    repo = tmp_path / "repo"
    res = run("export", weights, "--no-parity", "--triton", repo, "--triton-instance", "cpu",
              "--triton-engine", engine, "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["repository_only"] is True and facts["path"] == str(repo / "tiny" / "1" / "model.onnx")
    assert sorted(p.name for p in src.iterdir()) == before  # nothing written beside the weights
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["tiny/1/model.onnx", "tiny/config.pbtxt", "tiny/config.pbtxt.json",
                     "tiny_trt/1/model.plan", "tiny_trt/config.pbtxt", "tiny_trt/config.pbtxt.json"]
    onnx_pb = parse_with_protobuf((repo / "tiny" / "config.pbtxt").read_text())
    trt_pb = parse_with_protobuf((repo / "tiny_trt" / "config.pbtxt").read_text())
    from tritonclient.grpc import model_config_pb2 as mc

    assert [g.kind for g in onnx_pb.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert [g.kind for g in trt_pb.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert onnx_pb.name == "tiny" and trt_pb.name == "tiny_trt" and trt_pb.platform == "tensorrt_plan"
    # the repository's ONNX is a complete model (it runs) with the export's precision
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert _run_repo_onnx(repo / "tiny" / "1" / "model.onnx", x).shape == (2, 10)
    # the plain CLI output names the repository file
    res = run("export", weights, "--no-parity", "--triton", tmp_path / "repo2")
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 'repo2' / 'tiny' / '1' / 'model.onnx'}" in res.output
    assert_one_line_error(run("export", weights, "--no-parity"), 2, "--out FILE is needed unless --triton DIR")


def test_triton_bad_options_write_nothing(tiny_files, tmp_path):
    out = tmp_path / "t.onnx"
    repo = tmp_path / "repo"
    assert_one_line_error(run("export", tiny_files["weights"], "--no-parity", "--out", out, "--triton-engine",
                              tmp_path / "x.engine"), 2, "--triton-engine needs --triton DIR")
    eng = _fake_engine_for_triton(tmp_path, min_batch=8, opt=64, max_batch=128)
    assert_one_line_error(run("export", tiny_files["weights"], "--no-parity", "--out", out, "--triton", repo,
                              "--triton-engine", eng), 2, "min batch is 8; Triton sends batches from 1")
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"x")
    assert_one_line_error(run("export", tiny_files["weights"], "--no-parity", "--out", out, "--triton", repo,
                              "--triton-engine", bare), 2, "no manifest bare.engine.json")
    assert not out.exists() and not repo.exists()  # validated before the export
    with pytest.raises(InputError, match="Triton model name"):
        write_triton_repo(repo, tiny_files["fp16"], name="bad name")


# ----------------------------------------------------------------------------- acceptance on the real model

def test_reference_fp16_onnx_within_0p1pt_and_triton_repo_runs(ref_weights, cifar_dir, tmp_path):
    """The FP16 ONNX that `vggc engine --precision fp16` consumes: within 0.1 pt of FP32 PyTorch on
    500 real test images (ONNX Runtime CPU; 1,000 took ~90 s on a loaded 2-core box), and its Triton
    copy runs at batch 1 and at max batch."""
    out, repo = tmp_path / "vgg16-fp16.onnx", tmp_path / "repo"
    res = run("export", ref_weights, "--fp16", "--out", out, "--data", cifar_dir, "--parity-limit", 500,
              "--triton", repo, "--triton-max-batch", 128, "--json")
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)["parity"]
    assert p["n"] == 500 and 0.85 < p["torch_top1"] < 0.93
    assert abs(p["onnx_top1"] - p["torch_top1"]) <= 0.001  # within 0.1 percentage point
    assert p["top1_agreement"] >= 0.995
    vtrt.check_source_precision(vtrt.onnx_facts(out), "fp16", out)  # what `vggc engine` accepts
    cfg = parse_pbtxt((repo / "vgg16-fp16" / "config.pbtxt").read_text())
    assert cfg["max_batch_size"] == 128 and cfg["input"][0]["dims"] == [3, 32, 32]
    x = np.random.default_rng(0).standard_normal((128, 3, 32, 32)).astype(np.float32)
    big = _run_repo_onnx(repo / "vgg16-fp16" / "1" / "model.onnx", x)
    one = _run_repo_onnx(repo / "vgg16-fp16" / "1" / "model.onnx", x[:1])
    assert big.shape == (128, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one[0], big[0], rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- real TensorRT (GPU machines)

@pytest.mark.skipif(not (HAVE_TRT and HAVE_CUDA), reason="needs tensorrt and a CUDA GPU")
def test_real_fp16_engine_builds_and_matches_onnx(tiny_files, tmp_path):
    out = tmp_path / "tiny16.engine"
    facts = vtrt.build_engine(tiny_files["fp16"], out, precision="fp16", min_batch=1, opt_batch=16, max_batch=64,
                              workspace_gib=1, timing_cache=tmp_path / "trt.cache")
    assert facts["precision_check"]["ok"], facts["precision_check"]
    mf = runtime.describe(out)
    runner = runtime.open_model(mf, runtime.get_backend("tensorrt"))
    x = torch.randn(100, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # > max batch: split
    got = runner.predict(x)
    ref = torch.from_numpy(_run_repo_onnx(tiny_files["fp16"], x.numpy()))
    assert got.shape == (100, 10)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    runner.close()
