"""``vggc bench``: outputs and their contract, unavailable rows, baseline, cache, timing rule."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import make_imagefolder, make_tiny_vgg

from vggc import runtime
from vggc.artifacts import save_state_dict
from vggc.bench import CONTRACT, RoundsPolicy, TimingPolicy, measure, measure_rounds, percentile, run_bench
from vggc.bench.plot import label_groups, pareto_front, short_names
from vggc.bench.report import screen_table
from vggc.bench.timing import Task
from vggc.errors import InputError

FAST = TimingPolicy(warmup=1, min_reps=3, min_time=0.02, max_time=0.3)
NUM = (int, float)
TYPES = {"model": str, "backend": str, "precision": str, "status": str, "top1": NUM, "delta_pt": NUM,
         "latency_p50_ms": NUM, "latency_p90_ms": NUM, "throughput": NUM, "batch": int, "size_mb": NUM,
         "params": int, "macs": int}
OUTPUTS = ("results.json", "results.csv", "report.md", "pareto.png", "accuracy-cache.json")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = make_imagefolder(root / "data", per_class=5)
    a = save_state_dict(make_tiny_vgg(seed=0).state_dict(), root / "a.pt")
    b = save_state_dict(make_tiny_vgg(seed=1).state_dict(), root / "b.pt")
    return root, data, a, b


@pytest.fixture(scope="module")
def first_run(tiny_files):
    root, data, a, b = tiny_files
    out = root / "out"
    rows = run_bench([a, b], data, batch=16, backends="torch-fp32,torch-cuda-fp16", quick=True, out=out,
                     timing=FAST)
    return rows, out


def test_writes_all_outputs_with_contract(first_run):
    rows, out = first_run
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert (out / "results.json.json").is_file()  # manifest
    doc = json.loads((out / "results.json").read_text())
    assert isinstance(doc, list) and len(doc) == 4  # 2 models x 2 backends
    assert [(r["model"], r["backend"]) for r in doc] == [("a.pt", "torch-fp32"), ("a.pt", "torch-cuda-fp16"),
                                                        ("b.pt", "torch-fp32"), ("b.pt", "torch-cuda-fp16")]
    for r in doc:
        for key in CONTRACT + ("n_images", "quick", "threads", "compile_s", "speedup", "format"):
            assert key in r, key
        assert r["n_images"] == 50 and r["quick"] is True and r["batch"] == 16
        assert r["format"] == "state_dict" and r["params"] > 0 and r["macs"] > 0 and r["size_mb"] > 0
        if r["status"] == "ok":
            for key, typ in TYPES.items():
                assert isinstance(r[key], typ), (key, r[key])
            assert 0.0 <= r["top1"] <= 1.0
            assert 0 < r["latency_p50_ms"] <= r["latency_p90_ms"]
            assert r["throughput"] > 0 and r["compile_s"] >= 0
            assert r["top1"] * 50 == pytest.approx(round(r["top1"] * 50))  # a whole number of images


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_rows_carry_reason_and_null_metrics(first_run):
    rows, _ = first_run
    cuda = [r for r in rows if r["backend"] == "torch-cuda-fp16"]
    assert len(cuda) == 2
    for r in cuda:
        assert r["status"] == "no CUDA device"
        for key in ("top1", "delta_pt", "latency_p50_ms", "latency_p90_ms", "throughput", "speedup", "compile_s"):
            assert r[key] is None
    table = screen_table(rows, rows.context)
    assert "unavailable: no CUDA device" in table


def test_baseline_delta_and_speedup(first_run):
    rows, _ = first_run
    base = rows[0]
    assert base["is_baseline"] and base["delta_pt"] == 0.0 and base["speedup"] == 1.0
    other = rows[2]
    assert other["delta_pt"] == pytest.approx(100 * (other["top1"] - base["top1"]), abs=1e-3)
    assert other["speedup"] == pytest.approx(other["throughput"] / base["throughput"], rel=1e-2)
    assert rows.context["baseline"]["model"] == "a.pt"


def test_csv_png_and_report(first_run):
    rows, out = first_run
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert set(CONTRACT) <= set(csv_rows[0])
    assert float(csv_rows[0]["top1"]) == pytest.approx(rows[0]["top1"])
    assert csv_rows[1]["top1"] == ""  # null metric of an unavailable row
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "QUICK run" in report and "| a.pt | torch-fp32 |" in report
    assert "CPU:" in report and "torch 2." in report and "Threads used" in report


def test_rerun_is_identical_from_cache_and_without(first_run, tiny_files):
    rows, out = first_run
    root, data, a, b = tiny_files
    again = run_bench([a, b], data, batch=16, backends="torch-fp32,torch-cuda-fp16", quick=True, out=out,
                      timing=FAST)
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
    assert [again[i]["top1"] for i in ok] == [rows[i]["top1"] for i in ok]
    assert all(again[i]["accuracy_cached"] is True for i in ok)
    fresh = run_bench([b], data, batch=16, backends="torch-fp32", quick=True, out=None, timing=FAST)
    assert fresh[0]["accuracy_cached"] is False and fresh[0]["top1"] == rows[2]["top1"]
    assert fresh[0]["is_baseline"]  # alone in its run


def test_explicit_baseline_and_failing_backend(tiny_files, tmp_path, monkeypatch):
    root, data, a, b = tiny_files

    def boom(model, options):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setitem(runtime._BACKENDS, "boom-fp32",
                        runtime.Backend("boom", "fp32", ("state_dict",), "cpu", boom))
    rows = run_bench([a], data, batch=16, backends=["boom-fp32", "torch-fp32"], baseline=f"{b}:torch-fp32",
                     out=tmp_path / "o", use_cache=False, plot=False, timing=FAST)
    # baseline file first, then MODELS; backends in registry order
    assert [(r["model"], r["backend"]) for r in rows] == [("b.pt", "torch-fp32"), ("b.pt", "boom-fp32"),
                                                        ("a.pt", "torch-fp32"), ("a.pt", "boom-fp32")]
    assert rows[1]["status"] == "RuntimeError: kaput" and rows[1]["top1"] is None
    assert rows[3]["status"] == "RuntimeError: kaput"
    assert rows[0]["is_baseline"] and rows[0]["delta_pt"] == 0.0
    assert rows[2]["status"] == "ok" and not rows[2]["is_baseline"]
    assert rows[2]["delta_pt"] == pytest.approx(100 * (rows[2]["top1"] - rows[0]["top1"]), abs=1e-3)
    assert not (tmp_path / "o" / "pareto.png").exists() and not (tmp_path / "o" / "accuracy-cache.json").exists()
    assert rows[0]["n_images"] == 50 and rows[0]["quick"] is False


def test_bad_inputs_are_one_line_errors(tiny_files, tmp_path):
    root, data, a, b = tiny_files
    with pytest.raises(InputError, match="unknown backend 'nope'"):
        run_bench([a], data, backends="nope", out=None)
    with pytest.raises(InputError, match="no such file"):
        run_bench([tmp_path / "missing.pt"], data, out=None)
    with pytest.raises(InputError, match="--baseline"):
        run_bench([a], data, baseline=tmp_path / "missing.pt", out=None)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    rows = run_bench([junk, a], data, batch=16, backends="torch-fp32", out=None, timing=FAST, limit=10)
    assert rows[0]["status"].startswith(str(junk)) and rows[0]["backend"] == "-"
    assert rows[1]["status"] == "ok" and rows[1]["is_baseline"] and rows[1]["n_images"] == 10


def test_cli_json_and_help(tiny_files, tmp_path):
    from vggc.cli import main

    root, data, a, b = tiny_files
    threads = torch.get_num_threads()
    try:
        _cli_checks(main, a, data, tmp_path)
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for the process


def _cli_checks(main, a, data, tmp_path):
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert res.exit_code == 0
    for key in ("torch-fp32", "torch-bf16", "torch-cuda-fp16", "--backends", "--quick", "--baseline"):
        assert key in res.output
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["bench", str(a), "--data", str(data), "--backends", "torch-fp32",
                                    "--limit", "20", "--batch", "8", "--threads", "1", "--out", str(out),
                                    "--no-plot", "--json", "--rounds", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc[0]["status"] == "ok" and doc[0]["threads"] == 1 and doc[0]["n_images"] == 20
    assert doc[0]["timing_reps_batch"] >= 4  # 2 rounds x at least 2 calls
    assert (out / "results.json").is_file() and not (out / "pareto.png").exists()
    assert "2 interleaved rounds" in (out / "report.md").read_text()
    res = CliRunner().invoke(main, ["bench", str(a), "--data", str(data), "--timing", "sequential", "--rounds", "3",
                                    "--out", str(tmp_path / "cli3")])
    assert res.exit_code != 0 and "--rounds applies to --timing interleaved only" in res.output
    assert not (tmp_path / "cli3").exists()
    res = CliRunner().invoke(main, ["bench", str(a), "--data", str(data), "--backends", "torch-cuda-fp16",
                                    "--limit", "10", "--out", str(tmp_path / "cli2")])
    if not torch.cuda.is_available():
        assert res.exit_code == 1 and "no (model, backend) row could run" in res.output
        assert "unavailable: no CUDA device" in res.output


# ----------------------------------------------------------------------------- timing rule

class FakeClock:
    def __init__(self, durations):
        self.t = 0.0
        self.durations = iter(durations)
        self.calls = 0

    def __call__(self):
        return self.t

    def work(self):
        self.calls += 1
        self.t += next(self.durations)


def test_percentiles():
    xs = [float(v) for v in range(1, 11)]
    assert percentile(xs, 50) == 5.5
    assert percentile(xs, 90) == pytest.approx(9.1)
    assert percentile([3.0], 90) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0 and percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_stop_rule_stable_constant_calls():
    clock = FakeClock([0.25] * 1000)
    t = measure(clock.work, TimingPolicy(warmup=2, min_reps=5, min_time=2.0, max_time=50.0), clock=clock)
    assert t.stable and t.reps == 8  # needs 2 s of samples, then the median is already settled
    assert clock.calls == 10  # + 2 warm-up calls
    assert t.p50 == pytest.approx(0.25) and t.p90 == pytest.approx(0.25)


def test_stop_rule_min_reps_dominates():
    clock = FakeClock([1.0] * 100)
    t = measure(clock.work, TimingPolicy(warmup=0, min_reps=5, min_time=0.1, max_time=50.0), clock=clock)
    assert t.stable and t.reps == 5


def test_stop_rule_caps_a_drifting_median():
    clock = FakeClock([0.01 * 1.1 ** i for i in range(1000)])  # every call 10% slower: never stable
    t = measure(clock.work, TimingPolicy(warmup=0, min_reps=5, min_time=0.1, max_time=2.0), clock=clock)
    assert not t.stable
    assert 2.0 <= t.total_s < 2.0 + t.samples[-1] + 1e-9
    assert t.p90 >= t.p50


def test_stop_rule_waits_for_a_settling_median():
    durs = [0.05, 0.5, 0.05, 0.5, 0.05, 0.5] + [0.05] * 100  # noisy start, then steady
    clock = FakeClock(durs)
    t = measure(clock.work, TimingPolicy(warmup=0, min_reps=5, min_time=0.1, max_time=100.0), clock=clock)
    assert t.stable and t.reps > 6 and t.p50 == pytest.approx(0.05)


def test_pareto_front():
    pts = [(10, 0.5), (20, 0.4), (5, 0.6), (15, 0.3), (10, 0.45)]
    assert pareto_front(pts) == [2, 0, 1]


# ----------------------------------------------------------------------------- real data

def test_reference_model_quick_subset(ref_weights, cifar_dir, tmp_path):
    rows = run_bench([ref_weights], cifar_dir, backends="torch-fp32", limit=300, out=tmp_path,
                     timing=TimingPolicy(warmup=1, min_reps=3, min_time=0.1, max_time=1.0), plot=False)
    r = rows[0]
    assert r["status"] == "ok" and r["n_images"] == 300
    assert 0.80 <= r["top1"] <= 0.96  # 88.35% on all 10,000
    assert r["params"] == 15_253_578 and r["macs"] == 313_725_952
    assert r["size_mb"] == pytest.approx(61.08, abs=0.05)
    assert r["is_baseline"] and r["delta_pt"] == 0.0


def test_plot_labels_short_names_and_merges_coinciding_points():
    assert short_names(["m.pt", "m.onnx", "m_int8_ort_static.onnx", "m_pruned.pt"]) == [
        "baseline", "baseline", "int8_ort_static", "pruned"]
    assert short_names(["a.pt", "b.onnx"]) == ["a", "b"]  # no shared stem: names kept
    # 48 and 50 img/s at the same accuracy print on top of each other on a log axis; 70 does not
    assert label_groups([(48.0, 89.3), (70.0, 89.3), (50.0, 89.4), (50.0, 50.8)]) == [[0, 2], [1], [3]]


def test_load_note_only_when_the_machine_was_busier_than_its_cores():
    from vggc.bench.report import load_note

    assert load_note([1.7, 1.3, 1.5], [1.9, 1.5, 1.6], 2) == ""  # the bench's own 2 threads
    assert "other processes were competing" in load_note([1.7, 1.3, 1.5], [3.5, 3.7, 4.0], 2)
    assert load_note(None, None, 2) == ""


def test_best_backend_per_model_and_best_variant():
    from vggc.bench.report import best_per_model, best_variant, markdown_report, ordered, summary_lines

    def row(model, backend, top1, thr, p50, base=False):
        return {"model": model, "backend": backend, "status": "ok", "top1": top1, "throughput": thr,
                "latency_p50_ms": p50, "speedup": thr / 100, "delta_pt": 100 * (top1 - 0.88), "is_baseline": base,
                "precision": "fp32", "batch": 64, "timing_stable": True}

    rows = [row("m.pt", "torch-fp32", 0.88, 100.0, 20.0, base=True), row("m.onnx", "onnxruntime-cpu", 0.88, 150.0, 9.0),
            row("m_int8.onnx", "onnxruntime-cpu", 0.875, 300.0, 5.0),
            row("m_student.pt", "torch-fp32", 0.80, 250.0, 21.0), row("m_student.onnx", "onnxruntime-cpu", 0.80, 350.0, 4.0),
            {"model": "m.engine", "backend": "tensorrt", "status": "tensorrt not installed", "top1": None,
             "throughput": None, "latency_p50_ms": None}]
    best = {b["model"]: b for b in best_per_model(rows)}
    assert list(best) == ["m", "m_int8", "m_student"]  # .pt and .onnx of one model are one entry
    assert (best["m"]["file"], best["m"]["backend"], best["m"]["throughput"]) == ("m.onnx", "onnxruntime-cpu", 150.0)
    assert best["m_student"]["latency_p50_ms"] == 4.0 and best["m_student"]["p50_file"] == "m_student.onnx"
    # the student is faster but below 99 % of the baseline's top-1; INT8 (99.4 %) qualifies
    assert best_variant(rows)["model"] == "m_int8.onnx"
    assert best_variant(rows, min_fraction=0.995)["model"] == "m.onnx"
    assert "m_int8.onnx on onnxruntime-cpu" in summary_lines(rows)[-1]
    assert "## Each model on its best backend" in markdown_report([ordered(r) for r in rows], {"batch": 64})
    assert best_variant([r for r in rows if not r.get("is_baseline")]) is None


# ----------------------------------------------------------------------------- interleaved rounds

class SlowingClock(FakeClock):
    """Every call costs ``cost`` seconds, times ``factor`` once the clock passes ``at`` (the machine got busy)."""

    def __init__(self, at: float, factor: float):
        super().__init__([])
        self.at, self.factor, self.log = at, factor, []

    def task(self, name: str, cost: float):
        def run():
            self.log.append(name)
            self.t += cost * (self.factor if self.t >= self.at else 1.0)
        return run


def test_rounds_interleave_and_reverse_order():
    clock = SlowingClock(at=1e9, factor=1.0)
    tasks = [Task(clock.task("a", 0.1), calls=1, seconds=0.0), Task(clock.task("b", 0.1), calls=2, seconds=0.0)]
    res = measure_rounds(tasks, RoundsPolicy(rounds=3, warmup=1), clock=clock)
    assert clock.log == ["a", "b"] + ["a", "b", "b"] + ["b", "b", "a"] + ["a", "b", "b"]
    assert [r.reps for r in res] == [3, 6] and all(len(r.round_medians) == 3 for r in res)
    assert all(r.stable and r.p50 == pytest.approx(0.1) and r.spread == pytest.approx(0.0, abs=1e-9) for r in res)


def test_rounds_share_a_busy_spell_that_sequential_timing_blames_on_one_row():
    # Two equally fast models (0.1 s a call); from t = 2.45 s on, the machine is 2x slower.
    seq = SlowingClock(at=2.45, factor=2.0)
    pol = TimingPolicy(warmup=0, min_reps=5, min_time=2.0, max_time=2.0)
    a = measure(seq.task("a", 0.1), pol, clock=seq)
    b = measure(seq.task("b", 0.1), pol, clock=seq)
    assert b.p50 / a.p50 == pytest.approx(2.0)  # timed alone, b looks half as fast
    inter = SlowingClock(at=2.45, factor=2.0)
    ra, rb = measure_rounds([Task(inter.task("a", 0.1), calls=1, seconds=0.0),
                             Task(inter.task("b", 0.1), calls=1, seconds=0.0)],
                            RoundsPolicy(rounds=20, warmup=0), clock=inter)
    slow = [sum(m > 0.15 for m in r.round_medians) for r in (ra, rb)]
    assert min(slow) >= 7 and abs(slow[0] - slow[1]) <= 1  # both saw the busy spell
    assert rb.p50 / ra.p50 == pytest.approx(1.0)
    assert not ra.stable and not rb.stable  # rounds disagreed by 2x: flagged
    assert ra.spread == pytest.approx(1.0)  # IQR of the round medians = 0.1 s over a 0.1 s median


def test_rounds_drop_a_failing_task_and_keep_the_others():
    clock = SlowingClock(at=1e9, factor=1.0)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        clock.t += 0.1
        if calls["n"] == 3:
            raise RuntimeError("engine lost")

    res = measure_rounds([Task(flaky, calls=1, seconds=0.0), Task(clock.task("ok", 0.1), calls=1, seconds=0.0)],
                         RoundsPolicy(rounds=4, warmup=1), clock=clock)
    assert isinstance(res[0], RuntimeError) and calls["n"] == 3
    assert res[1].reps == 4 and res[1].stable
    with pytest.raises(ValueError):
        measure_rounds([], RoundsPolicy(rounds=0))


def test_run_bench_interleaves_by_default(tiny_files):
    root, data, a, b = tiny_files
    rows = run_bench([a, b], data, batch=8, backends="torch-fp32", limit=10, out=None,
                     timing=RoundsPolicy(rounds=2, warmup=1))
    assert rows.context["timing"]["mode"] == "interleaved" and rows.context["timing"]["rounds"] == 2
    for r in rows:
        assert r["status"] == "ok" and r["timing_reps_batch"] >= 4 and r["timing_reps_b1"] >= 10
        assert 0 < r["latency_p50_ms"] <= r["latency_p90_ms"] and isinstance(r["timing_stable"], bool)
        assert isinstance(r["timing_stable_batch"], bool) and isinstance(r["timing_stable_b1"], bool)
        assert r["timing_stable"] is (r["timing_stable_batch"] and r["timing_stable_b1"])
    # speedup is rounded to 3 decimals
    assert rows[1]["speedup"] == pytest.approx(rows[1]["throughput"] / rows[0]["throughput"], rel=1e-2, abs=5e-4)
    default = run_bench([a], data, batch=8, backends="torch-fp32", limit=10, out=None, quick=True)
    assert default.context["timing"] == {"mode": "interleaved", "rounds": 3, "warmup": 1, "spread_tol": 0.10}
    assert all(isinstance(r["timing_spread"], float) and r["timing_spread"] >= 0 for r in rows)


def test_one_odd_round_does_not_make_a_timing_unstable():
    clock = SlowingClock(at=1e9, factor=1.0)
    n = {"calls": 0}

    def hiccup():  # the 4th of 7 rounds is 3x slower (another process woke up)
        n["calls"] += 1
        clock.t += 0.3 if n["calls"] == 4 else 0.1

    (res,) = measure_rounds([Task(hiccup, calls=1, seconds=0.0)], RoundsPolicy(rounds=7, warmup=0), clock=clock)
    assert res.stable and res.spread == pytest.approx(0.0, abs=1e-9) and res.p50 == pytest.approx(0.1)


# ----------------------------------------------------------------------------- trust (issue 14)

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A tiny VGG trained for a few seconds (diverse predictions), as .pt, FP32 .onnx and static INT8 PT2E .pt2."""
    from vggc.compress.quantize import quantize
    from vggc.data import load_split, resolve_preprocess
    from vggc.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("trio")
    data = make_imagefolder(root / "data", per_class=10)
    model = make_tiny_vgg()
    train = load_split(data, "train")
    x = resolve_preprocess()(train.images)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), train.labels).backward()
        opt.step()
    model.eval()
    pt = save_state_dict(model.state_dict(), root / "t.pt")
    onnx = root / "t.onnx"
    export_onnx(model, onnx)
    pt2 = root / "t.pt2"
    quantize(pt, mode="static", backend="torch", data=data, calib_size=50, calib_method="minmax", out=pt2,
             evaluate=False)
    return {"root": root, "data": data, "pt": pt, "onnx": onnx, "pt2": pt2, "test": load_split(data, "test")}


