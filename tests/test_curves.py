"""Learning curves in the bench outputs (``vggc.bench.curves``): one curve per trained variant read
from its manifest (files made from it share it), learning_curves.png, results.json's manifest and
report.md's section; manifests without a per-epoch top-1 give a note, not a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vggc.artifacts import write_manifest
from vggc.bench.curves import (
    CURVES_PNG,
    NO_TOP1,
    learning_curves,
    markdown_section,
    stop_text,
    trained_file,
)
from vggc.bench.rows import BenchRows

RULE = {"after_epochs": 1, "max_drop_pt": 2.7, "below_top1": 0.873}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STOP = "stopped after 1/3 epochs: top-1 40.00% is more than 2.70 pt below the source (87.30%)"


def _art(d: Path, name: str, *, inputs=None, settings=None, metrics=None) -> Path:
    p = d / name
    p.write_bytes(name.encode())
    write_manifest(p, kind="state_dict", inputs=inputs or {}, settings=settings or {}, metrics=metrics)
    return p


def _epoch(k: int, top1: float | None = None, **kw) -> dict:
    """An epoch record as vggc.train._run_epoch writes it (plus ``top1``/``n_eval`` when evaluated)."""
    rec = {"epoch": k, "lr": 0.01, "seconds": 10.0 + k, "cpu_seconds": 20.0, "images_per_s": 100.0 + k,
           "loss": round(1.0 / k, 5), "ce": round(1.0 / k, 5), **kw}
    if top1 is not None:
        rec.update(top1=top1, n_eval=200)
    return rec


def _pruned(d: Path, name: str, source: Path, histories: list[list[dict]], **metrics) -> Path:
    steps = [{"step": k, "epochs": len(h), "history": h} for k, h in enumerate(histories, 1)]
    epochs = metrics.pop("finetune_epochs", sum(len(h) for h in histories))
    return _art(d, name, inputs={"source": source},
                settings={"prune": {"target_macs": 0.5, "steps": len(steps)}, "finetune_epochs": epochs,
                          "distill_from_source": None},
                metrics={"top1_source": 0.9, "train_images": 5000, "steps": steps,
                         "stopped_early": None, **metrics})


@pytest.fixture()
def run_dir(tmp_path):
    """:func:`make_run` under the test's temporary directory."""
    return make_run(tmp_path)


def make_run(tmp_path: Path) -> dict:
    """Return the files of a run directory: the baseline (its own training history, not a variant), a two-step pruned
    model (per-epoch top-1, an allocation) with its ONNX and INT8 files, one stopped early, a
    student with top-1 after some epochs only, and a pruned model from before per-epoch evaluation."""
    d = tmp_path / "run"
    d.mkdir()
    base = _art(d, "vgg_base.pt", settings={"train": {"epochs": 3}, "arch": "vgg16_bn"},
                metrics={"train": {"history": [_epoch(1), _epoch(2), _epoch(3)]}, "top1": 0.9, "n": 200})
    p50 = _pruned(d, "vgg_pruned50.pt", base, [[_epoch(1, 0.80), _epoch(2, 0.85)], [_epoch(1, 0.86), _epoch(2, 0.88)]],
                  top1=0.88, n=200, epochs_allocated=4, allocation={"epochs": 4, "why": "a 50 % target gets 4 epochs"})
    onnx = _art(d, "vgg_pruned50.onnx", inputs={"source": p50})
    int8 = _art(d, "vgg_pruned50_int8.onnx", inputs={"source": onnx})
    p12 = _pruned(d, "vgg_pruned12_5.pt", base, [[_epoch(1, 0.40, stopped_early=STOP)]], finetune_epochs=3,
                  top1=0.40, n=200, stopped_early=STOP, stop_rule=RULE)
    student = _art(d, "vgg_student.pt", inputs={"teacher": base},
                   settings={"distill": {"alpha": 0.9}, "train": {"epochs": 2}},
                   metrics={"train": {"history": [_epoch(1), _epoch(2, 0.70)], "stopped_early": None},
                            "top1": 0.70, "n": 200, "teacher_top1": 0.9})
    old = _pruned(d, "vgg_pruned25.pt", base, [[_epoch(1), _epoch(2)]], top1=0.83, n=200)
    return {"base": base, "p50": p50, "onnx": onnx, "int8": int8, "p12": p12, "student": student, "old": old}


