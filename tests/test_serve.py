"""A real tritonserver (the one bundled by nvidia-pytriton, the serve extra) on 127.0.0.1, serving tiny models.

The repository holds what vggc writes: ``tiny`` (``vggc export --triton --triton-instance cpu``, platform
onnxruntime_onnx, loaded through the test-only Python-based backend tests/triton_backends/onnxruntime),
``tiny_py`` / ``tiny_ir_py`` (``vggc triton-add``: ORT / OpenVINO inside the python backend), ``tiny_batch``
(a long queue delay, so the dynamic batcher must merge), ``broken`` / ``broken_ir`` (a corrupt ONNX file, a
truncated IR .bin: their load fails with the reason, the others serve) and ``tiny_trt`` (tensorrt_plan: skipped without a GPU). Every server started here is
stopped, and no process of its group survives (asserted). Skipped, with the reason, where the serve extra or
libpython3.X is missing (`make test` installs both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, make_imagefolder, make_tiny_vgg
from conftest import run_cli as run

from vggc.serve.bundle import serve_reason
from vggc.serve.server import gpu_visible

REASON = serve_reason()
pytestmark = [pytest.mark.serve, pytest.mark.skipif(REASON is not None, reason=f"no tritonserver here: {REASON}")]
SHIM = ROOT / "tests" / "triton_backends"


def _grpc():
    import tritonclient.grpc as g

    return g


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    import openvino as ov

    from vggc.artifacts import save_state_dict
    from vggc.export.triton_python import write_python_model

    d = tmp_path_factory.mktemp("serve")
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(100.0)  # O(1) logits: argmax is not a near-tie
    save_state_dict(model.state_dict(), d / "tiny.pt")
    r = d / "repo"
    res = run("export", d / "tiny.pt", "--no-parity", "--out", d / "tiny.onnx", "--triton", r,
              "--triton-instance", "cpu")
    assert res.exit_code == 0, res.output
    ov.save_model(ov.Core().read_model(str(d / "tiny.onnx")), str(d / "tiny_ir.xml"), compress_to_fp16=False)
    for args in (["triton-add", r, d / "tiny.onnx"], ["triton-add", r, d / "tiny_ir.xml", "--instances", "1",
                                                       "--threads", "1"]):
        res = run(*args)
        assert res.exit_code == 0, res.output
    write_python_model(r, d / "tiny_ir.xml", name="tiny_batch", instances=1, threads=1, max_batch=8, opt_batch=8,
                       max_queue_delay_us=300_000)
    write_python_model(r, d / "tiny.onnx", name="broken", instances=1, threads=1)
    (r / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX file" * 10)
    write_python_model(r, d / "tiny_ir.xml", name="broken_ir", instances=1, threads=1)
    weights = r / "broken_ir" / "1" / "model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated IR weights
    (r / "tiny_trt" / "1").mkdir(parents=True)
    (r / "tiny_trt" / "config.pbtxt").write_text('name: "tiny_trt"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n')
    return {"dir": d, "repo": r, "onnx": d / "tiny.onnx", "ir": d / "tiny_ir.xml", "model": model}


def _no_stray(server) -> None:
    """The server and every process of its group (python-backend stubs) are gone, its temp dir removed."""
    assert not server.running() and not server.group_alive()
    assert not Path(f"/proc/{server.proc.pid}").exists()
    assert not server.workdir.exists()


@pytest.fixture(scope="module")
def server(repo):
    from vggc.serve.server import TritonServer

    srv = TritonServer(repo["repo"], backends=SHIM, gpu=False, ready_timeout=120)
    srv.start()
    yield srv
    srv.stop()
    _no_stray(srv)


def _infer(client, name, x, datatype="FP32", input_name="input"):
    g = _grpc()
    inp = g.InferInput(input_name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp], client_timeout=30).as_numpy("logits")


def _local(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    from vggc import runtime

    r = runtime.open_model(runtime.describe(path), runtime.get_backend(key), {"threads": 1})
    try:
        return r.predict(torch.from_numpy(x)).numpy()
    finally:
        r.close()


def test_bound_to_loopback_only(server):
    """Every listening socket of the server is on 127.0.0.1 (/proc/net/tcp: 0100007F; gRPC listens on the
    IPv4-mapped ::ffff:127.0.0.1 in /proc/net/tcp6)."""
    ports = {server.http_port, server.grpc_port}
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in ports:  # 0A = LISTEN
                listening[int(port, 16)] = addr
    assert set(listening) == ports
    assert all(a in ("0100007F", "0000000000000000FFFF00000100007F") for a in listening.values()), listening
    assert server.facts()["metrics"] == "off" and server.http_url.startswith("http://127.0.0.1:")


def test_model_states_broken_fails_with_reason_others_serve(server):
    states = {m["name"]: m for m in server.model_states()}
    for name in ("tiny", "tiny_py", "tiny_ir_py", "tiny_batch"):
        assert states[name]["state"] == "READY", states[name]
    assert states["broken"]["state"] == "UNAVAILABLE"
    assert "protobuf" in states["broken"]["reason"].lower() or "load model" in states["broken"]["reason"].lower(), \
        states["broken"]["reason"]
    assert states["broken_ir"]["state"] == "UNAVAILABLE" and states["broken_ir"]["reason"], states["broken_ir"]
    assert states["tiny_trt"]["state"] == "SKIPPED" and "GPUs only" in states["tiny_trt"]["reason"]
    with pytest.raises(Exception, match="(?i)broken"):
        _infer(_grpc().InferenceServerClient(server.grpc_url), "broken", np.zeros((1, 3, 32, 32), np.float32))


def test_served_outputs_equal_local_runtimes_http_and_grpc(server, repo):
    import tritonclient.http as h

    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    client = _grpc().InferenceServerClient(server.grpc_url)
    ref_ort = _local(repo["onnx"], "onnxruntime-cpu", x)
    ref_ov = _local(repo["ir"], "openvino-cpu", x)
    for name, ref in (("tiny", ref_ort), ("tiny_py", ref_ort), ("tiny_ir_py", ref_ov)):
        y = _infer(client, name, x)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4, err_msg=name)
        hc = h.InferenceServerClient(server.http_url.removeprefix("http://"))
        inp = h.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_array_equal(hc.infer(name, [inp]).as_numpy("logits"), y)
        hc.close()
    client.close()


@pytest.mark.parametrize("bad, pattern", [
    ({"x": np.zeros((1, 3, 16, 16), np.float32)}, "unexpected shape"),
    ({"x": np.zeros((1, 3, 32, 32), np.float64), "datatype": "FP64"}, "data-type is 'FP64'"),
    ({"x": np.zeros((1, 3, 32, 32), np.float32), "name": "no_such_model"}, "unknown model"),
    ({"x": np.zeros((1, 3, 32, 32), np.float32), "input_name": "images"}, "unexpected inference input 'images'"),
])
def test_bad_request_gets_triton_error_server_stays_up(server, bad, pattern):
    from tritonclient.utils import InferenceServerException

    client = _grpc().InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=f"(?i){pattern}"):
        _infer(client, bad.get("name", "tiny_ir_py"), bad["x"], bad.get("datatype", "FP32"),
               bad.get("input_name", "input"))
    assert server.running()
    y = _infer(client, "tiny_ir_py", np.zeros((2, 3, 32, 32), np.float32))  # the next request is served
    assert y.shape == (2, 10)
    client.close()


def test_loadtest_counts_match_server_stats_and_batcher_merges(server):
    from vggc.serve.loadtest import run_loadtest

    res = run_loadtest(server.grpc_url, "tiny_ir_py", concurrency=(1, 4), requests=30, deadline_s=60, timeout_s=20,
                       batch=2, warmup=4)
    assert res["label"] == "Triton + python backend + OpenVINO CPU" and res["server"].startswith("triton 2.")
    for row, c in zip(res["levels"], (1, 4)):
        s = row["server_stats"]
        assert row["concurrency"] == c and row["requests"] == 30 and row["images"] == 60 and not row["hit_deadline"]
        assert s["inference_count"] == 60 and s["success_count"] == 30  # exactly our requests, counted by Triton
        assert 1 <= s["execution_count"] <= 30 and s["mean_batch"] == round(60 / s["execution_count"], 3)
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
        assert row["throughput_rps"] > 0 and row["throughput_ips"] == pytest.approx(2 * row["throughput_rps"],
                                                                                   rel=0.01)
    assert res["levels"][0]["server_stats"]["execution_count"] == 30  # one client: nothing to merge
    # a 300 ms queue delay with preferred batch 8: 8 concurrent single-image requests are merged
    res = run_loadtest(server.grpc_url, "tiny_batch", concurrency=(8,), requests=48, deadline_s=60, timeout_s=20,
                       warmup=0)
    s = res["levels"][0]["server_stats"]
    assert s["inference_count"] == 48 and s["execution_count"] < 48 and s["mean_batch"] > 1


def test_loadtest_cli_json_out_reference_and_unknown_model(server, repo, tmp_path):
    out = tmp_path / "lt.json"
    res = run("loadtest", server.grpc_url, "tiny_py", "--concurrency", "1,2", "--requests", "10", "--warmup", "2",
              "--reference", repo["onnx"], "--reference-threads", "1", "--out", out)
    assert res.exit_code == 0, res.output
    assert "Triton + python backend + ORT CPU" in res.output and "mean batch" in res.output
    assert "in-process onnxruntime-cpu, batch 64" in res.output
    doc = json.loads(out.read_text())
    assert [r["concurrency"] for r in doc["levels"]] == [1, 2] and doc["kind"] == "triton-loadtest"
    assert doc["cpu"] and doc["stats_source"].startswith("Triton ModelStatistics")
    ref = doc["reference"]
    assert ref["before"]["backend"] == "onnxruntime-cpu" and ref["before"]["batch"] == 64
    assert ref["throughput_ips"] == pytest.approx((ref["before"]["throughput_ips"] + ref["after"]["throughput_ips"]) / 2,
                                                  abs=0.01)
    for r in doc["levels"]:
        assert r["served_vs_inprocess"] == pytest.approx(r["throughput_ips"] / ref["throughput_ips"], abs=1e-4)
    res = run("loadtest", server.grpc_url, "tiny", "--concurrency", "1", "--requests", "3", "--warmup", "0", "--json")
    assert res.exit_code == 0, res.output  # the exported ONNX model, on the test-only Python-based backend:
    assert json.loads(res.stdout)["label"] == "Triton + Python-based onnxruntime backend (model.py)"  # said so
    res = run("loadtest", server.grpc_url, "no_such_model", "--requests", "1")
    assert_one_line_error(res, 1, "no_such_model")
    assert server.running()


def test_served_top1_equals_the_files_own(server, repo, tmp_path):
    """Served top-1 through the server (batched requests from 3 threads) = the IR's own top-1, image by image."""
    from vggc import runtime
    from vggc.data import load_split, resolve_preprocess
    from vggc.evaluate import evaluate

    data = make_imagefolder(tmp_path / "data", per_class=5)
    res = run("loadtest", server.grpc_url, "tiny_ir_py", "--data", data, "--batch", "7", "--concurrency", "3",
              "--json")
    assert res.exit_code == 0, res.output
    served = json.loads(res.stdout)
    r = runtime.open_model(runtime.describe(repo["ir"]), runtime.get_backend("openvino-cpu"), {"threads": 1})
    local = evaluate(r.predict, load_split(data, "test"), resolve_preprocess(None), batch_size=16)
    r.close()
    assert served["n"] == local.n == 50 and served["correct"] == local.correct
    assert served["top1"] == local.top1 and served["per_class"] == local.per_class