def test_eager_onnxruntime_and_compiled_pt2_agree_in_one_run(trio):
    from vggc.export.pt2_backend import _compiled_reason

    if _compiled_reason():
        pytest.skip(_compiled_reason())
    before = torch.get_num_threads()
    rows = run_bench([trio["pt"], trio["onnx"], trio["pt2"]], trio["test"], batch=16, threads=1, out=None,
                     backends="torch-fp32,onnxruntime-cpu,torch-int8-compiled", timing=FAST)
    assert torch.get_num_threads() == before  # restored
    assert [(r["model"], r["backend"], r["precision"]) for r in rows] == [
        ("t.pt", "torch-fp32", "fp32"), ("t.onnx", "onnxruntime-cpu", "fp32"), ("t.pt2", "torch-int8-compiled", "int8")]
    base, ort, pt2 = rows
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert base["top1"] >= 0.5  # trained: the agreement below is not that of a constant prediction
    # every backend ran on the run's thread count (ONNX Runtime's read back from its session)
    assert [r["threads"] for r in rows] == [1, 1, 1] and all(r["note"] is None for r in rows)
    assert ort["providers"] == ["CPUExecutionProvider"]
    # same images, paired: FP32 ONNX Runtime predicts what eager torch predicts; INT8 nearly so
    assert ort["top1"] == base["top1"] and ort["baseline_agreement"] >= 0.99 and ort["delta_se_pt"] <= 1.0
    assert pt2["baseline_agreement"] >= 0.95 and abs(pt2["delta_pt"]) <= 3.0
    assert base["baseline_agreement"] == 1.0 and base["delta_se_pt"] == 0.0


