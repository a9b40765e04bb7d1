"""The MobileNetV2 student as a real variant (#22): static INT8 of a MobileNetV2 state_dict on every
CPU INT8 backend (``vggc quantize``), its layers kept FP32 by name (depthwise convs, the head behind
the global pool), and the pipeline's ``student_int8_*_static`` steps: accuracy-aware with what is left
of the budget, plain INT8 with the reason recorded when the student is already outside it, bench rows
the answer can choose.

The tiny student (``conftest.make_tiny_student``) is labelled by its own FP32 predictions, so an INT8
file's top-1 on its test images is its agreement with FP32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_student, use_tiny_preset
from conftest import run_cli as run

from vggc.artifacts import save_state_dict

STUDENT_INT8 = {"student_int8_ort_static": ("onnxruntime", ".onnx"), "student_int8_torch_static": ("torch", ".pt2"),
                "student_int8_ov_static": ("openvino", ".xml")}
QDQ = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("student"))


@pytest.fixture
def quiet_logs():
    """No DEBUG/INFO records while the test runs: pytest's log capture makes torch.export's debug
    records (53 PT2E trials) cost minutes."""
    import logging

    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)


def _predict(path: Path, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Return the predicted classes of the model file ``path`` on ``backend`` (default: its format's)."""
    from vggc import runtime

    mf = runtime.describe(path)
    be = runtime.get_backend(backend) if backend else runtime.default_backend(mf.format)
    runner = runtime.open_model(mf, be)
    try:
        return runner.predict(x).argmax(1)
    finally:
        runner.close()


def test_student_int8_steps_are_in_the_pipeline():
    """Three static INT8 steps of the distilled student, accuracy-aware like the pruned targets'; ONNX
    Runtime and NNCF quantize the student's FP32 ONNX export; quick skips the torch.compile'd one."""
    from vggc.pipeline import PRESETS, build_steps
    from vggc.pipeline import _select as select

    for preset in ("quick", "full"):
        p = PRESETS[preset]
        steps = {s.name: s for s in build_steps(Path("w.pt"), Path("d"), p)}
        names = list(steps)
        for name, (backend, ext) in STUDENT_INT8.items():
            s = steps[name]
            assert s.outputs[0] == f"w_student_mbv2_int8_{name.split('_')[2]}_static{ext}"
            assert s.deps == ["distill"] + (["student_onnx"] if backend != "torch" else [])
            assert s.inputs == [] and s.splits == ("train", "test")
            assert s.settings["backend"] == backend and s.settings["mode"] == "static"
            assert s.settings["max_fp32_layers"] == p.max_fp32_layers and s.settings["max_drop_pt"] is None
            assert names.index(name) > names.index("student_onnx") > names.index("distill")
        assert steps["student_int8_ov_static"].outputs[1] == "w_student_mbv2_int8_ov_static.bin"
    run_, skipped = select(build_steps(Path("w.pt"), Path("d"), PRESETS["quick"]), None, PRESETS["quick"], len)
    assert "student_int8_torch_static" in {s.name for s in skipped}
    assert {"student_int8_ort_static", "student_int8_ov_static"} <= {s.name for s in run_}
    assert not select(build_steps(Path("w.pt"), Path("d"), PRESETS["full"]), None, PRESETS["full"], len)[1]


