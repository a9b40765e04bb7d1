"""scripts/gpu_check.sh: its CPU smoke mode runs end to end here so the GPU check cannot rot.

The smoke run trains the VGG16-BN teacher, distils the MobileNetV2 student and prunes the teacher
with `vggc train` / `vggc distill` / `vggc prune` on a tiny ImageFolder, benches them on the torch
eager CPU backend in place of the CUDA rows, and writes one folder with every result and a summary
that says SMOKE RUN. Without CUDA the real (GPU) mode refuses with one line and exit code 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_imagefolder

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(*args, env=None, timeout=900):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the GPU mode runs instead of refusing")
def test_gpu_mode_without_cuda_refuses_with_one_line(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=1)
    res = _run(data, tmp_path / "out", timeout=120)
    assert res.returncode == 3
    assert res.stderr.strip().splitlines() == ["gpu_check: no CUDA device (torch.cuda.is_available() is False); run "
                                              "with --smoke for the CPU smoke test"]


@pytest.mark.slow
def test_gpu_check_smoke_run_writes_every_result_and_a_summary(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=4)
    out = tmp_path / "gpu-check"
    res = _run("--smoke", data, out, env={"SMOKE_LIMIT": "20", "SMOKE_EVAL": "10", "BATCH": "10"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "SMOKE").read_text().startswith("SMOKE RUN (CPU")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and summary["mode"].startswith("SMOKE RUN")
    assert [(s["step"], s["exit"]) for s in summary["steps"]] == [("train", "0"), ("distill", "0"), ("prune", "0"),
                                                                  ("bench", "0")]
    assert set(summary["models"]) == {"teacher", "student", "pruned"}
    assert summary["models"]["student"]["arch"].startswith("mobilenet_v2")
    assert all(m["eval_n"] == 10 and 0 <= m["top1"] <= 1 for m in summary["models"].values())
    assert {k: (m["train_device"], m["train_precision"]) for k, m in summary["models"].items()} == {
        k: ("cpu", summary["models"]["teacher"]["train_precision"]) for k in ("teacher", "student", "pruned")}
    assert summary["models"]["teacher"]["train_precision"] in ("fp32", "bf16")
    assert "vggc source sha256 " in (out / "environment.txt").read_text()
    rows = summary["bench_rows"]
    assert [(r["model"], r["backend"], r["status"]) for r in rows] == [
        ("teacher.pt", "torch-fp32", "ok"), ("student.pt", "torch-fp32", "ok"), ("pruned.pt", "torch-fp32", "ok")]
    md = (out / "summary.md").read_text()
    assert "SMOKE RUN on the CPU with tiny budgets: these numbers are not GPU results." in md
    for f in ("environment.txt", "teacher.pt", "teacher.pt.json", "student.pt", "pruned.pt", "bench/results.json",
              "bench/results.csv", "bench/report.md", "logs/train.log", "logs/bench.log"):
        assert (out / f).is_file(), f
    # a second run refuses to mix results into the same folder
    again = _run("--smoke", data, out, timeout=60)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