def test_threads_default_to_the_process_setting_and_reach_onnxruntime(trio):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rows = run_bench([trio["onnx"], trio["pt"]], trio["test"], batch=16, out=None, limit=20,
                         backends="onnxruntime-cpu,torch-fp32", timing=FAST)
        assert [r["threads"] for r in rows] == [1, 1] and rows.context["threads"] == 1
        rows = run_bench([trio["onnx"]], trio["test"], batch=16, out=None, limit=20, threads=2,
                         backends="onnxruntime-cpu", timing=FAST)
        assert rows[0]["threads"] == 2  # the session's intra-op threads, read back
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="--threads 0: must be at least 1"):
        run_bench([trio["onnx"]], trio["test"], threads=0, out=None)


@pytest.mark.parametrize("key,ep,fallback", [
    ("onnxruntime-cuda", "CUDAExecutionProvider", ["CPUExecutionProvider"]),
    ("onnxruntime-tensorrt", "TensorrtExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])])
def test_provider_fallback_is_an_unavailable_row(trio, monkeypatch, key, ep, fallback):
    import dataclasses

    import onnxruntime as ort

    # the backend (its key, open function and provider check) is real; only this machine's lack of a
    # GPU is waved through and the session's provider list is faked
    real = runtime.get_backend(key)
    monkeypatch.setitem(runtime._BACKENDS, key, dataclasses.replace(real, available=lambda: None))
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: list(fallback))
    rows = run_bench([trio["onnx"]], trio["test"], batch=16, out=None, limit=20, backends=key, timing=FAST)
    want = f"{ep} did not load (session fell back to {', '.join(fallback)})"
    assert rows[0]["status"] == want and rows[0]["top1"] is None and rows[0]["throughput"] is None
    assert f"unavailable: {want}" in screen_table(rows, rows.context)
    with pytest.raises(Exception, match="did not load"):
        runtime.open_model(runtime.describe(trio["onnx"]), runtime.get_backend(key), {"threads": 1})


def test_accuracy_cache_key_covers_environment_threads_and_data(tiny_files, tmp_path, monkeypatch):
    import shutil

    from vggc import provenance
    from vggc.bench.timed import timing_key_inputs

    root, data, a, b = tiny_files
    out = tmp_path / "o"
    msgs: list[str] = []

    def bench(d=data, threads=1):
        return run_bench([a], d, batch=8, backends="torch-fp32", limit=20, threads=threads, out=out, plot=False,
                         timing=FAST, log=msgs.append)[0]

    first = bench()
    assert first["accuracy_cached"] is False and bench()["accuracy_cached"] is True
    entry = next(iter(json.loads((out / "accuracy-cache.json").read_text())["entries"].values()))
    assert entry["inputs"]["threads"] == 1 and torch.__version__.startswith(entry["inputs"]["libraries"]["torch"])
    assert entry["inputs"]["precision"] == "fp32" and "cpu_flags" in entry["inputs"]["cpu"]
    # another thread count
    msgs.clear()
    assert bench(threads=2)["accuracy_cached"] is False
    assert any("accuracy re-measured: threads: 1 -> 2" in m for m in msgs), msgs
    # another library version
    versions = provenance.library_versions()
    monkeypatch.setattr(provenance, "library_versions", lambda *a: {**versions, "torch": "9.9.9"})
    msgs.clear()
    assert bench()["accuracy_cached"] is False
    assert any("libraries.torch:" in m and "-> 9.9.9" in m for m in msgs), msgs
    assert bench()["accuracy_cached"] is True
    # another vggc source
    monkeypatch.setattr(provenance, "source_digest", lambda: "0" * 64)
    assert bench()["accuracy_cached"] is False
    # another test image (same file names and count)
    copy = tmp_path / "data2"
    shutil.copytree(data, copy)
    img = sorted((copy / "test").rglob("*.png"))[0]
    from torchvision.io import read_image, write_png

    x = read_image(str(img))
    write_png(255 - x, str(img))
    again = bench(copy)
    assert again["accuracy_cached"] is False and any("data:" in m for m in msgs)
    # what a reused timing would have to match
    t1, t2 = timing_key_inputs(1, FAST, 8), timing_key_inputs(2, FAST, 8)
    assert t1 != t2 and t1["threads"] == 1 and t1["cpu_flags"] == t2["cpu_flags"] and t1["timing"] == FAST.to_dict()


def test_paired_standard_error_by_hand():
    from vggc.bench.baseline import paired_delta

    labels = torch.zeros(10, dtype=torch.long)
    base = torch.tensor([0] * 8 + [1] * 2)       # 8 of 10 right
    row = torch.tensor([0] * 6 + [1] * 4)        # 6 of 10 right, wrong where the base was right
    delta, se, agree = paired_delta(row, base, labels)
    # d = [0]*6 + [-1, -1, 0, 0]: mean -0.2, sample variance 1.6 / 9
    assert delta == pytest.approx(-20.0) and se == pytest.approx(100 * (1.6 / 9 / 10) ** 0.5) and agree == 0.8
    swap = torch.tensor([0] * 7 + [1, 0, 1])     # same top-1 as the base, two images swapped
    delta, se, agree = paired_delta(swap, base, labels)
    assert delta == pytest.approx(0.0) and se == pytest.approx(100 * (2 / 9 / 10) ** 0.5) and agree == 0.8
    with pytest.raises(ValueError):
        paired_delta(row[:5], base, labels)


def test_paired_se_in_a_run_matches_an_independent_evaluation(trio, tiny_files):
    from vggc.bench.baseline import paired_delta

    other = tiny_files[3]  # an untrained model of the same architecture
    rows = run_bench([trio["pt"], other], trio["test"], batch=16, backends="torch-fp32", out=None, timing=FAST)
    preds = []
    for p in (trio["pt"], other):
        r = runtime.open_model(runtime.describe(p), runtime.get_backend("torch-fp32"))
        x = runtime.describe(p).preprocess(trio["test"].images)
        preds.append(r.predict(x).argmax(1))
    delta, se, agree = paired_delta(preds[1], preds[0], trio["test"].labels)
    assert rows[1]["delta_pt"] == pytest.approx(delta, abs=1e-3) and se > 0
    assert rows[1]["delta_se_pt"] == pytest.approx(se, abs=1e-3)
    assert rows[1]["baseline_agreement"] == pytest.approx(agree, abs=1e-5)
    assert rows[0]["within_budget"] is rows[0]["timing_stable_batch"] and rows[1]["within_budget"] is False


def test_budget_rule_is_one_definition_for_rows_summary_and_report():
    from vggc.bench.baseline import best_variant, marginal, qualifies
    from vggc.bench.report import markdown_report, ordered, summary_lines

    def row(model, top1, thr, se, stable=True, base=False):
        return {"model": model, "backend": "onnxruntime-cpu", "status": "ok", "top1": top1, "throughput": thr,
                "latency_p50_ms": 1.0, "speedup": thr / 100, "delta_pt": round(100 * (top1 - 0.88), 4),
                "delta_se_pt": se, "is_baseline": base, "precision": "fp32", "batch": 64, "timing_stable": stable,
                "n_images": 2000}

    rows = [row("base.pt", 0.88, 100.0, 0.0, base=True),
            row("unsettled.onnx", 0.88, 500.0, 0.0, stable=False),  # fastest, but its timing did not settle
            row("far.onnx", 0.86, 450.0, 1.0),        # drop 2.0 pt, > 1 SE past the 0.88 pt budget
            row("close_out.onnx", 0.868, 420.0, 0.5),  # drop 1.2 pt: out, by less than one SE
            row("close_in.onnx", 0.872, 400.0, 0.5),   # drop 0.8 pt: in, by less than one SE
            row("clear_in.onnx", 0.875, 300.0, 0.3)]   # drop 0.5 pt: in, by more than one SE
    base = rows[0]
    budget = 0.88  # the default: 1 % of 88 %
    for r in rows:
        r["within_budget"], r["budget_marginal"] = qualifies(r, base, budget), marginal(r, base, budget)
    assert [r["within_budget"] for r in rows] == [True, False, False, False, True, True]
    assert [r["budget_marginal"] for r in rows] == [False, False, False, True, True, False]
    assert best_variant(rows)["model"] == "close_in.onnx" == best_variant(rows, max_drop_pt=budget)["model"]
    assert best_variant(rows, max_drop_pt=0.6)["model"] == "clear_in.onnx"
    assert best_variant(rows, min_fraction=0.995)["model"] == "base.pt"  # 0.44 pt: only the baseline itself
    summary = summary_lines(rows)[-1]
    assert "close_in.onnx on onnxruntime-cpu" in summary and "rests on less than one SE" in summary
    table = screen_table([ordered(r) for r in rows], {"batch": 64})
    assert "0.50?" in table and "within one standard error" in table
    report = markdown_report([ordered(r) for r in rows], {"batch": 64, "max_drop_pt": 0.88, "max_drop_default": True})
    rec = report.split("## Recommendation", 1)[1].split("##", 1)[0]
    assert "close_in.onnx on onnxruntime-cpu" in rec and "rests on less than one SE" in rec
    assert "unsettled.onnx on onnxruntime-cpu (500.0 img/s): its batch-N timing did not settle" in rec
    assert "far.onnx on onnxruntime-cpu (450.0 img/s): top-1 drop 2.00 pt > 0.88 pt." in rec
    assert "close_out.onnx on onnxruntime-cpu (420.0 img/s): top-1 drop 1.20 pt > 0.88 pt by less than one SE" in rec
    assert "clear_in.onnx" not in rec  # slower than the recommendation: not listed


def test_max_drop_option_on_bench_and_pipeline(tiny_files, tmp_path):
    from vggc.cli import main

    root, data, a, b = tiny_files
    threads = torch.get_num_threads()
    out = tmp_path / "md"
    try:
        res = CliRunner().invoke(main, ["bench", str(a), str(b), "--data", str(data), "--backends", "torch-fp32",
                                        "--limit", "20", "--batch", "8", "--threads", "1", "--out", str(out),
                                        "--no-plot", "--rounds", "1", "--max-drop", "0.5"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert all(k in doc[1] for k in ("delta_se_pt", "baseline_agreement", "within_budget", "budget_marginal"))
    assert doc[1]["within_budget"] is (doc[1]["timing_stable_batch"] is True and -doc[1]["delta_pt"] <= 0.5)
    report = (out / "report.md").read_text()
    assert "loses at most 0.50 pt of top-1" in report and "1% of the baseline" not in report
    man = json.loads((out / "results.json.json").read_text())
    assert man["settings"]["max_drop_pt"] == 0.5 and man["settings"]["timing_environment"]["threads"] == 1
    res = CliRunner().invoke(main, ["bench", str(a), "--data", str(data), "--max-drop", "-1", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()
    res = CliRunner().invoke(main, ["pipeline", "--help"])
    assert res.exit_code == 0 and "--max-drop" in res.output


def test_training_budget_follows_the_manifest_chain(tmp_path):
    """A pruned state_dict's fine-tune budget (and a distilled one's) is named on its own row and on
    the rows of files made from it (ONNX export -> INT8), through their manifests' inputs.source."""
    from vggc.artifacts import read_manifest, write_manifest
    from vggc.bench.lineage import training_budget

    def art(name, **kw):
        p = tmp_path / name
        p.write_bytes(name.encode())
        write_manifest(p, kind="x", **kw)
        return p

    src = art("base.pt", inputs={}, settings={})
    pruned = art("p.pt", inputs={"source": src}, settings={"prune": {}, "finetune_epochs": 1,
                                                          "distill_from_source": None},
                 metrics={"train_images": 5000})
    onnx = art("p.onnx", inputs={"source": pruned}, settings={})
    q = art("p_int8.onnx", inputs={"source": onnx}, settings={})
    student = art("s.pt", inputs={"teacher": src}, settings={"distill": {}, "train": {"epochs": 2}},
                  metrics={"train_images": 5000})
    want = "pruned, fine-tuned 1 epoch(s) on 5,000 train images"
    assert [training_budget(read_manifest(p)) for p in (pruned, onnx, q)] == [want] * 3
    assert training_budget(read_manifest(student)) == "distilled 2 epoch(s) on 5,000 train images"
    assert training_budget(read_manifest(src)) is None
