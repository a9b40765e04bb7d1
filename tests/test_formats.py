"""The format table (vggc/formats.py): what derives from it, and a backend added by one record plus its
module (this test file is the module) with no other vggc file edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_quant_setup
from conftest import run_cli as run

from vggc import formats

DUMMY = formats.Format("dummy-fmt", (".dummy",), companions=(".dsum",), eval_backends=("dummy-eval",),
                       report_backend="dummy-eval", quantize="dummy", module=__name__, trial_backend="dummy-trials",
                       default_calib="minmax", label="dummy")
WRITES: list[Path] = []


# ----------------------------------------------------------------------------- the dummy backend's module
# (the interface of vggc.compress.quantize.backend): it "quantizes" to an FP32 copy of the weights

class _Runner:
    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def predict(self, x):
        return self.model(x)

    def close(self):
        self.model = None


def reason():
    return None


def check(*, mode, calib_method, per_channel, preset):
    from vggc.errors import InputError

    if not per_channel:
        raise InputError("--per-tensor: the dummy backend is per-channel only")


def write(job, tmp, companions):
    from vggc.compress.quantize.budget import Trials

    WRITES.append(Path(tmp))
    facts = {"quantized_layers": {"conv": 0, "linear": 0}, "fp32_nodes": []}
    if job.budget is not None:
        trials = Trials(["layer0", "layer1"], lambda excluded: _Runner(job.model), lambda: _Runner(job.model),
                        job.fmt.trial_backend)
        facts["budget"] = job.budget(trials, [b.numpy() for b in job.batches]).to_dict()
    shutil.copyfile(job.weights, tmp)
    companions[0].write_text(job.weights.name)
    return facts, job.weights.stat().st_size


def open_for_eval(path, companions, *, preprocess, batch_size, threads, which=None):
    from vggc.models import load_weights

    assert companions[0].read_text()  # the companion is written before the file is opened
    return _Runner(load_weights(path).model.eval()), "dummy-eval"


def manifest_extra(out, facts):
    return {"dummy_companion": out.with_suffix(".dsum").name}


def settings_extra(job):
    return {"dummy": True}


def notes(job):
    return ["dummy backend: an FP32 copy"]


# ----------------------------------------------------------------------------- tests

@pytest.fixture
def dummy():
    formats.register(DUMMY)
    WRITES.clear()
    yield DUMMY
    formats.unregister(DUMMY.name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_quant_setup(tmp_path_factory.mktemp("formats"))


def test_dummy_backend_needs_one_record_and_its_module(dummy, tiny, tmp_path):
    from vggc.compress.quantize import BACKENDS, SUFFIXES, TRIAL_BACKENDS

    assert "dummy" in BACKENDS and SUFFIXES["dummy"] == ".dummy" and TRIAL_BACKENDS["dummy"] == "dummy-trials"
    helped = run("quantize", "--help")
    assert helped.exit_code == 0 and "dummy" in helped.output and "dummy-eval" in helped.output
    out = tmp_path / "m.dummy"
    res = run("quantize", tiny["weights"], "--mode", "static", "--backend", "dummy", "--data", tiny["data"],
              "--calib-size", "10", "--eval-limit", "20", "--max-drop", "1", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["format"] == "dummy-fmt" and got["backend"] == "dummy" and got["eval_backend"] == "dummy-eval"
    assert got["top1"] == got["fp32_top1"] and got["delta_pt"] == 0  # the dummy writes an FP32 copy
    assert got["budget"]["backend"] == "dummy-trials" and got["budget"]["excluded"] == []
    assert got["calib_method"] == "minmax" and "dummy backend: an FP32 copy" in got["notes"]
    assert len(WRITES) == 1 and WRITES[0] != out  # written to a temporary, renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dsum", "m.dummy", "m.dummy.json"]
    man = json.loads((tmp_path / "m.dummy.json").read_text())
    assert man["kind"] == "dummy-fmt" and man["settings"]["dummy"] is True and man["dummy_companion"] == "m.dsum"
    assert man["metrics"]["size_bytes"] == out.stat().st_size + (tmp_path / "m.dsum").stat().st_size


def test_dummy_backend_options_are_checked_by_its_record_and_module(dummy, tiny, tmp_path):
    base = ["quantize", tiny["weights"], "--mode", "static", "--backend", "dummy", "--data", tiny["data"]]
    assert_one_line_error(run(*base, "--out", tmp_path / "m.onnx"), 2, "--backend dummy writes a .dummy file")
    assert_one_line_error(run(*base, "--out", tmp_path / "m.dummy", "--per-tensor"), 2,
                          "the dummy backend is per-channel only")
    assert_one_line_error(run(*base, "--out", tmp_path / "m.dummy", "--opset", "18"), 2,
                          "--opset applies to --backend onnxruntime only")
    assert_one_line_error(run(*base, "--out", tmp_path / "m.dummy", "--fp32-onnx", tiny["weights"]), 2,
                          "--fp32-onnx applies to --backend onnxruntime/openvino")
    assert_one_line_error(run(*base, "--out", tmp_path / "m.dummy", "--eval-backend", "openvino-cpu"), 2,
                          "--backend dummy files run on dummy-eval")
    assert list(tmp_path.iterdir()) == [] and WRITES == []


def test_unregistered_backend_is_not_offered(tiny, tmp_path):
    res = run("quantize", tiny["weights"], "--mode", "static", "--backend", "dummy", "--out", tmp_path / "m.dummy")
    assert res.exit_code == 2 and "'dummy' is not one of" in res.output


def _row(out: str) -> dict:
    from vggc.pipeline import _unavailable_row
    from vggc.pipeline.steps import Step, StepResult

    step = Step("int8_x", [out], lambda ctx: {})
    return _unavailable_row(step, StepResult("int8_x", "unavailable: no library"), 32)


@pytest.mark.parametrize("out,fmt,backend", [
    ("m.onnx", "onnx", "-"), ("m.pt2", "pt2", "-"), ("m.pt", "state_dict", "-"),
    ("m.engine", "tensorrt-engine", "tensorrt"), ("m.xml", "openvino-ir", "openvino-cpu"), ("m.weird", None, "-"),
])
def test_unavailable_rows_come_from_the_table(out, fmt, backend):
    row = _row(out)
    assert (row["format"], row["backend"], row["status"], row["model"]) == (fmt, backend, "no library", out)


def test_unavailable_row_of_a_registered_format(dummy):
    row = _row("m.dummy")
    assert (row["format"], row["backend"]) == ("dummy-fmt", "dummy-eval")


def test_table_agrees_with_the_runtime_registry():
    """Every record names formats and backends vggc.runtime knows, and each quantize record's module
    provides the whole backend interface."""
    from vggc import runtime
    from vggc.compress.quantize.backend import REQUIRED

    runtime._load_plugins()
    keys = {b.key for b in runtime.backends()}
    for f in formats.formats():
        assert f.name in runtime._DESCRIBERS, f.name
        assert set(f.eval_backends) <= keys, f.name
        assert f.trial_backend is None or f.trial_backend in keys
        if f.quantize:
            mod = f.impl()
            assert all(callable(getattr(mod, name, None)) for name in REQUIRED), f.name
    assert formats.quantize_backends() == ["onnxruntime", "torch", "openvino"]
    assert formats.by_suffix("a/b/model.XML").name == "openvino-ir" and formats.by_suffix(".bin") is None
