"""The answer (``vggc.bench.answer``): the recommended variant per deployment target, its rebuild
commands, answer.json, report.md's closing section, the screen's last lines and the plot's stars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vggc import runtime
from vggc.artifacts import write_manifest
from vggc.bench.answer import (
    NOT_RECORDED,
    TARGETS,
    answer,
    choose,
    is_gpu_row,
    manifest_commands,
    marks,
    rebuild_commands,
    screen_lines,
)
from vggc.bench.rows import BenchRows


def _art(d: Path, name: str, command: str | None = None, **inputs) -> Path:
    p = d / name
    p.write_bytes(name.encode())
    write_manifest(p, kind="x", inputs=inputs, settings={}, extra={"command": command} if command else None)
    return p


def _row(path, backend, top1, thr, p50, stable=True, **kw) -> dict:
    return {"model": Path(path).name, "path": str(path), "backend": backend, "precision": "fp32", "status": "ok",
            "top1": top1, "throughput": thr, "latency_p50_ms": p50, "delta_pt": round(100 * (top1 - 0.88), 4),
            "speedup": thr / 100, "timing_stable": stable, "batch": 64, "size_mb": 10.0, "delta_se_pt": 0.2,
            "is_baseline": False, **kw}


@pytest.fixture()
def crafted(tmp_path):
    """Baseline 88 %: the default budget is 0.88 pt, the 98 % line 1.76 pt."""
    base = _art(tmp_path, "base.pt")
    lowlat = _art(tmp_path, "lowlat.pt2", "vggc quantize base.pt --backend torchao --out lowlat.pt2", source=base)
    w_src = _art(tmp_path, "wide_src.onnx", "vggc export base.pt --out wide_src.onnx", source=base)
    wide = _art(tmp_path, "wide_int8.onnx", "vggc quantize wide_src.onnx --out wide_int8.onnx", source=w_src)
    engine = _art(tmp_path, "m.engine", onnx=w_src)  # its own command is not recorded
    rows = [_row(base, "torch-fp32", 0.88, 100.0, 10.0, is_baseline=True),
            _row(tmp_path / "far.onnx", "onnxruntime-cpu", 0.85, 900.0, 1.0),   # fastest CPU row: 3 pt drop, out
            _row(tmp_path / "unsettled.onnx", "onnxruntime-cpu", 0.88, 800.0, 1.0, stable=False),
            _row(tmp_path / "int8.onnx", "onnxruntime-cpu", 0.875, 400.0, 3.0,
                 rebuild=["vggc export base.pt --out m.onnx", "vggc quantize m.onnx --out int8.onnx"]),
            _row(lowlat, "torch-int8-compiled", 0.874, 300.0, 1.5),  # slower, but the lowest batch-1 p50
            _row(wide, "openvino-cpu", 0.866, 600.0, 2.5),  # 1.4 pt: out of the budget, within the 98 % line
            _row(engine, "tensorrt", 0.879, 5000.0, 0.5),   # the fastest row of all, on a GPU
            {"model": "base.pt", "path": str(base), "backend": "torch-cuda-fp16", "status": "CUDA not available",
             "top1": None, "throughput": None, "latency_p50_ms": None, "batch": 64}]
    return rows, tmp_path


def test_gpu_rows_are_the_cuda_and_tensorrt_backends():
    for b in runtime.backends():
        assert is_gpu_row({"backend": b.key}) is (b.device == "cuda"), b.key


def test_each_target_gets_its_own_row_within_the_budget(crafted):
    rows, d = crafted
    doc = answer(rows)
    got = {t: (s["model"], s["backend"]) if s else None for t, s in doc["targets"].items()}
    assert got == {"cpu-throughput": ("int8.onnx", "onnxruntime-cpu"),
                   "cpu-latency": ("lowlat.pt2", "torch-int8-compiled"),
                   "gpu-throughput": ("m.engine", "tensorrt"), "gpu-latency": ("m.engine", "tensorrt")}
    assert doc["max_drop_pt"] == pytest.approx(0.88) and doc["reasons"] == {} and doc["gpu_note"] is None
    wide = {t: s["model"] if s else None for t, s in doc["at_98pct"]["targets"].items()}
    assert doc["at_98pct"]["max_drop_pt"] == pytest.approx(1.76)
    assert wide == {"cpu-throughput": "wide_int8.onnx", "cpu-latency": "lowlat.pt2", "gpu-throughput": "m.engine",
                    "gpu-latency": "m.engine"}
    s = doc["targets"]["cpu-latency"]
    assert s["latency_speedup"] == pytest.approx(10.0 / 1.5, abs=1e-3) and s["speedup"] == 3.0
    # --max-drop 3: the fastest CPU row (3 pt drop) qualifies now; the unsettled one never does
    assert answer(rows, 3.0)["targets"]["cpu-throughput"]["model"] == "far.onnx"
    assert answer(rows, 3.0)["budget_rule"] == "--max-drop"


def test_each_target_needs_only_its_own_timing_settled(crafted):
    """A noisy batch-1 timing does not veto a throughput pick, nor a noisy batch-N one a latency pick;
    a row without the two flags (written before they were split) needs ``timing_stable`` for both."""
    from vggc.bench.report import ordered, screen_table

    rows, _ = crafted
    cpu = [r for r in rows if not is_gpu_row(r)]
    by = {r["model"]: r for r in cpu}
    # the unsettled row (fastest within the budget, 1.0 ms) with only its batch-1 timing unsettled
    by["unsettled.onnx"].update(timing_stable_batch=True, timing_stable_b1=False)
    doc = answer(cpu)
    assert doc["targets"]["cpu-throughput"]["model"] == "unsettled.onnx"
    assert doc["targets"]["cpu-latency"]["model"] == "lowlat.pt2"
    # the reverse: settled at batch 1 only
    by["unsettled.onnx"].update(timing_stable_batch=False, timing_stable_b1=True)
    doc = answer(cpu)
    assert doc["targets"]["cpu-throughput"]["model"] == "int8.onnx"
    assert doc["targets"]["cpu-latency"]["model"] == "unsettled.onnx"
    # the screen marks only the column whose timing did not settle
    line = next(ln for ln in screen_table([ordered(r) for r in cpu], {"batch": 64}).splitlines() if ln.startswith("unsettled.onnx"))
    assert "~800.0" in line and "~1.00" not in line
    # both null (an old row): timing_stable decides both, as before
    by["unsettled.onnx"].update(timing_stable_batch=None, timing_stable_b1=None)
    doc = answer(cpu)
    assert (doc["targets"]["cpu-throughput"]["model"], doc["targets"]["cpu-latency"]["model"]) == (
        "int8.onnx", "lowlat.pt2")


def test_no_qualifying_row_says_why(crafted):
    rows, _ = crafted
    base = rows[0]
    cpu = [r for r in rows if not is_gpu_row(r)]
    assert choose(cpu, "cpu-throughput", base, 0.88)[0]["model"] == "int8.onnx"
    only_bad = [dict(base, timing_stable=False), rows[1], rows[2]]
    row, why = choose(only_bad, "cpu-throughput", only_bad[0], 0.88)
    assert row is None
    assert why == "none of the 3 CPU rows that ran qualifies: 1 lose more than 0.88 pt of top-1; 2 within it have " \
                  "an unsettled timing"
    assert choose(cpu, "gpu-latency", base, 0.88) == (None, "no GPU row ran")
    assert choose(cpu, "cpu-latency", None, None) == (None, "no baseline row ran, so there is no top-1 budget")
    # no GPU row ran: no GPU targets, and a visible note naming the GPU rows that did not run
    doc = answer(cpu + [rows[-1]])
    assert list(doc["targets"]) == ["cpu-throughput", "cpu-latency"]
    assert doc["gpu_note"] == "no GPU row ran: torch-cuda-fp16 (CUDA not available)"
    assert "  gpu: no GPU row ran: torch-cuda-fp16 (CUDA not available)" in screen_lines(doc)
    assert answer([rows[1]])["baseline"] is None
    assert screen_lines(answer([rows[1]])) == ["the answer: none (no baseline row ran, so there is no top-1 budget)"]


def test_rebuild_commands_from_the_row_then_the_manifests_then_not_recorded(crafted):
    rows, d = crafted
    base = rows[0]
    by = {r["model"]: r for r in rows if r["status"] == "ok"}
    assert rebuild_commands(by["int8.onnx"], base) == (by["int8.onnx"]["rebuild"], "row", None)
    # two links up the manifest chain, source first
    assert rebuild_commands(by["wide_int8.onnx"], base) == (
        ["vggc export base.pt --out wide_src.onnx", "vggc quantize wide_src.onnx --out wide_int8.onnx"],
        "manifests", None)
    # the engine's own step is not recorded: what is recorded, and the gap named
    assert rebuild_commands(by["m.engine"], base) == (["vggc export base.pt --out wide_src.onnx"], "manifests",
                                                      "incomplete: no command recorded for m.engine")
    assert rebuild_commands(by["far.onnx"], base) == ([], None, NOT_RECORDED)  # no manifest at all
    assert rebuild_commands(base, base) == ([], None, "the baseline file itself: nothing to rebuild")
    # a baseline that is itself made from the trained file: its recorded commands
    assert rebuild_commands(by["wide_int8.onnx"], by["wide_int8.onnx"])[0][-1].startswith("vggc quantize wide_src")
    bare = _art(d, "bare.onnx", source=d / "base.pt")
    assert manifest_commands(bare) == ([], NOT_RECORDED)
    gone = _art(d, "orphan.onnx", "vggc quantize gone.onnx --out orphan.onnx",
                source=_art(d, "gone.onnx", "vggc export base.pt --out gone.onnx", source=d / "base.pt"))
    (d / "gone.onnx").unlink()  # its source was deleted since
    cmds, note = manifest_commands(gone)
    assert cmds == ["vggc quantize gone.onnx --out orphan.onnx"]
    assert note == f"the chain stops at orphan.onnx: its input {d / 'gone.onnx'} could not be followed"
    bad = dict(by["int8.onnx"], rebuild="vggc quantize")
    assert rebuild_commands(bad, base)[2] == f"{NOT_RECORDED} (the row's rebuild is not a list of command strings)"


def test_answer_json_report_section_and_plot_marks(crafted):
    from vggc.bench.report import write_outputs

    rows, d = crafted
    out = d / "out"
    bench = BenchRows(rows)
    bench.context = {"batch": 64, "max_drop_pt": 0.88, "max_drop_default": True, "plot": True}
    paths = write_outputs(bench, out, plot=True)
    assert paths["answer"] == out / "answer.json" and (out / "pareto.png").is_file()
    assert isinstance(json.loads((out / "results.json").read_text()), list)  # the contract stays a list
    doc = json.loads((out / "answer.json").read_text())
    assert set(doc["targets"]) == set(TARGETS)
    s = doc["targets"]["cpu-throughput"]
    assert {k: s[k] for k in ("model", "path", "backend", "precision", "top1", "delta_pt", "speedup", "throughput",
                              "latency_p50_ms", "size_mb", "rebuild")} == {
        "model": "int8.onnx", "path": str(d / "int8.onnx"), "backend": "onnxruntime-cpu", "precision": "fp32",
        "top1": 0.875, "delta_pt": -0.5, "speedup": 4.0, "throughput": 400.0, "latency_p50_ms": 3.0, "size_mb": 10.0,
        "rebuild": ["vggc export base.pt --out m.onnx", "vggc quantize m.onnx --out int8.onnx"]}
    assert doc["at_98pct"]["targets"]["cpu-throughput"]["model"] == "wide_int8.onnx"

    report = (out / "report.md").read_text()
    head, section = report.split("\n## The answer\n", 1)
    assert "\n## " not in section  # the last section
    cpu = section.split("### cpu-throughput", 1)[1].split("### ", 1)[0]
    assert f"- File: `{d / 'int8.onnx'}`, backend `onnxruntime-cpu`" in cpu
    assert "Top-1 87.50% (Δ -0.50 ± 0.20 pt), 400.0 img/s = 4.00x the baseline's, 10.00 MB" in cpu
    assert "```sh\nvggc export base.pt --out m.onnx\nvggc quantize m.onnx --out int8.onnx\n```" in cpu
    assert "At ≥ 98 % (top-1 drop ≤ 1.76 pt): " in cpu and "wide_int8.onnx on openvino-cpu" in cpu
    assert "```sh\nvggc export base.pt --out wide_src.onnx\nvggc quantize wide_src.onnx --out wide_int8.onnx\n```" in cpu
    lat = section.split("### cpu-latency", 1)[1].split("### ", 1)[0]
    assert "lowlat.pt2" in lat and "the same variant" in lat and "6.67x faster than the baseline's 10.00 ms" in lat
    gpu = section.split("### gpu-throughput", 1)[1].split("### ", 1)[0]
    assert "Recorded commands (incomplete: no command recorded for m.engine)" in gpu
    assert "## Recommendation" in head  # the existing section stays

    assert marks(doc) == [((str(d / "int8.onnx"), "int8.onnx", "onnxruntime-cpu"), "recommended (cpu-throughput)", True),
                          ((str(d / "lowlat.pt2"), "lowlat.pt2", "torch-int8-compiled"), "recommended (cpu-latency)",
                           True),
                          ((str(d / "m.engine"), "m.engine", "tensorrt"), "recommended (gpu-throughput, gpu-latency)",
                           True),
                          ((str(d / "wide_int8.onnx"), "wide_int8.onnx", "openvino-cpu"), "at ≥ 98 % (cpu-throughput)",
                           False)]


def test_plot_stars_the_recommended_rows(crafted):
    import matplotlib.pyplot as plt

    from vggc.bench.plot import draw_pareto

    rows, _ = crafted
    doc = answer(rows)
    fig = draw_pareto(rows, "t", marks(doc))
    try:
        ax = fig.axes[0]
        handles, labels = ax.get_legend_handles_labels()
        stars = dict(zip(labels, handles, strict=True))
        assert set(labels) >= {"recommended (cpu-throughput)", "recommended (cpu-latency)",
                               "recommended (gpu-throughput, gpu-latency)", "at ≥ 98 % (cpu-throughput)"}
        assert [tuple(p) for p in stars["recommended (cpu-throughput)"].get_offsets()] == [(400.0, 87.5)]
        assert [tuple(p) for p in stars["at ≥ 98 % (cpu-throughput)"].get_offsets()] == [(600.0, 86.6)]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    finally:
        plt.close(fig)
    from vggc.bench.plot import budget_lines

    lines = budget_lines(doc)  # the budget and the 98 % line, from the answer's baseline and budgets
    base = 100 * doc["baseline"]["top1"]
    assert [round(y, 6) for y, _ in lines] == [round(base - doc["max_drop_pt"], 6),
                                               round(base - doc["at_98pct"]["max_drop_pt"], 6)]
    fig = draw_pareto(rows, "t", marks(doc), lines)
    try:
        drawn = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith(("budget", "98 % line"))]
        assert [round(ln.get_ydata()[0], 6) for ln in drawn] == [round(y, 6) for y, _ in lines]
    finally:
        plt.close(fig)
    fig = draw_pareto(rows, "t")  # no marks: no stars
    try:
        assert not any(lb.startswith("recommended") for lb in fig.axes[0].get_legend_handles_labels()[1])
    finally:
        plt.close(fig)


def test_bench_cli_ends_with_the_answer(tmp_path):
    import torch
    from conftest import make_imagefolder, make_tiny_vgg, run_cli

    from vggc.artifacts import save_state_dict

    data = make_imagefolder(tmp_path / "data", per_class=2)
    a = save_state_dict(make_tiny_vgg(seed=0).state_dict(), tmp_path / "a.pt")
    threads = torch.get_num_threads()
    try:
        res = run_cli("bench", a, "--data", data, "--backends", "torch-fp32", "--limit", "20", "--batch", "8",
                      "--threads", "1", "--out", tmp_path / "out", "--no-plot", "--rounds", "1")
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    tail = res.output.split("\nwrote ", 1)[1].split("\n", 1)[1].strip().splitlines()
    doc = json.loads((tmp_path / "out" / "answer.json").read_text())
    assert tail == screen_lines(doc)
    assert tail[0].startswith("the answer (top-1 drop ≤ ") and tail[1].startswith("  cpu-throughput: ")
    assert "wrote" in res.output and str(tmp_path / "out" / "answer.json") in res.output
    if doc["targets"]["cpu-throughput"] is not None:  # the only row: the baseline itself, when its timing settled
        assert tail[2] == "      (the baseline file itself: nothing to rebuild)"


def test_pipeline_cli_ends_with_the_answer(tmp_path, monkeypatch):
    from test_pipeline import run_tiny_onnx_pipeline

    res, out = run_tiny_onnx_pipeline(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "bench" / "results.json").read_text())
    tail = res.output.split("\nreport: ", 1)[1].split("\n", 1)[1].strip().splitlines()
    assert tail == screen_lines(answer(rows, 100.0, str(out)))  # OUT: the pipeline's --out
    assert tail[0].startswith("the answer (top-1 drop ≤ 100.00 pt (--max-drop)")
    # OUT=, when a chosen row has rebuild commands, is said once, before the targets
    assert [i for i, x in enumerate(tail) if x.startswith("  $ OUT=")] in ([], [1])
    body = [x for x in tail[1:] if not x.startswith("  $ OUT=")]
    assert body[0].startswith("  cpu-throughput: ") and any(x.startswith("  cpu-latency: ") for x in tail)
