"""scripts/frontier_summary.py: a run's trained variants, fastest rows and acceptance checks against a peer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import load_script

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _checks(found: list[dict]) -> dict:
    return {c["name"]: c for c in found}


def test_the_committed_budget_run_meets_its_bars_and_has_no_student(tmp_path, capsys):
    fs = load_script("frontier_summary")
    assert fs.main([str(DOCS / "budget-amx"), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    c = _checks(json.loads((tmp_path / "c.json").read_text())["checks"])
    assert c["answer vs peer INT8 @batch"]["value"] == 6.82 and c["answer vs peer INT8 @batch"]["ok"] is True
    assert c["answer p50 ms @1"] == {"name": "answer p50 ms @1", "value": 0.214, "bar": "<= 0.3", "ok": True}
    assert c["answer top-1 within the budget"]["ok"] is True and c["answer top-1 within the budget"]["bar"] == ">= 0.8747"
    # no distill step in that --only run: the student's checks are unknown, not failed
    assert c["student FP32 top-1"]["ok"] is None and c["student INT8 rows"]["ok"] is None
    # the trained variants are the prune<T> steps only (not their _onnx / _int8 steps)
    pipeline = json.loads((DOCS / "budget-amx" / "pipeline.json").read_text())
    assert [v["step"] for v in fs.trained_variants(pipeline)] == ["prune12_5"]
    assert "| prune12_5 | 5 | 24 | 87.69 |" in out
    # the baseline row comes first, then each model on its best backend (a file and its exports are one
    # model: the pruned .pt wins at batch 64, its ONNX at batch 1); the answer's row is starred
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("| model | best @batch"))
    table = lines[start + 2:lines.index("", start)]
    assert table[0] == "| baseline | vgg16_bn_cifar10.pt, torch-fp32 | 88.35 | 427.5 | 1.00× | 5.184 |"
    assert ("| vgg16_bn_cifar10_pruned12_5 | vgg16_bn_cifar10_pruned12_5.pt, torch-bf16 | 87.67 | 8,762.5 | 20.50× | "
            "0.351 (vgg16_bn_cifar10_pruned12_5.onnx, onnxruntime-cpu) |") in table
    assert sum(x.startswith("| vgg16_bn_cifar10_pruned12_5 |") for x in table) == 1
    assert ("| **vgg16_bn_cifar10_pruned12_5_int8_ov_static** | vgg16_bn_cifar10_pruned12_5_int8_ov_static.xml, "
            "openvino-cpu | 87.58 | 32,402.4 | 75.80× | 0.214 (") in out


def test_a_slower_answer_and_a_student_are_judged(tmp_path):
    """A peer 7x faster than the answer's throughput fails the peer bar; a distill step and its INT8 row
    are found by the student's file name, and the time budget is read from pipeline.json."""
    fs = load_script("frontier_summary")
    run = tmp_path / "run"
    shutil.copytree(DOCS / "budget-amx", run)
    peer = json.loads((run / "peer_openvino.json").read_text())
    peer["rows"]["openvino_nncf_int8"]["throughput_b64"] = 32402.39 / 5.0
    (run / "peer.json").write_text(json.dumps(peer))
    pipeline = json.loads((run / "pipeline.json").read_text())
    pipeline["steps"].append({"name": "distill", "status": "ok", "seconds": 9000.0, "spent": 12000.0,
                              "outputs": ["m_student_mbv2.pt", "m_student_mbv2_pilot.pt"],
                              "metrics": {"top1": 0.8702, "allocation": {"pilot_epochs": 5, "epochs": 29, "why": "rising"}}})
    pipeline["time_budget"]["spent_seconds"] = 22000.0
    (run / "pipeline.json").write_text(json.dumps(pipeline))
    rows = json.loads((run / "results.json").read_text())
    rows.append(dict(rows[-1], model="m_student_mbv2_int8_ov_static.xml", throughput=1.0))
    (run / "results.json").write_text(json.dumps(rows))
    assert fs.main([str(run), "--peer", str(run / "peer.json"), "--json", str(tmp_path / "c.json")]) == 0
    c = _checks(json.loads((tmp_path / "c.json").read_text())["checks"])
    assert c["answer vs peer INT8 @batch"]["value"] == 5.0 and c["answer vs peer INT8 @batch"]["ok"] is False
    assert c["student FP32 top-1"]["value"] == 0.8702 and c["student FP32 top-1"]["ok"] is True
    assert c["student INT8 rows"]["value"] == 1 and c["student INT8 rows"]["ok"] is True
    assert c["full preset spent within its budget (s)"]["ok"] is False  # 22,000 s > 21,600 s
    v = [v for v in fs.trained_variants(pipeline) if v["step"] == "distill"]
    assert v == [{"step": "distill", "status": "ok", "model": "m_student_mbv2.pt", "top1": 0.8702, "pilot_epochs": 5,
                  "epochs": 29, "why": "rising", "seconds": 9000.0, "spent": 12000.0}]


def test_a_p50_whose_batch1_timing_did_not_settle_meets_no_bar(tmp_path):
    """The throughput answer may have an unsettled batch-1 timing (only batch N has to settle for it): its p50
    is then reported but fails the latency bar, whatever its value."""
    fs = load_script("frontier_summary")
    run = tmp_path / "run"
    shutil.copytree(DOCS / "budget-amx", run)
    rows = json.loads((run / "results.json").read_text())
    for r in rows:
        if (r["model"], r["backend"]) == ("vgg16_bn_cifar10_pruned12_5_int8_ov_static.xml", "openvino-cpu"):
            r.update(timing_stable_batch=True, timing_stable_b1=False, timing_stable=False)
    (run / "results.json").write_text(json.dumps(rows))
    assert fs.main([str(run), "--json", str(tmp_path / "c.json")]) == 0
    c = _checks(json.loads((tmp_path / "c.json").read_text())["checks"])
    assert "answer p50 ms @1" not in c
    assert c["answer p50 ms @1 (batch-1 timing did not settle)"] == {
        "name": "answer p50 ms @1 (batch-1 timing did not settle)", "value": 0.214, "bar": "<= 0.3", "ok": False}


def test_a_directory_without_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    fs = load_script("frontier_summary")
    assert fs.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pipeline.json" in err and err.count("\n") == 1
    assert fs.main([str(DOCS / "budget-amx"), "--peer", str(tmp_path / "none.json")]) == 2