def _row(path: Path, top1: float, thr: float, **kw) -> dict:
    return {"model": path.name, "path": str(path), "backend": "torch-fp32", "precision": "fp32", "status": "ok",
            "top1": top1, "throughput": thr, "latency_p50_ms": 1000.0 / thr, "latency_p90_ms": 1100.0 / thr,
            "delta_pt": round(100 * (top1 - 0.9), 4), "speedup": thr / 100, "timing_stable": True, "batch": 64,
            "size_mb": 10.0, "is_baseline": False, **kw}


def _bench(files: dict, names: list[str]) -> BenchRows:
    top1 = {"base": 0.9, "p50": 0.88, "onnx": 0.88, "int8": 0.875, "p12": 0.4, "student": 0.7, "old": 0.83}
    rows = BenchRows([_row(files[n], top1[n], 100.0 * (k + 1), is_baseline=n == "base") for k, n in enumerate(names)])
    rows.context = {"batch": 64, "max_drop_pt": 0.9, "max_drop_default": True, "plot": True,
                    "baseline": {"model": "vgg_base.pt", "backend": "torch-fp32", "top1": 0.9, "throughput": 100.0}}
    return rows


def test_one_curve_per_trained_variant(run_dir):
    f = run_dir
    curves = learning_curves([f["base"], f["p50"], f["onnx"], f["int8"], f["p12"], f["student"], f["base"]])
    assert [c["model"] for c in curves] == ["vgg_pruned50.pt", "vgg_pruned12_5.pt", "vgg_student.pt"]
    p50, p12, student = curves
    assert p50["models"] == ["vgg_pruned50.pt", "vgg_pruned50.onnx", "vgg_pruned50_int8.onnx"]
    assert p50["kind"] == "prune" and p50["epochs_run"] == 4 and p50["epochs_planned"] == 4
    assert [(p["epoch"], p["step"], p["step_epoch"], p["top1"]) for p in p50["epochs"]] == [
        (1, 1, 1, 0.80), (2, 1, 2, 0.85), (3, 2, 1, 0.86), (4, 2, 2, 0.88)]
    assert p50["epochs"][0] == {"epoch": 1, "step": 1, "step_epoch": 1, "top1": 0.8, "n_eval": 200, "loss": 1.0,
                                "images_per_s": 101.0, "seconds": 11.0}
    assert p50["allocation_why"] == "a 50 % target gets 4 epochs" and p50["stopped_early"] is None
    assert p50["final_top1"] == 0.88 and p50["source_top1"] == 0.9 and p50["has_top1"] and p50["note"] is None
    assert stop_text(p50) == "finished its 4 epoch(s); allocation: a 50 % target gets 4 epochs"
    assert (p12["epochs_run"], p12["epochs_planned"], p12["stopped_early"]) == (1, 3, STOP)
    assert stop_text(p12) == f"stopped early: {STOP}" and p12["stop_rule"] == RULE and p50["stop_rule"] is None
    assert student["kind"] == "distill" and student["models"] == ["vgg_student.pt"]
    assert [(p["step"], p["top1"]) for p in student["epochs"]] == [(None, None), (None, 0.70)]
    assert student["note"] == "top-1 evaluated after 1 of 2 epochs" and student["source_top1"] == 0.9
    assert learning_curves([f["base"], f["base"].with_name("missing.pt"), ""]) == []  # no variant: no curve


def test_chain_is_followed_when_the_run_directory_moved(run_dir, tmp_path):
    """Manifests record absolute paths; a moved run directory still finds the source beside the
    file, and only when its SHA-256 is the recorded one."""
    moved = tmp_path / "moved"
    shutil.move(str(run_dir["p50"].parent), moved)
    int8 = moved / "vgg_pruned50_int8.onnx"
    assert trained_file(int8)[0] == moved / "vgg_pruned50.pt"
    (moved / "vgg_pruned50.pt").write_bytes(b"another file")
    assert trained_file(int8) is None


