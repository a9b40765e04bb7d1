"""Serving without a server: the python-backend model writer, the model plan, the loopback guard and the
one-line errors when the serve extra or libpython is missing. (tests/test_serve.py starts the real server.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, make_tiny_vgg
from conftest import run_cli as run

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("tritonclient.grpc")

from vggc.errors import InputError, ModelFormatError, UnavailableError  # noqa: E402
from vggc.export.triton import parse_pbtxt  # noqa: E402
from vggc.export.triton_python import (  # noqa: E402
    check_python_model,
    cpu_instances,
    resolve_served_file,
    write_python_model,
)
from vggc.serve import bundle  # noqa: E402
from vggc.serve.loadtest import check_loopback  # noqa: E402
from vggc.serve.server import plan_models  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny VGG's ONNX export (with a Triton repository) and the same graph as an FP32 OpenVINO IR."""
    import openvino as ov

    from vggc.artifacts import save_state_dict

    d = tmp_path_factory.mktemp("serve_unit")
    save_state_dict(make_tiny_vgg().state_dict(), d / "tiny.pt")
    res = run("export", d / "tiny.pt", "--no-parity", "--out", d / "tiny.onnx", "--triton", d / "repo",
              "--triton-instance", "cpu")
    assert res.exit_code == 0, res.output
    ov.save_model(ov.Core().read_model(str(d / "tiny.onnx")), str(d / "tiny_ir.xml"), compress_to_fp16=False)
    return {"dir": d, "onnx": d / "tiny.onnx", "ir": d / "tiny_ir.xml", "repo": d / "repo"}


def test_triton_add_ir_writes_python_backend_model_checked_against_file(files, tmp_path):
    repo = tmp_path / "repo"
    res = run("triton-add", repo, files["ir"], "--instances", "2", "--threads", "3", "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["name"] == "tiny_ir_py" and facts["runtime"] == "openvino"
    assert facts["label"] == "Triton + python backend + OpenVINO CPU"
    d = repo / "tiny_ir_py"
    assert sorted(p.name for p in (d / "1").iterdir()) == ["model.bin", "model.py", "model.xml"]
    assert (d / "1" / "model.bin").read_bytes() == files["ir"].with_suffix(".bin").read_bytes()
    cfg = parse_pbtxt((d / "config.pbtxt").read_text())
    assert cfg["backend"] == "python" and "platform" not in cfg
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [64, 256]
    params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
    assert params["threads"] == "3" and params["runtime"] == "openvino" and params["model_file"] == "model.xml"
    assert json.loads(params["vggc_preprocess"])["input_size"] == 32
    assert cfg["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}
    assert cfg["output"][0] == {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}
    man = json.loads((d / "config.pbtxt.json").read_text())
    assert man["settings"]["label"] == facts["label"] and man["schema_check"].startswith("tritonclient")
    assert check_python_model(d)["name"] == "tiny_ir_py"


def test_config_not_matching_the_file_is_refused(files, tmp_path):
    res = write_python_model(tmp_path / "r", files["onnx"], name="m")
    d = tmp_path / "r" / "m"
    assert res["runtime"] == "onnxruntime" and res["label"] == "Triton + python backend + ORT CPU"
    cfg = d / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 10 ]", "dims: [ 11 ]"))
    with pytest.raises(ModelFormatError, match=r"output_dims \[11\] does not match model.onnx's \[10\]"):
        check_python_model(d)
    cfg.write_text(cfg.read_text().replace('name: "input"', 'name: "images"'))
    with pytest.raises(ModelFormatError, match="input_name 'images'"):
        check_python_model(d)


def test_triton_add_bad_input_one_line_nothing_written(files, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"x")
    res = run("triton-add", tmp_path / "repo", bad)
    assert_one_line_error(res, 2, "serve an OpenVINO IR")
    assert not (tmp_path / "repo").exists()
    res = run("triton-add", tmp_path / "repo", files["ir"], "--runtime", "onnxruntime")
    assert_one_line_error(res, 2, "--runtime onnxruntime: .xml files run on openvino")
    res = run("triton-add", tmp_path / "repo", files["ir"], "--name", "bad/name")
    assert_one_line_error(res, 2, "Triton model name")
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"targets": {"cpu-throughput": {"path": str(tmp_path / "gone.xml"),
                                                                  "model": "gone.xml"}}}))
    res = run("triton-add", tmp_path / "repo", answer)
    assert_one_line_error(res, 2, "target cpu-throughput's model")
    assert not (tmp_path / "repo").exists()


def test_answer_json_resolves_to_its_cpu_target(files, tmp_path):
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"targets": {"cpu-throughput": {"path": "/nowhere/x.xml", "model": "x.xml"},
                                              "cpu-latency": {"path": str(files["onnx"])}}}))
    (tmp_path / "x.xml").write_text("<net/>")
    assert resolve_served_file(answer) == tmp_path / "x.xml"  # beside the answer when the path is elsewhere
    assert resolve_served_file(answer, "cpu-latency") == files["onnx"]
    with pytest.raises(InputError, match="target 'gpu'"):
        resolve_served_file(answer, "gpu")


