"""One home for library versions (a manifest's ``environment`` comes from :mod:`vggc.provenance`)
and project metadata that installs without a deprecation warning (``project.license`` an SPDX string)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest
import torch

from vggc import provenance
from vggc.artifacts import environment_info, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
# the keys every manifest written so far has carried (the installed ones among the optional libraries)
ENVIRONMENT_KEYS = ("python", "torch", "numpy", "platform", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu",
                    "torchao", "openvino", "nncf")


def test_environment_info_is_provenance_manifest_environment():
    info = environment_info()
    assert info == provenance.manifest_environment()
    assert list(info)[:4] == ["python", "torch", "numpy", "platform"]
    assert set(info) <= set(ENVIRONMENT_KEYS)
    assert info["torch"] == torch.__version__  # the build tag (+cu130, +cpu) kept
    assert info["python"] == platform.python_version()
    libs = provenance.library_versions(provenance.MANIFEST_LIBRARIES)
    assert {k: v for k, v in info.items() if k in provenance.MANIFEST_LIBRARIES} == libs
    assert "numpy" in info and "torchvision" in info  # installed here: the versions are really read


def test_manifest_records_the_environment(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    write_manifest(f, kind="test", inputs={}, settings={})
    assert read_manifest(f)["environment"] == environment_info()


def test_manifest_libraries_are_reported_libraries():
    # a library a manifest names is one whose version can change a number (it keys the caches too)
    assert set(provenance.MANIFEST_LIBRARIES) <= set(provenance.LIBRARIES)


tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")


def test_license_is_an_spdx_string_and_setuptools_understands_it():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "Apache-2.0"  # a TOML table is deprecated by setuptools
    reqs = [r for r in doc["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", reqs[0].replace(" ", ""))
    assert m and int(m.group(1)) >= 77  # the first setuptools that reads PEP 639 license expressions
    assert not any(c.startswith("License ::") for c in doc["project"].get("classifiers", []))  # PEP 639: not both
