"""vggc quantize: ONNX Runtime QDQ and torchao PT2E INT8, the pt2 runtime plugin, bad input.

Tiny VGG + tiny ImageFolder for behaviour; the reference model on 1,000 real test images (200
calibration images) for accuracy of each backend's static path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_quant_setup, make_tiny_vgg
from conftest import run_cli as run

from vggc import runtime
from vggc.errors import InputError, ModelFormatError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny VGG with O(1) logits, its state_dict and a tiny ImageFolder (8 images/class/split)."""
    return make_tiny_quant_setup(tmp_path_factory.mktemp("quant"))


def _x(n=5, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,pattern", [
    (["--mode", "static", "--backend", "torch", "--out", "{d}/o.pt2"], "--mode static needs calibration images"),
    (["--mode", "static", "--backend", "onnxruntime", "--data", "{data}", "--out", "{d}/o.onnx", "--calib-size", "0"],
     "--calib-size 0: must be at least 1"),
    (["--mode", "static", "--backend", "onnxruntime", "--data", "{data}", "--out", "{d}/o.onnx",
      "--calib-size", "81"], "--calib-size 81 is larger than the training split (80 images)"),
    (["--mode", "static", "--backend", "onnxruntime", "--data", "{data}", "--out", "{d}/o.onnx", "--opset", "13"],
     "--opset 13: unsupported"),
    (["--mode", "dynamic", "--backend", "onnxruntime", "--out", "{d}/o.pt2"], "--backend onnxruntime writes a .onnx"),
    (["--mode", "dynamic", "--backend", "torch", "--out", "{d}/o.onnx"], "--backend torch writes a .pt2"),
    (["--mode", "static", "--backend", "torch", "--data", "{data}", "--out", "{d}/o.pt2", "--per-tensor"],
     "per-channel weights only"),
    (["--mode", "dynamic", "--backend", "torch", "--out", "{d}/o.pt2", "--opset", "18"],
     "--opset applies to --backend onnxruntime only"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, args, pattern):
    args = [a.format(d=tmp_path, data=tiny["data"]) for a in args]
    res = run("quantize", tiny["weights"], *args)
    assert_one_line_error(res, 2, pattern)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing(tiny, tmp_path, monkeypatch):
    from vggc.compress.quantize import backend_ort as quantize_ort
    from vggc.compress.quantize import quantize

    def boom(*a, **k):
        raise InputError("simulated failure")

    monkeypatch.setattr(quantize_ort, "export_fp32", boom)
    with pytest.raises(InputError, match="simulated"):
        quantize(tiny["weights"], mode="static", backend="onnxruntime", data=tiny["data"], calib_size=10,
                 out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- ONNX Runtime

def test_ort_static_qdq_s8s8_runs_as_int8_kernels(tiny, tmp_path):
    import onnx

    from vggc.compress.quantize import quantize
    from vggc.export.tensorrt import check_qdq_for_tensorrt

    out = tmp_path / "m.onnx"
    res = quantize(tiny["weights"], mode="static", backend="onnxruntime", data=tiny["data"], calib_size=40,
                   seed=3, out=out, eval_limit=20)
    assert out.is_file() and res["precision"] == "int8"
    assert res["quantized_conv"] == 8 and res["quantized_linear"] == 3
    assert res["runtime_ops"].get("QLinearConv") == 8  # DQ-Conv-Q fused into int8 kernels on this CPU
    # symmetric signed int8 QDQ: the form TensorRT's explicit quantization accepts
    check_qdq_for_tensorrt(onnx.load(str(out)), out)
    man = json.loads((tmp_path / "m.onnx.json").read_text())
    assert man["precision"] == "int8" and man["quant_mode"] == "static" and man["kind"] == "onnx"
    assert man["settings"]["calib_size"] == 40 and man["settings"]["seed"] == 3
    assert man["settings"]["calib_method"] == "minmax" and man["settings"]["per_channel"] is True
    assert man["calibration"]["split"] == "train" and sum(man["calibration"]["per_class"]) == 40
    assert set(man["calibration"]["per_class"]) == {4}  # class-balanced
    assert man["inputs"]["source"]["sha256"] and man["metrics"]["eval_n"] == 20
    assert 0 <= man["metrics"]["top1"] <= 1 and man["metrics"]["fp32_top1"] is not None
    # the registry reads it as int8 ONNX and runs batch 1 and 5 (dynamic batch) close to FP32
    mf = runtime.describe(out)
    assert mf.format == "onnx" and mf.meta["precision"] == "int8" and mf.arch == "vgg11_bn"
    runner = runtime.open_model(mf, runtime.get_backend("onnxruntime-cpu"))
    x = _x()
    with torch.no_grad():
        ref = tiny["model"](x)
    got = torch.cat([runner.predict(x[:1]), runner.predict(x[1:])])
    assert got.shape == (5, 10) and _rel_err(got, ref) < 0.15


def test_ort_dynamic_quantizes_linear_only(tiny, tmp_path):
    from vggc.compress.quantize import quantize

    out = tmp_path / "d.onnx"
    res = quantize(tiny["weights"], mode="dynamic", backend="onnxruntime", out=out)
    assert res["quantized_conv"] == 0 and res["quantized_linear"] == 3 and res["top1"] is None
    assert res["runtime_ops"].get("Conv") == 8 and "ConvInteger" not in res["runtime_ops"]
    assert any("only Linear" in n for n in res["notes"])
    assert json.loads((tmp_path / "d.onnx.json").read_text())["calibration"] is None


# ----------------------------------------------------------------------------- torch (PT2E / torchao)

def test_torch_static_pt2_reloads_in_fresh_process(tiny, tmp_path):
    from vggc.compress.quantize import quantize

    out = tmp_path / "s.pt2"
    res = quantize(tiny["weights"], mode="static", backend="torch", data=tiny["data"], calib_size=20,
                   calib_method="minmax", out=out, eval_limit=20, eval_backend="torch-int8-eager")
    assert res["quantized_conv"] == 8 and res["quantized_linear"] == 3
    assert res["eval_backend"] == "torch-int8-eager" and res["eval_n"] == 20
    man = json.loads((tmp_path / "s.pt2.json").read_text())
    assert man["kind"] == "pt2" and man["precision"] == "int8" and man["settings"]["calib_method"] == "minmax"
    x = _x()
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import torch
        from vggc import runtime
        mf = runtime.describe({str(out)!r})
        assert mf.format == "pt2" and mf.meta["precision"] == "int8", mf
        r = runtime.open_model(mf, runtime.get_backend("torch-int8-eager"))
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        torch.save(torch.cat([r.predict(x[:1]), r.predict(x[1:])]), {str(tmp_path / 'y.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    with torch.no_grad():
        ref = tiny["model"](x)
    assert got.shape == (5, 10) and _rel_err(got, ref) < 0.15


def test_torch_static_compiled_uses_onednn_int8_kernels(tiny, tmp_path):
    from vggc.compress.quantize import quantize
    from vggc.export.pt2_backend import _compiled_reason, open_pt2

    if _compiled_reason():
        pytest.skip(_compiled_reason())
    out = tmp_path / "c.pt2"
    quantize(tiny["weights"], mode="static", backend="torch", data=tiny["data"], calib_size=20, out=out,
             evaluate=False)
    eager = open_pt2(out, compiled=False)
    comp = open_pt2(out, compiled=True, warmup_batches=(4,))
    assert comp.compile_seconds > 0
    x = _x(4)
    from torch.profiler import profile

    with profile() as prof:
        got = comp.predict(x)
    kernels = {e.key for e in prof.key_averages()}
    assert "onednn::qconv_pointwise" in kernels and "aten::mkldnn_convolution" not in kernels, kernels
    assert _rel_err(got, eager.predict(x)) < 0.1
    assert comp.predict(x[:3]).shape == (3, 10)  # smaller batch: padded to the compiled one


def test_torch_dynamic_linear_only_plain_tensors(tiny, tmp_path):
    import zipfile

    from vggc.compress.quantize import quantize

    out = tmp_path / "d.pt2"
    res = quantize(tiny["weights"], mode="dynamic", backend="torch", data=tiny["data"], out=out,
                   evaluate=False)
    assert res["quantized_conv"] == 0 and res["quantized_linear"] == 3 and res["calib_size"] is None
    assert any("only Linear" in n for n in res["notes"])
    with zipfile.ZipFile(out) as zf:  # no pickled tensor subclasses: weights_only-safe payloads
        cfg = [json.loads(zf.read(n)) for n in zf.namelist() if n.endswith("_weights_config.json")][0]
    assert not any(v["use_pickle"] for v in cfg["config"].values())
    r = runtime.open_model(runtime.describe(out), runtime.get_backend("torch-int8-eager"))
    x = _x()
    with torch.no_grad():
        ref = tiny["model"](x)
    assert _rel_err(r.predict(x), ref) < 0.05


def test_pt2_with_pickled_payload_is_refused(tiny, tmp_path):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = make_tiny_vgg()
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    path = tmp_path / "pickled.pt2"
    torch.export.save(torch.export.export(model, (_x(2),)), str(path))  # tensor subclasses -> pickled
    with pytest.raises(ModelFormatError, match="pickled object"):
        runtime.describe(path)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError, match="not a PT2"):
        runtime.describe(tmp_path / "junk.pt2")


# ----------------------------------------------------------------------------- real data

@pytest.mark.parametrize("backend,suffix", [("onnxruntime", ".onnx"), ("torch", ".pt2")])
def test_reference_static_int8_keeps_accuracy(ref_weights, cifar_dir, tmp_path, backend, suffix):
    from vggc.compress.quantize import quantize

    out = tmp_path / f"ref{suffix}"
    # torch: evaluated on torch-int8-compiled (oneDNN int8 kernels) where a C++ compiler exists, else eager
    res = quantize(ref_weights, mode="static", backend=backend, data=cifar_dir, calib_size=200, out=out,
                   calib_method="minmax", eval_limit=1000)
    assert res["eval_n"] == 1000 and res["fp32_top1"] > 0.85
    assert abs(res["delta_pt"]) <= 1.0, res
    assert res["quantized_conv"] == 13 and res["quantized_linear"] == 3
    if backend == "onnxruntime":
        assert res["size_ratio"] <= 0.27, res
        assert res["runtime_ops"].get("QLinearConv") == 13
    else:
        assert out.stat().st_size < 0.3 * Path(ref_weights).stat().st_size


def test_percentile_observer_clips_outliers():
    from vggc.compress.quantize.backend_torch import _percentile_observer_cls, static_quantization_config

    obs = _percentile_observer_cls()(dtype=torch.quint8, quant_min=0, quant_max=255, percentile=99.0)
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    x[:10] = 100.0  # 0.01% outliers: min/max would give scale 100/255
    obs(x)
    scale, zp = obs.calculate_qparams()
    assert 0.9 / 255 < float(scale) < 1.1 / 255 and int(zp) == 0
    cfg = static_quantization_config("minmax", reduce_range=True)
    assert cfg.input_activation.quant_max == 127  # reduce_range: 7-bit activations