def test_outputs_carry_the_curves(run_dir):
    f = run_dir
    out = f["base"].parent / "bench"
    paths = write_outputs_of(f, out, ["base", "p50", "onnx", "int8", "p12", "student"], plot=True)
    png = out / CURVES_PNG
    assert paths["curves"] == png and png.read_bytes()[:8] == PNG_MAGIC and (out / "pareto.png").is_file()
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100  # a readable image, not just a header
    rows = json.loads((out / "results.json").read_text())
    assert isinstance(rows, list) and rows[0]["model"] == "vgg_base.pt"  # results.json unchanged: a list of rows
    man = json.loads((out / "results.json.json").read_text())
    assert [c["model"] for c in man["learning_curves"]] == ["vgg_pruned50.pt", "vgg_pruned12_5.pt", "vgg_student.pt"]
    assert man["learning_curves"][0]["epochs"][3]["top1"] == 0.88 and "machine" in man
    report = (out / "report.md").read_text()
    head, answer = report.split("\n## The answer\n", 1)
    assert "## Learning curves" in head and "\n## " not in answer  # before the answer, the last section
    section = head.split("## Learning curves", 1)[1]
    assert ("| vgg_pruned50.pt | prune | 4 / 4 | 88.00 (n=200) | finished its 4 epoch(s); allocation: a 50 % "
            "target gets 4 epochs | vgg_pruned50.pt, vgg_pruned50.onnx, vgg_pruned50_int8.onnx |") in section
    assert f"| vgg_pruned12_5.pt | prune | 1 / 3 | 40.00 (n=200) | stopped early: {STOP} |" in section
    assert "- vgg_student.pt: top-1 evaluated after 1 of 2 epochs." in section
    assert f"![top-1 per epoch of training]({CURVES_PNG})" in section

    write_outputs_of(f, out, ["base", "p50"], plot=False)  # plots off: the earlier PNG goes, the report says so
    assert not png.exists()
    assert f"{CURVES_PNG} not drawn: plots are off (--no-plot)." in (out / "report.md").read_text()


def write_outputs_of(files: dict, out: Path, names: list[str], plot: bool) -> dict:
    from vggc.bench.report import write_outputs

    return write_outputs(_bench(files, names), out, plot=plot)


def test_manifests_without_top1_give_a_note(run_dir):
    f = run_dir
    (old,) = learning_curves([f["old"]])
    assert not old["has_top1"] and old["note"] == NO_TOP1 and old["epochs_run"] == 2
    assert [p["top1"] for p in old["epochs"]] == [None, None] and old["epochs"][1]["loss"] == 0.5
    out = f["base"].parent / "bench_old"
    paths = write_outputs_of(f, out, ["base", "old"], plot=True)
    assert "curves" not in paths and not (out / CURVES_PNG).exists() and (out / "pareto.png").is_file()
    report = (out / "report.md").read_text()
    assert f"- vgg_pruned25.pt: {NO_TOP1}." in report
    assert f"{CURVES_PNG} not drawn: no trained variant's manifest records a per-epoch top-1." in report
    assert "| vgg_pruned25.pt | prune | 2 / 2 | 83.00 (n=200) | finished its 2 epoch(s) |" in report
    # no trained variant at all: no section
    out = f["base"].parent / "bench_base"
    write_outputs_of(f, out, ["base"], plot=False)
    assert "## Learning curves" not in (out / "report.md").read_text()
    assert json.loads((out / "results.json.json").read_text())["learning_curves"] == []
    assert markdown_section([], None) == []


def test_plot_legend_names_variants_floor_and_early_stop(run_dir):
    from matplotlib import pyplot as plt

    from vggc.bench.curves_plot import curve_labels, draw_curves

    f = run_dir
    curves = learning_curves([f["p50"], f["p12"], f["student"], f["old"]])
    fig = draw_curves(curves, [(89.1, "budget: top-1 ≥ 89.10 %")])
    try:
        ax = fig.axes[0]
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts == ["pruned50: 4/4 epochs", "pruned12_5: 1/3 epochs (stopped early)", "student: 2/2 epochs",
                         "accuracy floor (budget: top-1 ≥ 89.10 %)", "X = training stopped early"]
        assert ax.get_xlabel().startswith("epoch of training") and "top-1" in ax.get_ylabel()
    finally:
        plt.close(fig)
    assert curve_labels(["a.pt"]) == ["a"] and curve_labels(["m_x.pt", "m_y.pt"]) == ["x", "y"]
    assert curve_labels(["ab.pt", "ac.pt"]) == ["ab", "ac"]  # no shared prefix up to a "_": the stems
