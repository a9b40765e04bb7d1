"""Accuracy-aware INT8 on the torch (PT2E) and openvino (NNCF) backends: an excluded layer really stays
FP32 in the result (Q/DQ and FakeQuantize counts), and the budget search end to end on a tiny trained
model built so that one layer (the conv behind an activation outlier) must stay FP32."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_quant_setup
from conftest import run_cli as run

from vggc.artifacts import save_state_dict
from vggc.errors import VggcError

QDQ = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The tiny quantization setup, trained on its own images, then given an activation outlier: BN
    channel 0 after ``features.0`` x1000 and ``features.4``'s weights for that channel /1000 (the same
    function in FP32; per-tensor int8 activations in front of ``features.4`` lose everything else)."""
    t = make_tiny_quant_setup(tmp_path_factory.mktemp("budget-backends"))
    from vggc.data import load_split, resolve_preprocess

    model, pre = t["model"], resolve_preprocess()
    train = load_split(t["data"], "train")
    x, y = pre(train.images), train.labels
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model.features[1].weight[0] *= 1000
        model.features[1].bias[0] *= 1000
        model.features[4].weight[:, 0] /= 1000
    weights = t["dir"] / "outlier.pt"
    save_state_dict(model.state_dict(), weights)
    return {**t, "model": model, "weights": weights}