def test_budget_left_of_a_student_is_the_budget_minus_its_loss_against_the_teacher():
    from vggc.pipeline.build import budget_left

    # vggc distill's manifest: the unpruned teacher's top-1 on the same images is teacher_top1
    assert budget_left({"metrics": {"teacher_top1": 0.9, "top1": 0.52}}, None) == pytest.approx(0.9 - 38.0)
    assert budget_left({"metrics": {"teacher_top1": 0.9, "top1": 0.9}}, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("backend,ext", [("onnxruntime", ".onnx"), ("torch", ".pt2"), ("openvino", ".xml")])
def test_cli_quantizes_a_mobilenet_v2_and_it_agrees_with_fp32(student, tmp_path, backend, ext):
    """``vggc quantize student.pt --mode static`` on each backend: every conv (depthwise included) and the
    Linear are INT8, and the file predicts what the FP32 student predicts on most images."""
    from vggc.data import load_split, resolve_preprocess

    out = tmp_path / f"q{ext}"
    eager = ["--eval-backend", "torch-int8-eager"] if backend == "torch" else []
    res = run("quantize", student["weights"], "--mode", "static", "--backend", backend, "--data", student["data"],
              "--calib-size", 40, "--out", out, *eager)
    assert res.exit_code == 0, res.output
    man = json.loads(out.with_name(out.name + ".json").read_text())
    assert man["arch"] == "mobilenet_v2_cifar" and man["metrics"]["fp32_top1"] == 1.0
    assert man["quantization"]["quantized_layers"]["conv"] == 52  # 35 1x1/3x3 convs + 17 depthwise
    assert man["metrics"]["top1"] >= 0.9  # labels are the FP32 predictions: top-1 = agreement
    test = load_split(student["data"], "test")
    x = resolve_preprocess()(test.images)
    with torch.no_grad():
        fp32 = student["model"](x).argmax(1)
    pred = _predict(out, x, "torch-int8-eager" if backend == "torch" else None)
    assert (pred == fp32).float().mean().item() >= 0.9


def _owner(node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else ""


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


@pytest.mark.parametrize("name", ["classifier.1", "features.1.conv.0.0", "features.3.conv.2", "features.4.conv.0.0"])
def test_torch_keeps_a_mobilenet_v2_layer_fp32(student, name):
    """PT2E keeps a MobileNetV2 module FP32 by its name: the head Linear (its global pool is a module,
    so it is left unquantized too), a depthwise conv, the projection of a residual block and the
    conv reading a residual sum; every other layer stays INT8."""
    from vggc.compress.quantize import backend_torch as qt

    model, x = student["model"], torch.randn(8, 3, 32, 32)
    gm, facts = qt.quantize_static_pt2e(model, [x], x, calib_method="minmax", reduce_range=False,
                                        fp32_modules=[name])
    ops = {_owner(n): n for n in gm.module().graph.nodes
           if n.op == "call_function" and getattr(n.target, "_opname", "") in ("conv2d", "linear")}
    kept = ops[name]
    assert getattr(kept.args[1], "op", "") != "call_function"  # a float parameter, not a dequantized int8 weight
    assert not _input_is_rounded(kept)
    assert facts["quantized_layers"]["conv"] + facts["quantized_layers"]["linear"] == 52
    if name == "classifier.1":
        assert facts["fp32_pass_through"] == ["classifier.0", "avgpool"]


def test_openvino_keeps_a_depthwise_conv_fp32(student, tmp_path):
    """A depthwise conv is a GroupConvolution in OpenVINO: ``nncf.IgnoredScope`` takes it by its ONNX
    node name, and the counts include the depthwise convs."""
    import openvino as ov

    from vggc.compress.quantize.backend_openvino import quantize_ir
    from vggc.compress.quantize.budget import quantizable_nodes
    from vggc.data import resolve_preprocess
    from vggc.export.onnx import export_onnx

    model = student["model"]
    nodes = quantizable_nodes(export_onnx(model, tmp_path / "f.onnx", input_size=32, opset=18, fp16=False))
    depthwise = nodes[1]  # features.1.conv.0: the first block's 3x3 depthwise conv
    kw = {"batches": [torch.randn(8, 3, 32, 32)], "preset": "performance", "fast_bias_correction": True,
          "per_channel": True, "reduce_range": False, "preprocess": resolve_preprocess(), "opset": None,
          "progress": lambda it, **_: it}
    facts, _ = quantize_ir(model, tmp_path / "q.xml", tmp_path / "q.bin", fp32_nodes=[depthwise], **kw)
    assert facts["fp32_nodes"] == [depthwise] and facts["quantized_layers"] == {"conv": 51, "linear": 1}
    q = ov.Core().read_model(str(tmp_path / "q.xml"))
    op = next(o for o in q.get_ops() if o.get_friendly_name() in facts["ignored_scope"])
    assert op.get_type_name() == "GroupConvolution"
    assert op.input_value(0).get_node().get_type_name() != "FakeQuantize"
    assert op.input_value(1).get_node().get_output_element_type(0) == ov.Type.f32


def test_budget_search_keeps_the_mobilenet_v2_outlier_layer_fp32(student, tmp_path, quiet_logs):
    """``--max-drop`` on a MobileNetV2 (torch): an activation outlier in front of ``features.2.conv.0.0``
    (the first block's projection BN channel 0 x1000, that conv's weights for it /1000: the same
    function in FP32) breaks plain INT8; the search ranks the 53 layers by their torch module names and
    keeps exactly that conv FP32."""
    from vggc.compress.quantize import quantize

    model = student["model"]
    with torch.no_grad():
        outlier = type(model)(model.config)
        outlier.load_state_dict(model.state_dict())
        outlier.eval()
        outlier.features[1].conv[2].weight[0] *= 1000
        outlier.features[1].conv[2].bias[0] *= 1000
        outlier.features[2].conv[0][0].weight[:, 0] /= 1000
    weights = tmp_path / "outlier.pt"
    save_state_dict(outlier.state_dict(), weights)
    kw = {"mode": "static", "backend": "torch", "data": student["data"], "calib_size": 16,
          "eval_backend": "torch-int8-eager"}
    plain = quantize(weights, out=tmp_path / "plain.pt2", **kw)
    drop = -plain["delta_pt"]
    assert plain["fp32_top1"] == 1.0 and drop >= 10, plain
    res = quantize(weights, out=tmp_path / "b.pt2", max_drop=drop / 2, max_fp32_layers=2, **kw)
    b = res["budget"]
    assert len(b["ranking"]) == 53 and b["ranking"][0]["node"] == "features.2.conv.0.0"
    assert res["fp32_layers"] == ["features.2.conv.0.0"] and -res["delta_pt"] <= drop / 2


# ----------------------------------------------------------------------------- the pipeline's student rows

def _student_pipeline(tmp_path, monkeypatch):
    """The tiny student as the pipeline's source (labelled by its own predictions, so the distilled
    student of 1 epoch is far behind it: outside the budget) and a tiny preset; returns
    ``(pipeline, weights, data)``."""
    from vggc import pipeline

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    src = make_tiny_student(tmp_path / "src")
    weights = tmp_path / "tiny.pt"
    shutil.copyfile(src["weights"], weights)
    use_tiny_preset(monkeypatch)
    return pipeline, weights, src["data"]


def test_student_outside_the_budget_gets_plain_int8_rows_and_says_so(tmp_path, monkeypatch, quiet_logs):
    """The distilled student already loses more than the budget against the teacher: each student INT8
    step still writes plain static INT8, its metrics and the log say why, and the files are bench rows
    (on their formats' evaluation backends) with the commands that rebuild them. With a budget it
    fits, the step is accuracy-aware on the distill step's FP32 top-1 (no FP32 evaluation of its own),
    and the answer can choose a student INT8 row."""
    from vggc import formats
    from vggc.bench.answer import answer

    pipeline, weights, data = _student_pipeline(tmp_path, monkeypatch)
    out, log = tmp_path / "run", []
    res = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=list(STUDENT_INT8), threads=1,
                                log=log.append)
    steps = {s["name"]: s for s in res["steps"]}
    distill = steps["distill"]["metrics"]
    loss = 100 * (distill["teacher_top1"] - distill["top1"])
    assert distill["teacher_top1"] == 1.0 and loss > 1.0  # the default budget: 1 % of 100 % = 1 pt
    for name, (_, ext) in STUDENT_INT8.items():
        st = steps[name]
        assert st["status"] == "ok", st
        m = st["metrics"]
        assert m["budget_left_pt"] == pytest.approx(1.0 - loss, abs=1e-3) and m["fp32_layers"] is None
        assert m["budget_note"] == (f"tiny_student_mbv2.pt is already {loss - 1.0:.2f} pt outside the budget: "
                                    "plain INT8, nothing kept FP32")
        assert f"-- {name}: {m['budget_note']}" in log and "--max-drop" not in m["command"]
        file = f"tiny_student_mbv2_int8_{name.split('_')[2]}_static{ext}"
        rows = [r for r in res["rows"] if r["model"] == file and r["status"] == "ok"]
        assert {r["backend"] for r in rows} & set(formats.by_suffix(ext).eval_backends), rows
        assert rows[0]["rebuild"][-1] == m["command"] and any(" distill " in c for c in rows[0]["rebuild"])
        assert "distilled 1 epoch(s)" in (rows[0]["note"] or "")

    # the answer takes a student INT8 row when it is the fastest within the budget
    rows = [dict(r, timing_stable=True) for r in res["rows"] if r["status"] == "ok"]
    ort = next(r for r in rows if r["model"] == "tiny_student_mbv2_int8_ort_static.onnx")
    ort["throughput"] = 10 * max(r["throughput"] or 0 for r in rows)
    picked = answer(rows, max_drop_pt=100.0)["targets"]["cpu-throughput"]
    assert picked["model"] == ort["model"] and len(picked["rebuild"]) == len(ort["rebuild"])
    assert picked["rebuild"][-1].startswith("vggc quantize") and "tiny_student_mbv2.pt" in picked["rebuild"][-1]

    # a budget the student fits (the steps alone, no bench): accuracy-aware on the distill step's top-1,
    # no FP32 evaluation of its own
    from vggc.pipeline.steps import run_steps

    p = pipeline.PRESETS["tiny"]
    todo, _ = pipeline._select(pipeline.build_steps(weights, data, p, threads=1, max_drop_pt=100.0),
                               ["student_int8_ort_static"], p, log.append)
    again = {r.name: r for r in run_steps(todo, out)}
    distill, st = again["distill"].metrics, again["student_int8_ort_static"]
    loss = 100 * (distill["teacher_top1"] - distill["top1"])
    assert st.status == "ok" and st.metrics["budget_left_pt"] == pytest.approx(100.0 - loss, abs=1e-3)
    assert "budget_note" not in st.metrics and "--max-drop" in st.metrics["command"]
    assert st.work["fp32_source_evals"] == 0