def test_server_killed_mid_loadtest_client_stops_with_one_line(repo):
    from vggc.errors import VggcError
    from vggc.serve.loadtest import run_loadtest
    from vggc.serve.server import TritonServer

    srv = TritonServer(repo["repo"], models=["tiny_ir_py"], gpu=False).start()
    box = {}

    def load():
        try:
            run_loadtest(srv.grpc_url, "tiny_ir_py", concurrency=(4,), requests=1_000_000, deadline_s=120,
                         timeout_s=5, warmup=0)
        except VggcError as err:
            box["error"] = str(err)

    try:
        t = threading.Thread(target=load, daemon=True)
        t.start()
        time.sleep(2.0)
        assert t.is_alive()  # still loading when the server dies
        t0 = time.monotonic()
        srv.kill()
        t.join(30)
        assert not t.is_alive(), "the load test hung after the server was killed"
        assert time.monotonic() - t0 < 30
    finally:
        srv.stop()
    _no_stray(srv)
    assert "stopped answering" in box["error"] and "\n" not in box["error"], box


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_cli_prints_urls_and_stops_on_signal(repo, sig):
    cmd = [sys.executable, "-m", "vggc", "serve", str(repo["repo"]), "--model", "tiny_ir_py", "--model", "tiny_trt",
           "--ready-timeout", "120"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # started with SIGINT ignored, as a background job or a test runner may start it: Ctrl-C must still stop it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines, pid, grpc = [], None, None
    try:
        end = time.monotonic() + 150
        # up to the asked model's state line: a signal sent while the CLI still queries the states
        # (right after the URLs) stops it before it prints them, as it should
        while time.monotonic() < end and not (lines and lines[-1].startswith("  tiny_ir_py")):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if " pid " in line:
                pid = int(line.rsplit("pid", 1)[1])
            if line.strip().startswith("gRPC"):
                grpc = line.split()[1]
        assert grpc and grpc.startswith("127.0.0.1:") and pid, lines
        y = _infer(_grpc().InferenceServerClient(grpc), "tiny_ir_py", np.zeros((1, 3, 32, 32), np.float32))
        assert y.shape == (1, 10)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped (tritonserver exit code" in err
    assert gpu_visible() or "tiny_trt: skipped, no GPU visible" in err
    listed = [ln.split() for ln in ("".join(lines) + out).splitlines() if ln.startswith("  ") and "://" not in ln]
    assert ["tiny_ir_py", "READY"] in listed and not any(r[0] == "tiny_py" for r in listed)  # only what was asked
    assert not Path(f"/proc/{pid}").exists(), "tritonserver still running after vggc serve stopped"


def test_server_dies_with_a_killed_parent(repo):
    """A vggc process SIGKILLed while serving (no chance to stop its server) leaves no tritonserver behind."""
    code = ("import sys, time\nfrom vggc.serve.server import TritonServer\n"
            f"s = TritonServer({str(repo['repo'])!r}, models=['tiny_ir_py'], gpu=False).start()\n"
            "print(s.proc.pid, flush=True)\ntime.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(parent.stdout.readline() or 0)
        assert pid and Path(f"/proc/{pid}").exists()
    finally:
        parent.kill()
        parent.wait(timeout=30)

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    end = time.monotonic() + 30
    while alive() and time.monotonic() < end:
        time.sleep(0.2)
    assert not alive(), f"tritonserver {pid} outlived its killed parent"


def test_port_taken_before_bind_gets_fresh_ports(repo, monkeypatch):
    """A port that another process took between picking and binding: the server starts again on new ports."""
    import socket

    from vggc.serve import server as srv_mod

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken, real, calls = blocker.getsockname()[1], srv_mod.free_port, []
    monkeypatch.setattr(srv_mod, "free_port", lambda: calls.append(1) or (taken if len(calls) == 1 else real()))
    try:
        with srv_mod.TritonServer(repo["repo"], models=["tiny_ir_py"], gpu=False) as s:
            assert len(calls) == 4 and taken not in (s.http_port, s.grpc_port)
            assert {m["name"]: m["state"] for m in s.model_states()}["tiny_ir_py"] == "READY"
    finally:
        blocker.close()
    _no_stray(s)