def _owner(node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else ""


def _layer_ops(gm):
    return {_owner(n): n for n in gm.graph.nodes
            if n.op == "call_function" and getattr(n.target, "_opname", "") in ("conv2d", "linear")}


def _input_is_rounded(op) -> bool:
    """True if a quantize/dequantize op lies on the op's input path back to the previous layer's output."""
    from vggc.compress.quantize.pt2e_fp32 import PASS_THROUGH_OPS

    src = op.args[0]
    while isinstance(src, torch.fx.Node) and src.op == "call_function":
        name = getattr(src.target, "_opname", "")
        if name in QDQ:
            return True
        if name not in PASS_THROUGH_OPS:
            return False
        src = src.args[0]
    return False


def _weight_is_int8(op) -> bool:
    w = op.args[1]
    return isinstance(w, torch.fx.Node) and getattr(w.target, "_opname", "") in QDQ


@pytest.mark.parametrize("name", ["features.4", "features.11", "classifier.0"])
def test_torch_excluded_module_stays_fp32(outlier, name):
    """``set_module_name_qconfig(name, None)`` (+ the pools feeding it) leaves that conv/linear with a
    float weight and an input no Q/DQ touched (behind a max-pool, behind conv+ReLU, behind
    avgpool+flatten); every other layer keeps int8 weights and inputs. Without the exclusion the
    same op's input and weight are Q/DQ'd."""
    from vggc.compress.quantize import backend_torch as qt
    from vggc.compress.quantize.pt2e_fp32 import quantizable_modules

    model = outlier["model"]
    x = torch.randn(8, 3, 32, 32)
    plain, _ = qt.calibrate_convert(qt.export_module(model, x), [x], calib_method="minmax", reduce_range=False,
                                    percentile=99.99)
    assert _weight_is_int8(_layer_ops(plain)[name]) and _input_is_rounded(_layer_ops(plain)[name])
    conv, _ = qt.calibrate_convert(qt.export_module(model, x), [x], calib_method="minmax", reduce_range=False,
                                   percentile=99.99, fp32_modules=[name])
    ops = _layer_ops(conv)
    assert set(ops) == set(quantizable_modules(model))
    assert not _weight_is_int8(ops[name]) and not _input_is_rounded(ops[name])
    others = [op for n, op in ops.items() if n != name]
    assert all(_weight_is_int8(op) and _input_is_rounded(op) for op in others)
    n_qdq = sum(getattr(n.target, "_opname", "") in QDQ for n in conv.graph.nodes)
    assert n_qdq < sum(getattr(n.target, "_opname", "") in QDQ for n in plain.graph.nodes)
    with pytest.raises(VggcError, match="cannot keep features.1 in FP32: not a conv/linear module"):
        qt.quantize_static_pt2e(model, [x], x, fp32_modules=["features.1"])


def test_openvino_ignored_node_stays_fp32(outlier, tmp_path):
    """``nncf.IgnoredScope`` with an ONNX node name leaves that Convolution without FakeQuantize on its
    input and with float weights; the other layers are quantized."""
    import openvino as ov

    from vggc.compress.quantize.backend_openvino import count_fake_quantized, quantize_ir
    from vggc.compress.quantize.budget import quantizable_nodes
    from vggc.data import resolve_preprocess
    from vggc.export.onnx import export_onnx

    pre = resolve_preprocess()
    nodes = quantizable_nodes(export_onnx(outlier["model"], tmp_path / "f.onnx", input_size=32, opset=18,
                                          fp16=False))
    batches = [torch.randn(8, 3, 32, 32)]
    kw = {"batches": batches, "preset": "performance", "fast_bias_correction": True, "per_channel": True,
          "reduce_range": False, "preprocess": pre, "opset": None, "progress": lambda it, **_: it}
    facts, _ = quantize_ir(outlier["model"], tmp_path / "q.xml", tmp_path / "q.bin", fp32_nodes=[nodes[1]], **kw)
    assert facts["fp32_nodes"] == [nodes[1]] and facts["ignored_scope"] == [f"{nodes[1]}/WithoutBiases"]
    q = ov.Core().read_model(str(tmp_path / "q.xml"))
    assert count_fake_quantized(q) == {"conv": 7, "linear": 3}
    convs = {op.get_friendly_name(): op for op in q.get_ops() if op.get_type_name() == "Convolution"}
    kept = convs[f"{nodes[1]}/WithoutBiases"]
    assert not _fq_on_input(kept)
    assert kept.input_value(1).get_node().get_output_element_type(0) == ov.Type.f32
    assert all(_fq_on_input(op) for op in convs.values() if op is not kept)
    with pytest.raises(VggcError, match="cannot keep nope in FP32"):
        quantize_ir(outlier["model"], tmp_path / "r.xml", tmp_path / "r.bin", fp32_nodes=["nope"], **kw)


def _fq_on_input(op) -> bool:
    """True if a FakeQuantize lies on the op's data input, looking back through pooling/reshape ops."""
    node = op.input_value(0).get_node()
    while node.get_type_name() in ("MaxPool", "AvgPool", "Reshape", "Squeeze", "Unsqueeze"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


@pytest.mark.parametrize("backend,ext,trial_backend", [("torch", ".pt2", "torch-int8-eager"),
                                                       ("openvino", ".xml", "openvino-cpu")])
def test_budget_search_keeps_the_outlier_layer_fp32(outlier, tmp_path, backend, ext, trial_backend):
    """Plain INT8 loses a measured D pt; with ``max_drop = D / 2`` the search ranks the layers, keeps
    exactly the conv behind the outlier FP32, and the written file (evaluated as usual) meets it."""
    from vggc.compress.quantize import quantize

    kw = {"mode": "static", "backend": backend, "data": outlier["data"], "calib_size": 40}
    if backend == "torch":
        kw["eval_backend"] = "torch-int8-eager"
    plain = quantize(outlier["weights"], out=tmp_path / f"plain{ext}", **kw)
    drop = -plain["delta_pt"]
    assert drop > 20, plain  # the outlier really breaks plain INT8
    res = quantize(outlier["weights"], out=tmp_path / f"b{ext}", max_drop=drop / 2, **kw)
    b = res["budget"]
    layer = "features.4" if backend == "torch" else b["ranking"][0]["node"]
    if backend == "openvino":
        from vggc.compress.quantize.budget import quantizable_nodes
        from vggc.export.onnx import export_onnx

        onnx_nodes = quantizable_nodes(export_onnx(outlier["model"], tmp_path / "f.onnx", input_size=32,
                                                   opset=18, fp16=False))
        assert layer == onnx_nodes[1]  # ONNX name of features.4
    assert b["backend"] == trial_backend and b["max_drop_pt"] == drop / 2
    assert b["ranking"][0]["node"] == layer and len(b["ranking"]) == 11
    assert [t["excluded"] for t in b["trials"]] == [[], [layer]]
    assert b["trials"][0]["drop_pt"] == pytest.approx(drop)
    assert b["trials"][1]["drop_pt"] <= drop / 2
    assert res["fp32_layers"] == [layer] and b["excluded"] == [layer]
    assert res["quantized_conv"] == 7 and res["quantized_linear"] == 3
    assert -res["delta_pt"] <= drop / 2
    assert res["top1"] == pytest.approx(b["trials"][1]["top1"], abs=1e-9)
    man = json.loads((tmp_path / f"b{ext}.json").read_text())
    assert man["quantization"]["budget"]["backend"] == trial_backend
    assert man["quantization"]["fp32_nodes"] == [layer]


def test_cli_torch_budget_met_by_plain_int8(outlier, tmp_path):
    """A budget plain INT8 meets: nothing ranked or excluded; the CLI names the trial backend."""
    res = run("quantize", outlier["weights"], "--mode", "static", "--backend", "torch", "--data", outlier["data"],
              "--calib-size", 40, "--eval-backend", "torch-int8-eager", "--out", tmp_path / "q.pt2",
              "--max-drop", 100)
    assert res.exit_code == 0, res.output
    assert "kept FP32: none (1 trial(s); budget checked on the evaluation images, torch-int8-eager)" in res.output
    man = json.loads((tmp_path / "q.pt2.json").read_text())
    assert man["quantization"]["budget"]["ranking"] == [] and man["quantization"]["fp32_nodes"] == []


def test_search_ort_keeps_its_signature(outlier, tmp_path):
    """``search_ort`` (the ONNX Runtime entry point, now :func:`search` with ORT trials) still takes a
    pre-processed model, a file-writing ``quantize`` and a path-based ``top1_of``; on the outlier model
    it keeps layers FP32 until the budget fits."""
    from vggc.compress.quantize import backend_ort as qo
    from vggc.compress.quantize import calibration_batches
    from vggc.compress.quantize.budget import quantizable_nodes, search_ort
    from vggc.data import limit_split, load_split, resolve_preprocess
    from vggc.evaluate import evaluate
    from vggc.export.ort_backend import open_onnx_cpu

    pre = resolve_preprocess()
    fp32 = qo.export_fp32(outlier["model"], tmp_path / "f.onnx", input_size=32, opset=18)
    pre_path = qo.preprocess_for_quant(fp32, tmp_path / "p.onnx")
    arrays = qo.batches_to_numpy(calibration_batches(outlier["data"], pre, 40, 0)[0])
    split = limit_split(load_split(outlier["data"], "test"), None, 0)

    def top1_of(path):
        runner = open_onnx_cpu(path)
        try:
            return evaluate(runner.predict, split, pre).top1
        finally:
            runner.close()

    fp32_top1 = top1_of(pre_path)
    res = search_ort(pre_path, arrays, quantize=lambda out, ex: qo.quantize_onnx_static(
        pre_path, out, arrays, nodes_to_exclude=ex), top1_of=top1_of, fp32_top1=fp32_top1, max_drop_pt=5.0,
        workdir=tmp_path)
    assert res.backend == "onnxruntime-cpu" and res.trials[0]["excluded"] == [] and res.trials[0]["drop_pt"] > 20
    assert res.excluded and res.trials[-1]["excluded"] == res.excluded and res.trials[-1]["drop_pt"] <= 5.0
    assert sorted(r["node"] for r in res.ranking) == sorted(quantizable_nodes(pre_path))
