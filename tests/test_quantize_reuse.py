"""quantize(fp32_onnx=..., reference=...): an FP32 ONNX and an FP32 top-1 made elsewhere are used, not
made again, and only when they describe the same weights and evaluation images."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_quant_setup, make_tiny_vgg
from conftest import run_cli as run

from vggc.artifacts import save_state_dict, sha256_file
from vggc.errors import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny quantization setup plus vggc export's FP32 (and FP16) ONNX of its weights."""
    from vggc.export.job import export_file

    setup = make_tiny_quant_setup(tmp_path_factory.mktemp("reuse"))
    d = setup["dir"]
    setup["fp32"] = d / "tiny-fp32.onnx"
    export_file(str(setup["weights"]), str(setup["fp32"]), parity=False)
    setup["fp16"] = d / "tiny-fp16.onnx"
    export_file(str(setup["weights"]), str(setup["fp16"]), parity=False, fp16=True)
    other = make_tiny_vgg(seed=7)
    save_state_dict(other.state_dict(), d / "other.pt")
    setup["other_fp32"] = d / "other-fp32.onnx"
    export_file(str(d / "other.pt"), str(setup["other_fp32"]), parity=False)
    return setup


def _no_export(monkeypatch):
    """Make every FP32 ONNX export raise: a reused file must not need one (the quantizers import
    the exporter when they run, so patching its module reaches them)."""
    import vggc.export.onnx as onnx_mod

    def boom(*a, **k):
        raise AssertionError("exported the FP32 ONNX again")

    monkeypatch.setattr(onnx_mod, "export_onnx", boom)


def _unnumbered(xml) -> str:
    """An IR's XML with the counters of generated op names (``Constant_7733``) removed."""
    return re.sub(r'_[0-9]+"', '_N"', xml.read_text())


def _no_source_eval(monkeypatch):
    """Make the FP32 source's evaluation raise: a given reference must replace it."""
    import vggc.compress.quantize.core as core

    def boom(*a, **k):
        raise AssertionError("evaluated the FP32 source again")

    monkeypatch.setattr(core, "_evaluate_source", boom)


@pytest.mark.parametrize("backend,suffix", [("onnxruntime", ".onnx"), ("openvino", ".xml")])
def test_fp32_onnx_reused_gives_the_same_file(tiny, tmp_path, monkeypatch, backend, suffix):
    from vggc.compress.quantize import quantize

    if backend == "openvino":
        pytest.importorskip("nncf")
    kw = dict(mode="static", backend=backend, data=tiny["data"], calib_size=20, seed=1, eval_limit=20)
    plain = quantize(tiny["weights"], out=tmp_path / f"plain{suffix}", **kw)
    _no_export(monkeypatch)
    reused = quantize(tiny["weights"], out=tmp_path / f"reused{suffix}", fp32_onnx=tiny["fp32"], **kw)
    if backend == "openvino":  # OpenVINO numbers its generated op names process-wide: compare without them
        assert sha256_file(tmp_path / "plain.bin") == sha256_file(tmp_path / "reused.bin")
        assert _unnumbered(tmp_path / "plain.xml") == _unnumbered(tmp_path / "reused.xml")
    else:
        assert sha256_file(tmp_path / f"plain{suffix}") == sha256_file(tmp_path / f"reused{suffix}")
    assert reused["top1"] == plain["top1"] and reused["fp32_size_bytes"] == plain["fp32_size_bytes"]
    man = json.loads((tmp_path / f"reused{suffix}.json").read_text())
    sha = sha256_file(tiny["fp32"])
    assert man["inputs"]["fp32_onnx"]["sha256"] == sha
    assert man["settings"]["fp32_onnx"] == {"name": tiny["fp32"].name, "sha256": sha}
    assert "fp32_onnx" not in json.loads((tmp_path / f"plain{suffix}.json").read_text())["settings"]


