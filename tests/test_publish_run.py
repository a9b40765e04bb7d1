"""scripts/publish_run.py: a finished run copied into docs/ with its absolute paths written relative."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from vggc.bench.rebuild import machine_paths_in_text


def _load():
    return load_script("publish_run")


def _run(tmp_path: Path, data: Path) -> Path:
    run = tmp_path / "runs" / "full"
    (run / "bench").mkdir(parents=True)
    (run / "prune_scan").mkdir()
    steps = [{"name": "source_eval", "key_inputs": {"data": {"dir": str(data), "test": "ab"}}},
             {"name": "bench", "key_inputs": {"data": {"dir": str(data), "test": "ab"}}},
             {"name": "onnx_fp32", "key_inputs": {"data": {}}}]
    (run / "pipeline.json").write_text(json.dumps({"steps": steps, "out_dir": str(run.resolve())}))
    (run / "bench" / "results.json").write_text(json.dumps([{"model": "$OUT/m.pt", "top1": 0.9}]))
    (run / "bench" / "results.json.json").write_text("{}")
    (run / "bench" / "pareto.png").write_bytes(b"\x89PNG")
    (run / "bench" / "accuracy-cache.json").write_text("{}")  # a cache, not a result
    (run / "prune_scan" / "sensitivity.csv").write_text("layer,drop\n")
    (run / "m.pt").write_bytes(b"weights")
    (run / "m.pt.json").write_text(json.dumps({"settings": {"data": str(data)}}))
    return run


def test_publish_rewrites_the_data_and_run_paths_and_keeps_only_step_lines(tmp_path, monkeypatch):
    mod = _load()
    data = tmp_path / "shared" / "data" / "cifar"
    _run(tmp_path, data)
    log = tmp_path / "run.log"
    log.write_text("== bench: bench\r\nepoch 1/5:  3%|  | 10/390 [00:10<06:10, 1.0it/s]\r-- bench: done in 3 s\n"
                   "!! x failed: y\nsaved something\n")
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "docs" / "full"
    files = mod.publish(Path("runs/full"), dest, data_as="../shared/data/cifar", log=log)
    names = sorted(str(f.relative_to(dest)) for f in files)
    assert names == ["manifests/m.pt.json", "pareto.png", "pipeline.json", "pipeline.log", "results.json",
                     "results.json.manifest.json", "sensitivity.csv"]
    doc = json.loads((dest / "pipeline.json").read_text())
    assert [s["key_inputs"]["data"].get("dir") for s in doc["steps"]] == [
        "../shared/data/cifar", "../shared/data/cifar", None]
    assert doc["out_dir"] == "runs/full"
    assert json.loads((dest / "manifests" / "m.pt.json").read_text())["settings"]["data"] == "../shared/data/cifar"
    assert (dest / "pipeline.log").read_text() == "== bench: bench\n-- bench: done in 3 s\n!! x failed: y\n"
    assert not [p for f in dest.rglob("*.json") for p in machine_paths_in_text(f.read_text())]


def test_publish_refuses_a_path_it_cannot_rewrite_and_leaves_nothing(tmp_path, monkeypatch):
    mod = _load()
    run = _run(tmp_path, tmp_path / "data")
    (run / "stray.onnx.json").write_text(json.dumps({"inputs": {"weights": "/home/someone/model.pt"}}))
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "docs" / "full"
    with pytest.raises(ValueError, match=r"manifests/stray.onnx.json:1: /home/someone"):
        mod.publish(Path("runs/full"), dest, data_as="../data")
    assert not dest.exists()
    dest.mkdir(parents=True)
    (dest / "README.md").write_text("mine")
    assert mod.main(["runs/full", str(dest), "--data-as", "../data"]) == 2
    assert (dest / "README.md").read_text() == "mine"
    doc = json.loads((run / "pipeline.json").read_text())
    doc["steps"][1]["key_inputs"]["data"]["dir"] = "/elsewhere/cifar"
    (run / "pipeline.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="its steps read 2 data directories"):
        mod.publish(Path("runs/full"), tmp_path / "docs" / "other", data_as="../data")


def test_publish_of_a_later_bench_takes_its_files_and_leaves_out_the_manifests(tmp_path, monkeypatch):
    mod = _load()
    data = tmp_path / "shared" / "data" / "cifar"
    run = _run(tmp_path, data)
    later = tmp_path / "runs" / "full-bench2"
    later.mkdir()
    (later / "results.json").write_text(json.dumps([{"model": "$OUT/m.pt", "top1": 0.9, "throughput": 2.0}]))
    (later / "results.json.json").write_text(json.dumps({"settings": {"accuracy_cache": str(later / "c.json"),
                                                                       "data": str(data)}}))
    (later / "accuracy-cache.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "docs" / "full" / "bench2"
    files = mod.publish(Path("runs/full"), dest, data_as="../shared/data/cifar", bench=Path("runs/full-bench2"))
    assert sorted(str(f.relative_to(dest)) for f in files) == ["pipeline.json", "results.json",
                                                                "results.json.manifest.json"]
    assert json.loads((dest / "results.json").read_text())[0]["throughput"] == 2.0
    assert json.loads((dest / "results.json.manifest.json").read_text())["settings"] == {
        "accuracy_cache": "runs/full-bench2/c.json", "data": "../shared/data/cifar"}
    (later / "results.json").unlink()
    with pytest.raises(ValueError, match="no results.json"):
        mod.publish(Path("runs/full"), tmp_path / "docs" / "x", data_as="../d", bench=Path("runs/full-bench2"))
    assert run.is_dir() and not (tmp_path / "docs" / "x").exists()