def test_cpu_instances_split_cores():
    assert cpu_instances(1) == (1, 1) and cpu_instances(2) == (1, 2) and cpu_instances(3) == (1, 3)
    assert cpu_instances(4) == (2, 2) and cpu_instances(16) == (2, 8) and cpu_instances(7) == (2, 3)


def test_plan_skips_gpu_only_models_visibly(files, tmp_path):
    repo = tmp_path / "repo"
    write_python_model(repo, files["onnx"], name="cpu_model")
    gpu = repo / "m_trt"
    (gpu / "1").mkdir(parents=True)
    (gpu / "config.pbtxt").write_text('name: "m_trt"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n')
    gpu2 = repo / "m_gpu"
    (gpu2 / "1").mkdir(parents=True)
    (gpu2 / "config.pbtxt").write_text('name: "m_gpu"\nplatform: "onnxruntime_onnx"\n'
                                       'instance_group [ { kind: KIND_GPU } ]\n')
    leftover = repo / ".tmp-cpu_model-x"  # a writer's temporary directory is never a model
    leftover.mkdir()
    (leftover / "config.pbtxt").write_text((repo / "cpu_model" / "config.pbtxt").read_text())
    load, skipped = plan_models(repo, gpu=False)
    assert load == ["cpu_model"]
    assert "tensorrt_plan model runs on GPUs only" in skipped["m_trt"]
    assert "KIND_GPU" in skipped["m_gpu"] and skipped["m_gpu"].startswith("skipped, no GPU visible")
    assert plan_models(repo, gpu=True) == (["cpu_model", "m_gpu", "m_trt"], {})
    with pytest.raises(InputError, match="no model nope"):
        plan_models(repo, ["nope"], gpu=False)
    with pytest.raises(InputError, match="nothing to load"):
        plan_models(repo, ["m_trt"], gpu=False)
    res = run("serve", repo, "--model", "m_trt")
    assert_one_line_error(res, 2, "nothing to load")


@pytest.mark.parametrize("url", ["10.1.2.3:8001", "0.0.0.0:8001", "grpc://192.168.0.1:8001", "8.8.8.8:1"])
def test_loadtest_refuses_non_loopback(url):
    with pytest.raises(InputError, match="not a loopback address"):
        check_loopback(url)
    res = run("loadtest", url, "m", "--requests", "1")
    assert_one_line_error(res, 2, "not a loopback address")


def test_loopback_urls_accepted():
    assert check_loopback("127.0.0.1:8001") == "127.0.0.1:8001"
    assert check_loopback("grpc://localhost:9") == "localhost:9"
    assert check_loopback("[::1]:8001") == "[::1]:8001"
    with pytest.raises(InputError, match="expected HOST:PORT"):
        check_loopback("127.0.0.1")
    with pytest.raises(InputError, match="speaks gRPC"):
        check_loopback("http://127.0.0.1:8000")


def test_loadtest_no_server_one_line_error():
    from vggc.serve.server import free_port

    res = run("loadtest", f"127.0.0.1:{free_port()}", "m", "--requests", "1")
    assert_one_line_error(res, 1, "127.0.0.1:")


def test_missing_extra_and_libpython_one_line(files, monkeypatch):
    monkeypatch.setattr(bundle, "_pytriton_root", lambda: None)
    with pytest.raises(UnavailableError, match=r"pip install -e '\.\[serve\]'"):
        bundle.locate()
    res = run("serve", files["repo"])
    assert_one_line_error(res, 3, "pip install -e '.[serve]'")
    monkeypatch.undo()
    if bundle._pytriton_root() is None:
        pytest.skip("nvidia-pytriton not installed: the libpython check needs its stub")
    monkeypatch.setattr(bundle, "_stub_missing_libs", lambda stub, libs: [bundle.LIBPYTHON])
    res = run("serve", files["repo"])
    assert_one_line_error(res, 3, f"apt-get install -y libpython{bundle.PY_VERSION}")


def test_served_file_facts_match_local_runtime(files):
    """The IR and the ONNX agree (the served files are the same graph), the precondition of the served tests."""
    from vggc import runtime

    x = torch.randn(3, 3, 32, 32)
    outs = []
    for f, key in ((files["onnx"], "onnxruntime-cpu"), (files["ir"], "openvino-cpu")):
        r = runtime.open_model(runtime.describe(f), runtime.get_backend(key), {"threads": 1})
        outs.append(r.predict(x))
        r.close()
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_openvino_template_splits_batches_into_static_power_of_two_chunks(monkeypatch):
    """The OpenVINO model.py runs a merged batch as power-of-two chunks that cover every row exactly once."""
    import importlib.util
    import sys
    import types

    from vggc.serve.pymodels import TEMPLATES

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("vggc_ov_template", TEMPLATES["openvino"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sizes = [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert mod._chunks(37, sizes) == [(0, 32), (32, 4), (36, 1)]
    assert mod._chunks(256, sizes) == [(0, 256)] and mod._chunks(1, sizes) == [(0, 1)]
    for n in range(1, 257):
        chunks = mod._chunks(n, sizes)
        assert sum(s for _, s in chunks) == n and all(a + s == b for (a, s), (b, _) in zip(chunks, chunks[1:]))
