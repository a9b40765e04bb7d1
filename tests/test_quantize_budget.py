"""Accuracy-aware INT8 (``vggc quantize --max-drop``): the selection rule, that an excluded node
really stays FP32 in the QDQ file, the CLI contract, and on the reference model that the budget holds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_one_line_error, make_imagefolder, make_tiny_vgg
from conftest import run_cli as run

from vggc.artifacts import save_state_dict
from vggc.compress.quantize.budget import final_budget_note, kl_to_reference, quantizable_nodes, select_exclusions
from vggc.errors import InputError, VggcError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    model = make_tiny_vgg()
    weights = d / "tiny.pt"
    save_state_dict(model.state_dict(), weights)
    return {"dir": d, "weights": weights, "data": make_imagefolder(d / "data", per_class=8)}


def test_selection_takes_the_shortest_prefix_that_fits():
    ranking = [{"node": n} for n in ("c3", "c1", "c2")]
    top1 = {(): 0.80, ("c3",): 0.85, ("c3", "c1"): 0.895, ("c3", "c1", "c2"): 0.90}
    calls = []

    def top1_with(ex):
        calls.append(tuple(ex))
        return top1[tuple(ex)]

    excl, trials = select_exclusions(ranking, top1_with, 0.90, 0.5)
    assert excl == ["c3", "c1"] and calls == [(), ("c3",), ("c3", "c1")]
    assert [t["drop_pt"] for t in trials] == [10.0, 5.0, 0.5]
    excl, trials = select_exclusions(ranking, top1_with, 0.90, 10.0)  # plain INT8 fits: nothing excluded
    assert excl == [] and len(trials) == 1
    with pytest.raises(VggcError, match="with the 1 most sensitive layers kept in FP32"):
        select_exclusions(ranking, top1_with, 0.90, 0.1, max_layers=1)
    with pytest.raises(InputError, match="must be >= 0"):
        select_exclusions(ranking, top1_with, 0.90, -1)


def test_final_note_only_when_the_written_file_misses_the_budget():
    b = {"max_drop_pt": 0.1, "backend": "torch-int8-eager", "trials": [{"drop_pt": 0.05}]}
    assert final_budget_note(b, 0.8995, 0.90, "torch-int8-compiled") is None
    assert final_budget_note(b, 0.898, 0.90, "torch-int8-compiled") == (
        "--max-drop 0.1: met on torch-int8-eager (drop 0.05 pt) but the written file loses 0.20 pt on "
        "torch-int8-compiled")


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    a = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
    assert kl_to_reference(a, a) == pytest.approx(0.0, abs=1e-9)
    assert kl_to_reference(a, a[::-1].copy()) > 0.1


def test_excluded_node_stays_fp32(tiny, tmp_path):
    """ORT's nodes_to_exclude (what --max-drop relies on) leaves that Conv's weight FP32 and
    quantizes the other convs."""
    from vggc.compress.quantize import backend_ort as qo
    from vggc.models import load_weights

    model = load_weights(tiny["weights"]).model
    fp32 = qo.export_fp32(model, tmp_path / "f.onnx", input_size=32, opset=18)
    pre = qo.preprocess_for_quant(fp32, tmp_path / "p.onnx")
    nodes = quantizable_nodes(pre)
    assert len(nodes) >= 3
    arrays = [np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)]
    facts = qo.quantize_onnx_static(pre, tmp_path / "q.onnx", arrays, nodes_to_exclude=[nodes[0]])
    assert facts["fp32_nodes"] == [nodes[0]]
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}

    def weight_source(conv):
        w = conv.input[1]
        return "initializer" if w in inits else producer[w].op_type

    convs = {n.name: n for n in g.node if n.op_type in ("Conv", "Gemm")}
    assert weight_source(convs[nodes[0]]) == "initializer"  # stays FP32
    assert all(weight_source(convs[n]) == "DequantizeLinear" for n in nodes[1:] if n in convs)


def test_cli_budget_plain_int8_meets_excludes_none(tiny, tmp_path):
    out = tmp_path / "q.onnx"
    res = run("quantize", tiny["weights"], "--mode", "static", "--backend", "onnxruntime", "--data", tiny["data"],
              "--calib-size", 40, "--out", out, "--max-drop", 100, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["fp32_layers"] == [] and doc["budget"]["ranking"] == [] and len(doc["budget"]["trials"]) == 1
    man = json.loads((tmp_path / "q.onnx.json").read_text())
    assert man["settings"]["max_drop_pt"] == 100 and man["quantization"]["budget"]["excluded"] == []


@pytest.mark.parametrize("args,pattern", [
    (["--mode", "dynamic", "--backend", "torch", "--out", "{d}/o.pt2", "--data", "{data}", "--max-drop", "0.1"],
     "--max-drop: accuracy-aware INT8 needs --mode static (backend onnxruntime, torch or openvino)"),
    (["--mode", "dynamic", "--backend", "onnxruntime", "--out", "{d}/o.onnx", "--data", "{data}", "--max-drop",
      "0.1"], "--max-drop: accuracy-aware INT8 needs --mode static"),
    (["--mode", "static", "--backend", "torch", "--out", "{d}/o.pt2", "--data", "{data}", "--max-drop", "0.1",
      "--no-eval"], "--max-drop: the budget is checked on test images"),
    (["--mode", "static", "--backend", "onnxruntime", "--out", "{d}/o.onnx", "--data", "{data}", "--max-drop", "-1"],
     "--max-drop -1.0: must be >= 0"),
    (["--mode", "static", "--backend", "onnxruntime", "--out", "{d}/o.onnx", "--data", "{data}", "--max-drop", "0.1",
      "--no-eval"], "--max-drop: the budget is checked on test images"),
])
def test_cli_budget_bad_settings_one_line(tiny, tmp_path, args, pattern):
    args = [a.format(d=tmp_path, data=tiny["data"]) for a in args]
    assert_one_line_error(run("quantize", tiny["weights"], *args), 2, pattern)
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.slow
def test_reference_model_budget_holds(ref_weights, cifar_dir, tmp_path):
    """A zero-drop budget on 500 test images: either plain INT8 already fits (nothing excluded) or the
    chosen FP32 layers bring the measured drop within it; the file's own evaluation agrees."""
    from vggc.compress.quantize import quantize

    torch.manual_seed(0)
    res = quantize(ref_weights, mode="static", backend="onnxruntime", out=tmp_path / "q.onnx", data=cifar_dir,
                   calib_size=200, eval_limit=500, max_drop=0.0)
    b = res["budget"]
    assert -res["delta_pt"] <= 1e-6  # a gain is within budget too
    assert b["trials"][-1]["excluded"] == res["fp32_layers"]
    assert b["trials"][-1]["top1"] == pytest.approx(res["top1"], abs=1e-9)
    if len(b["trials"]) > 1:
        assert res["fp32_layers"] and b["ranking"]
        assert all(t["drop_pt"] > 0 for t in b["trials"][:-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend,ext", [("torch", ".pt2"), ("openvino", ".xml")])
def test_reference_model_budget_holds_torch_openvino(ref_weights, cifar_dir, tmp_path, backend, ext):
    """The same zero-drop budget on the PT2E and NNCF backends: the trials (eager INT8 for torch,
    openvino-cpu) meet it, and the manifest names the trial backend."""
    from vggc.compress.quantize import quantize
    from vggc.compress.quantize.budget import TRIAL_BACKENDS

    res = quantize(ref_weights, mode="static", backend=backend, out=tmp_path / f"q{ext}", data=cifar_dir,
                   calib_size=200, eval_limit=500, max_drop=0.0, max_fp32_layers=3,
                   eval_backend="torch-int8-eager" if backend == "torch" else None)
    b = res["budget"]
    assert b["backend"] == TRIAL_BACKENDS[backend]
    assert b["trials"][-1]["drop_pt"] <= 1e-6 and b["trials"][-1]["excluded"] == res["fp32_layers"]
    assert b["trials"][-1]["top1"] == pytest.approx(res["top1"], abs=1e-9)
    if len(b["trials"]) > 1:
        assert res["fp32_layers"] and b["ranking"]

