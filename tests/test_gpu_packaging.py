"""The ``[gpu]`` extra resolves to one consistent set (issue 15, packaging).

Reads pyproject.toml, asks the package index for the metadata of exactly the pinned wheels
(``pip install --dry-run --no-deps --ignore-installed --report``: metadata only, nothing installed)
and checks every requirement each of them places on another member of the set (torch-tensorrt on
torch and tensorrt-cu13, tensorrt-cu13 on its libs/bindings, ...) against the pinned versions; and
that ONNX Runtime comes from one package only (onnxruntime in [cpu], onnxruntime-gpu in [gpu], neither in [dev],
neither in the core dependencies: they are one Python module). Skips (visibly) only when the
index cannot be reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(reqs) -> dict:
    out = {}
    for r in map(Requirement, reqs):
        pinned = [s.version for s in r.specifier if s.operator == "=="]
        out[canonicalize_name(r.name)] = (r, pinned[0] if pinned else None)
    return out


def test_onnxruntime_comes_from_one_package():
    p = _project()
    core = _pins(p["dependencies"])
    extras = {k: _pins(v) for k, v in p["optional-dependencies"].items()}
    assert "onnxruntime" not in core and "onnxruntime-gpu" not in core
    assert "onnxruntime" in extras["cpu"]
    # [dev] brings no ONNX Runtime: `.[cpu,dev]` (make) and `.[gpu,dev]` are each one consistent set
    assert "onnxruntime" not in extras["dev"] and "onnxruntime-gpu" not in extras["dev"]
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime" not in extras["gpu"]


def test_gpu_extra_resolves_to_one_consistent_set(tmp_path):
    p = _project()
    gpu = _pins(p["optional-dependencies"]["gpu"])
    core = _pins(p["dependencies"])
    assert all(v for _, v in gpu.values()), "every [gpu] requirement is pinned with =="
    torch_pin = core["torch"][1]
    # + the metapackage's Python half, which it pins exactly. Its native half, tensorrt-cu13-libs, is a
    # "wheel_stub" sdist on PyPI that fetches the wheel from pypi.nvidia.com while preparing its metadata,
    # so it is not read here; the requirements on it are checked by name and version below.
    trt = gpu["tensorrt-cu13"][1]
    wanted = [f"{n}=={v}" for n, (_, v) in gpu.items()] + [f"torch=={torch_pin}", f"tensorrt-cu13-bindings=={trt}"]
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                          "--quiet", "--report", str(report), *wanted], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip() and "WARNING: Location" not in ln]
        pytest.skip(f"cannot read the [gpu] wheels' metadata from the package index: {(lines or ['pip failed'])[-1]}")
    meta = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in json.loads(report.read_text())["install"]}
    versions = {n: m["version"] for n, m in meta.items()}
    assert set(versions) == {canonicalize_name(w.split("==")[0]) for w in wanted}
    versions["tensorrt-cu13-libs"] = trt  # what tensorrt-cu13 pins (checked below like the rest)
    checked, problems = 0, []
    for name, m in meta.items():
        for r in map(Requirement, m.get("requires_dist") or []):
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue  # an extra, or another platform
            dep = canonicalize_name(r.name)
            if dep in versions and name != dep:
                checked += 1
                if not r.specifier.contains(versions[dep], prereleases=True):
                    problems.append(f"{name} {versions[name]} needs {r}, the set has {dep} {versions[dep]}")
    assert not problems, "\n".join(problems)
    # torch-tensorrt's pins on torch and TensorRT are among the requirements checked
    tt = [str(r) for r in map(Requirement, meta["torch-tensorrt"]["requires_dist"]) if r.marker is None]
    assert any(t.startswith("torch") and "tensorrt" not in t for t in tt)
    assert any(t.startswith("tensorrt-cu13") for t in tt) and checked >= 6
    # onnxruntime-gpu and torch are built for the same CUDA major (13) as tensorrt-cu13
    ort_cuda = [str(r) for r in map(Requirement, meta["onnxruntime-gpu"]["requires_dist"])
                if canonicalize_name(r.name) == "nvidia-cuda-runtime"]
    assert ort_cuda and all("~=13" in c or ">=13" in c for c in ort_cuda), ort_cuda
    torch_cuda = [str(r) for r in map(Requirement, meta["torch"]["requires_dist"]) if "cuda-toolkit" in r.name]
    assert torch_cuda and all("==13." in c for c in torch_cuda), torch_cuda
