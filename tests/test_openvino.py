"""OpenVINO: the ``openvino-cpu`` backend (ONNX and IR), NNCF INT8 (``vggc quantize --backend openvino``),
bad input.

A tiny VGG on tiny generated data for behaviour (always runs); the reference model on real test
images for parity with ONNX Runtime and for NNCF INT8 accuracy (skips without ../shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, make_imagefolder, make_tiny_quant_setup, make_tiny_vgg, use_tiny_preset
from conftest import run_cli as run

from vggc import runtime
from vggc.artifacts import save_state_dict
from vggc.cpu import has_native_bf16
from vggc.errors import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny VGG (O(1) logits), its state_dict, its FP32 ONNX and a tiny ImageFolder (8 images/class)."""
    from vggc.data import resolve_preprocess
    from vggc.export.onnx import export_onnx

    t = make_tiny_quant_setup(tmp_path_factory.mktemp("ov"))
    t["onnx"] = export_onnx(t["model"], t["dir"] / "tiny.onnx", input_size=32, opset=18, fp16=False,
                            preprocess=resolve_preprocess({}))
    return t


def _x(n=5, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _logits(path, key, x, threads=2):
    mf = runtime.describe(path)
    runner = runtime.open_model(mf, runtime.get_backend(key), {"threads": threads})
    try:
        return runner.predict(x), dict(getattr(runner, "facts", {}) or {})
    finally:
        runner.close()


# ----------------------------------------------------------------------------- backend

def test_openvino_cpu_matches_onnxruntime_and_runs_f32(tiny):
    x = _x(7)
    ov, facts = _logits(tiny["onnx"], "openvino-cpu", x)
    ort, _ = _logits(tiny["onnx"], "onnxruntime-cpu", x)
    assert ov.shape == (7, 10) and ov.dtype == torch.float32
    assert torch.allclose(ov, ort, rtol=1e-4, atol=1e-4 * float(ort.abs().max()))
    assert torch.equal(ov.argmax(1), ort.argmax(1))
    # the fp32 row really computes in f32 even on CPUs whose OpenVINO default would be bf16
    assert facts["inference_precision"] == "f32"
    assert facts["num_streams"] == 1 and facts["inference_num_threads"] == 2
    assert facts["openvino"] and "FP32" in facts["optimization_capabilities"]
    assert set(facts["conv_runtime_precision"]) == {"f32"}
    be = runtime.get_backend("openvino-cpu")
    assert runtime.effective_precision(be, runtime.describe(tiny["onnx"])) == "fp32"


def test_dynamic_batch_and_per_shape_compile(tiny):
    mf = runtime.describe(tiny["onnx"])
    runner = runtime.open_model(mf, runtime.get_backend("openvino-cpu"), {"threads": 1})
    try:
        x = _x(9)
        full = runner.predict(x)
        one = runner.predict(x[:1])
        assert one.shape == (1, 10)
        assert torch.allclose(one, full[:1], atol=1e-4 * float(full.abs().max()))
    finally:
        runner.close()


def test_bf16_backend_is_labelled_bf16_or_says_why(tiny):
    be = runtime.get_backend("openvino-cpu-bf16")
    assert not be.default
    if not has_native_bf16():
        assert "no native bf16" in be.available()
        return
    out, facts = _logits(tiny["onnx"], "openvino-cpu-bf16", _x(4))
    assert facts["inference_precision"] == "bf16"
    assert runtime.effective_precision(be, runtime.describe(tiny["onnx"])) == "bf16"
    ref, _ = _logits(tiny["onnx"], "onnxruntime-cpu", _x(4))
    assert torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()))  # bf16: ~3 significant digits


# ----------------------------------------------------------------------------- NNCF INT8 + IR

@pytest.fixture(scope="module")
def tiny_ir(tiny):
    from vggc.compress.quantize import quantize

    out = tiny["dir"] / "q" / "tiny_int8.xml"
    res = quantize(tiny["weights"], mode="static", backend="openvino", data=tiny["data"], calib_size=40,
                   out=out, eval_limit=40)
    return out, res


