"""scripts/compare_runs.py: two pipeline runs' bench rows and step work side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script


def _load():
    return load_script("compare_runs")


def _run(d: Path, rows: list[tuple], steps: dict) -> Path:
    (d / "bench").mkdir(parents=True)
    (d / "bench" / "results.json").write_text(json.dumps(
        [{"model": m, "backend": b, "top1": t} for m, b, t in rows]))
    (d / "pipeline.json").write_text(json.dumps({"steps": [{"name": n, "seconds": s} for n, s in steps.items()],
                                                 "step_seconds": sum(steps.values())}))
    return d


def test_compare_matches_rows_and_reports_the_step_work(tmp_path, capsys):
    mod = _load()
    a = _run(tmp_path / "a", [("m.pt", "torch-fp32", 0.9), ("s.pt", "torch-fp32", 0.4), ("m.pt", "cuda", None)],
             {"x": 30.0, "bench": 70.0})
    b = _run(tmp_path / "b", [("m.pt", "torch-fp32", 0.9), ("s.pt", "torch-fp32", 0.38), ("m.pt", "cuda", None),
                              ("q.onnx", "onnxruntime-cpu", 0.37)], {"x": 20.0, "bench": 55.0, "y": 0.0})
    doc = mod.compare(a, b)
    assert [(r["model"], r["identical"]) for r in doc["rows"]] == [("m.pt", True), ("s.pt", False)]
    assert doc["only_after"] == [["q.onnx", "onnxruntime-cpu"]] and doc["only_before"] == []
    assert doc["steps"]["y"] == {"before": None, "after": 0.0}
    assert doc["step_work"]["change"] == pytest.approx(-0.25)
    assert mod.main([str(a), str(b), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 shared rows have identical top-1" in out and "DIFFERS" in out and "(-25.0 %)" in out
    assert json.loads((tmp_path / "c.json").read_text()) == doc