@pytest.mark.parametrize("which,extra,pattern", [
    ("other_fp32", [], "exported from other weights"),
    ("fp16", [], "precision fp16, expected fp32"),
    ("fp32", ["--opset", "19"], "opset 18, but --opset 19 was asked"),
    ("fp32", ["--mean", "0.5,0.5,0.5"], "other preprocessing"),
])
def test_fp32_onnx_of_something_else_is_refused(tiny, tmp_path, which, extra, pattern):
    res = run("quantize", tiny["weights"], "--mode", "static", "--backend", "onnxruntime", "--data", tiny["data"],
              "--calib-size", "10", "--out", tmp_path / "q.onnx", "--fp32-onnx", tiny[which], *extra)
    assert_one_line_error(res, 2, pattern)
    assert list(tmp_path.iterdir()) == []


def test_fp32_onnx_refused_for_torch_and_without_manifest(tiny, tmp_path):
    res = run("quantize", tiny["weights"], "--mode", "dynamic", "--backend", "torch", "--out", tmp_path / "q.pt2",
              "--fp32-onnx", tiny["fp32"])
    assert_one_line_error(res, 2, "--fp32-onnx applies to --backend onnxruntime/openvino")
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(tiny["fp32"].read_bytes())
    res = run("quantize", tiny["weights"], "--mode", "dynamic", "--backend", "onnxruntime", "--out",
              tmp_path / "q.onnx", "--fp32-onnx", bare)
    assert_one_line_error(res, 2, "no manifest bare.onnx.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]


def test_fp32_onnx_in_help():
    res = run("quantize", "--help")
    assert res.exit_code == 0 and "--fp32-onnx FILE" in res.output


def _reference(tiny, eval_limit, seed):
    from vggc.data import limit_split, load_split, resolve_preprocess
    from vggc.evaluate import evaluate
    from vggc.models import load_weights

    lm = load_weights(tiny["weights"])
    pre = resolve_preprocess(lm.sidecar, None, None, None)
    split = limit_split(load_split(tiny["data"], "test"), eval_limit, seed)
    with torch.inference_mode():
        res = evaluate(lambda x: lm.model.eval()(x), split, pre)
    return {"top1": res.top1, "n": res.n, "eval_limit": eval_limit, "seed": seed}


def test_reference_replaces_the_source_evaluation(tiny, tmp_path, monkeypatch):
    from vggc.compress.quantize import quantize

    kw = dict(mode="static", backend="onnxruntime", data=tiny["data"], calib_size=20, seed=2, eval_limit=30)
    plain = quantize(tiny["weights"], out=tmp_path / "plain.onnx", **kw)
    ref = _reference(tiny, 30, 2)
    assert ref["top1"] == plain["fp32_top1"]
    _no_source_eval(monkeypatch)
    got = quantize(tiny["weights"], out=tmp_path / "ref.onnx", reference=ref, **kw)
    assert (got["top1"], got["fp32_top1"], got["delta_pt"]) == (plain["top1"], plain["fp32_top1"], plain["delta_pt"])
    # the budget's baseline is the reference's too (a made-up top-1 shows it is the one used)
    fake = {**ref, "top1": 0.5}
    res = quantize(tiny["weights"], out=tmp_path / "budget.onnx", reference=fake, max_drop=100.0, **kw)
    assert res["budget"]["fp32_top1"] == 0.5 and res["fp32_top1"] == 0.5
    man = json.loads((tmp_path / "budget.onnx.json").read_text())
    assert man["settings"]["fp32_reference"] == {"top1": 0.5, "n": 30}


@pytest.mark.parametrize("change,pattern", [
    ({"eval_limit": 40}, "measured with eval_limit 40, seed 2"),
    ({"seed": 0}, "measured with eval_limit 30, seed 0"),
    ({"n": 29}, "measured on 29 images, the evaluation split has 30"),
    ({"top1": 1.5}, "top1 1.5 is not a fraction"),
])
def test_reference_of_other_images_is_refused(tiny, tmp_path, change, pattern):
    from vggc.compress.quantize import quantize

    ref = {"top1": 0.5, "n": 30, "eval_limit": 30, "seed": 2, **change}
    with pytest.raises(InputError, match=pattern) as err:
        quantize(tiny["weights"], mode="static", backend="onnxruntime", data=tiny["data"], calib_size=20, seed=2,
                 eval_limit=30, out=tmp_path / "q.onnx", reference=ref)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