def test_nncf_writes_ir_pair_with_manifest(tiny, tiny_ir):
    from vggc.compress.quantize import quantize

    out, res = tiny_ir
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny_int8.bin", "tiny_int8.xml", "tiny_int8.xml.json"]
    assert res["format"] == "openvino-ir" and res["precision"] == "int8"
    assert res["quantized_conv"] == 8 and res["quantized_linear"] == 3
    assert res["size_bytes"] == out.stat().st_size + out.with_suffix(".bin").stat().st_size
    assert res["eval_backend"] == "openvino-cpu" and res["eval_n"] == 40
    man = json.loads((out.parent / "tiny_int8.xml.json").read_text())
    assert man["kind"] == "openvino-ir" and man["precision"] == "int8"
    assert man["settings"]["preset"] == "performance" and man["settings"]["fast_bias_correction"] is True
    assert man["calibration"]["split"] == "train" and man["calibration"]["size"] == 40
    assert man["weights_file"]["name"] == "tiny_int8.bin"
    # same manifest keys as the ONNX Runtime path (plus the IR's weights file)
    ort = tiny["dir"] / "q_ort" / "tiny_int8.onnx"
    quantize(tiny["weights"], mode="static", backend="onnxruntime", data=tiny["data"], calib_size=40, out=ort,
             eval_limit=40)
    ort_man = json.loads((ort.parent / "tiny_int8.onnx.json").read_text())
    assert set(ort_man) - {"input_name", "output_name", "opset"} <= set(man)
    assert set(ort_man["metrics"]) == set(man["metrics"])
    assert set(ort_man["settings"]) <= set(man["settings"])


def test_ir_runs_int8_kernels_and_describes(tiny_ir):
    out, _ = tiny_ir
    mf = runtime.describe(out)
    assert mf.format == "openvino-ir" and mf.meta["precision"] == "int8"
    assert mf.files == [out, out.with_suffix(".bin")]
    assert [b.key for b in runtime.backends_for("openvino-ir")][:1] == ["openvino-cpu"]
    logits, facts = _logits(out, "openvino-cpu", _x(3))
    assert logits.shape == (3, 10)
    # quantized convolutions run as int8 (u8/i8) kernels although the float hint is f32
    assert facts["inference_precision"] == "f32"
    assert set(facts["conv_runtime_precision"]) <= {"u8", "i8"}


def test_failed_quantize_leaves_nothing(tiny, monkeypatch):
    import nncf

    from vggc.compress.quantize import quantize
    from vggc.errors import VggcError

    def boom(*a, **k):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(nncf, "quantize", boom)
    out = tiny["dir"] / "fail" / "q.xml"
    with pytest.raises(VggcError, match="nncf.quantize failed: calibration exploded"):
        quantize(tiny["weights"], mode="static", backend="openvino", data=tiny["data"], calib_size=20, out=out,
                 evaluate=False)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("extra,pattern", [
    (["--mode", "dynamic"], "not offered by OpenVINO/NNCF for this model"),
    (["--mode", "static", "--calib-method", "entropy"], "--calib-method applies to --backend onnxruntime/torch"),
    (["--mode", "static", "--out", "{d}/o.onnx"], "--backend openvino writes a .xml file"),
    (["--mode", "static", "--calib-size", "81"], "--calib-size 81 is larger than the training split (80 images)"),
])
def test_quantize_bad_options_one_line(tiny, tmp_path, extra, pattern):
    args = ["quantize", tiny["weights"], "--backend", "openvino", "--data", tiny["data"]]
    if "--out" not in extra:
        args += ["--out", tmp_path / "o.xml"]
    res = run(*args, *[a.format(d=tmp_path) for a in extra])
    assert_one_line_error(res, 2, pattern)
    assert list(tmp_path.iterdir()) == []


def test_check_settings_dynamic_message():
    from vggc.compress.quantize import check_settings

    with pytest.raises(InputError, match="--mode dynamic: not offered by OpenVINO/NNCF"):
        check_settings(mode="dynamic", backend="openvino", out="o.xml", data=None, calib_size=10,
                       calib_method=None, per_channel=True, opset=None)


def test_bad_ir_files_one_line(tiny_ir, tiny, tmp_path):
    out, _ = tiny_ir
    xml, weights = out.read_bytes(), out.with_suffix(".bin").read_bytes()
    (tmp_path / "alone.xml").write_bytes(xml)
    (tmp_path / "cut.xml").write_bytes(xml[: len(xml) // 2])
    (tmp_path / "cut.bin").write_bytes(weights)
    (tmp_path / "short.xml").write_bytes(xml)
    (tmp_path / "short.bin").write_bytes(weights[: len(weights) // 3])
    (tmp_path / "empty.xml").write_bytes(b"")
    (tmp_path / "empty.bin").write_bytes(b"")
    cases = {"alone": "weights file alone.bin is missing beside it", "cut": "OpenVINO cannot read it",
             "short": "OpenVINO cannot read it", "empty": "file is empty"}
    for name, pattern in cases.items():
        res = run("eval", tmp_path / f"{name}.xml", "--data", tiny["data"], "--backend", "openvino-cpu")
        assert_one_line_error(res, 2, pattern)


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def ref_onnx(ref_weights, tmp_path_factory):
    from vggc.data import resolve_preprocess
    from vggc.export.onnx import export_onnx
    from vggc.models import load_weights

    lm = load_weights(ref_weights)
    out = tmp_path_factory.mktemp("ov_ref") / "vgg16.onnx"
    return export_onnx(lm.model.eval(), out, input_size=32, opset=18, fp16=False,
                       preprocess=resolve_preprocess(lm.sidecar))


def test_reference_top1_equals_onnxruntime(ref_onnx, test_split):
    from vggc.data import limit_split
    from vggc.evaluate import evaluate

    split = limit_split(test_split, 1000, 0)
    mf = runtime.describe(ref_onnx)
    res = {}
    for key in ("openvino-cpu", "onnxruntime-cpu"):
        runner = runtime.open_model(mf, runtime.get_backend(key), {"threads": 2})
        try:
            res[key] = evaluate(runner.predict, split, mf.preprocess, batch_size=250)
        finally:
            runner.close()
    assert res["openvino-cpu"].n == 1000
    assert res["openvino-cpu"].correct == res["onnxruntime-cpu"].correct
    assert res["openvino-cpu"].top1 > 0.85


def test_reference_nncf_int8_keeps_995(ref_weights, cifar_dir, tmp_path):
    from vggc.compress.quantize import quantize

    res = quantize(ref_weights, mode="static", backend="openvino", data=cifar_dir, calib_size=300,
                   out=tmp_path / "q.xml", eval_limit=500)
    assert res["eval_n"] == 500 and res["quantized_conv"] == 13
    assert res["retention"] >= 0.995, res


def test_pipeline_adds_openvino_rows(tmp_path, monkeypatch):
    from vggc import pipeline

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data", per_class=4)
    weights = tmp_path / "tiny.pt"
    save_state_dict(make_tiny_vgg().state_dict(), weights)
    tiny = use_tiny_preset(monkeypatch)
    names = [s.name for s in pipeline.build_steps(weights, data, tiny)]
    assert {"int8_ov_static", "pruned50_int8_ov_static"} <= set(names)
    assert "pruned_int8_ov_static" in pipeline.PRESETS["quick"].skip
    assert "pruned_int8_ov_static" not in pipeline.PRESETS["full"].skip
    out = tmp_path / "run"
    res = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["onnx_fp32", "int8_ov_static"])
    # static INT8 is accuracy-aware: it needs the unpruned model's top-1 on the evaluation images (source_eval)
    assert {s["name"]: s["status"] for s in res["steps"]} == {"source_eval": "ok", "onnx_fp32": "ok",
                                                               "int8_ov_static": "ok", "bench": "ok"}
    assert (out / "tiny_int8_ov_static.xml").is_file() and (out / "tiny_int8_ov_static.bin").is_file()
    rows = {(r["model"], r["backend"]): r for r in res["rows"]}
    for key in (("tiny.onnx", "openvino-cpu"), ("tiny_int8_ov_static.xml", "openvino-cpu")):
        assert rows[key]["status"] == "ok" and rows[key]["throughput"] > 0, rows[key]
        assert rows[key]["runtime"]["inference_precision"] == "f32"
    assert rows[("tiny.onnx", "openvino-cpu")]["precision"] == "fp32"
    assert rows[("tiny_int8_ov_static.xml", "openvino-cpu")]["precision"] == "int8"
    assert rows[("tiny.onnx", "openvino-cpu")]["top1"] == rows[("tiny.onnx", "onnxruntime-cpu")]["top1"]


def test_nncf_is_imported_with_telemetry_off():
    """Outside pytest (which NNCF detects by itself), vggc's import leaves NNCF on its telemetry stub."""
    import os
    import subprocess
    import sys

    code = ("import sys; from vggc.compress.quantize.backend_openvino import import_nncf; import_nncf(); "
            "import nncf.telemetry.wrapper as w; assert 'pytest' not in sys.modules; "
            "print(isinstance(w.telemetry, w.NNCFTelemetryStub))")
    env = {k: v for k, v in os.environ.items() if k not in ("NNCF_CI", "NNCF_DEV")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
