"""The training budget (#22 item 1): where a timed pipeline spends epochs, the pilot/final steps, the
learning curve recorded per epoch, and the strided depthwise layers kept fp32 under bf16 autocast."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from vggc.pipeline.allocate import allocate, parse_duration, project, time_shares


def _hist(top1s, seconds=60.0):
    return [{"epoch": i + 1, "top1": t, "seconds": seconds, "eval_seconds": 2.0} for i, t in enumerate(top1s)]


def test_parse_duration():
    assert parse_duration("6h") == 21600 and parse_duration("90m") == 5400 and parse_duration("45s") == 45
    assert parse_duration("1.5h") == 5400 and parse_duration(120) == 120 and parse_duration("300") == 300
    assert parse_duration(None) is None and parse_duration("off") is None
    for bad in ("-1h", "soon", "0", "infs"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_time_shares_split_what_the_reserve_leaves():
    shares = time_shares(6 * 3600, ["prune50", "prune25", "prune12_5"], "distill", reserve_s=3600)
    assert sum(shares.values()) == pytest.approx(5 * 3600)
    assert shares["distill"] == pytest.approx(6 * shares["prune50"]) and shares["prune50"] == shares["prune12_5"]
    # the full preset's default: 6 h - 45 min reserve -> 35 min per target, 3.5 h for the student
    shares = time_shares(6 * 3600, ["prune50", "prune25", "prune12_5"], "distill")
    assert shares == pytest.approx({"prune50": 2100, "prune25": 2100, "prune12_5": 2100, "distill": 12600})
    with pytest.raises(ValueError, match="leaves nothing"):
        time_shares(1800, ["prune50"], None, reserve_s=3600)


def test_finished_flat_and_stopped_variants_get_no_more():
    floor = 0.8747
    a = allocate(_hist([0.85, 0.86, 0.87, 0.874, 0.8766]), floor, share_s=3600, max_epochs=30)
    assert (a.epochs, a.extended) == (5, False) and a.why.startswith("within the budget after 5 epochs")
    a = allocate(_hist([0.80, 0.81, 0.812, 0.8125, 0.8128]), floor, share_s=3600, max_epochs=30)
    assert not a.extended and "flat" in a.why  # +0.08 pt over the second half
    a = allocate(_hist([0.5]), floor, share_s=3600, max_epochs=30, stopped_early="stopped after 1/5 epochs: ...")
    assert not a.extended and a.why.startswith("stopped early: stopped after 1/5")
    a = allocate([{"epoch": 1, "seconds": 1.0}], floor, share_s=3600, max_epochs=30)
    assert not a.extended and "no learning curve" in a.why


def test_a_rising_variant_gets_twice_its_projected_need_within_cap_and_share():
    floor = 0.8747
    curve = [0.8138, 0.8400, 0.8500, 0.8580, 0.8625]  # the 12.5 % target's 5 epochs, roughly
    assert project(curve, 5) == pytest.approx(0.8625)
    assert project(curve, 10) == pytest.approx(0.8625 + 0.5 * (0.8625 - 0.85))
    a = allocate(_hist(curve), floor, share_s=3600, max_epochs=30)
    need = next(n for n in range(6, 31) if project(curve, n) >= floor)
    assert a.extended and a.epochs == min(30, 2 * need) and a.projected_top1 >= floor
    assert "still rising" in a.why and f"{a.epochs} epochs" in a.why
    # a share that affords 16 epochs at 62 s/epoch (the pilot's 5 count against it) caps the run; the
    # projection there is short of the floor by less than CLOSE_PT, so it is still tried
    small = allocate(_hist(curve), floor, share_s=21 * 62 + 1, max_epochs=30)
    assert small.epochs == 16 and small.extended and floor - 0.005 < small.projected_top1 < floor
    # 10 epochs: projected 0.6 pt short -> no more
    short = allocate(_hist(curve), floor, share_s=15 * 62 + 1, max_epochs=30)
    assert not short.extended and "short" in short.why
    # a share that affords nothing beyond the pilot: no more
    none = allocate(_hist(curve), floor, share_s=6 * 62, max_epochs=30)
    assert not none.extended and "affords no longer run" in none.why


def test_a_rising_variant_too_far_short_gets_no_more():
    curve = [0.60, 0.62, 0.63, 0.635, 0.64]  # +1 pt over the second half; 23 pt short
    a = allocate(_hist(curve), 0.8747, share_s=36000, max_epochs=30)
    assert not a.extended and "short" in a.why and a.projected_top1 < 0.8747


def test_strided_depthwise_convs_run_fp32_under_cpu_bf16_autocast_and_nothing_else_changes():
    from vggc.models import mobilenet_v2_cifar
    from vggc.train import fp32_islands, keeps_fp32_under_bf16

    m = mobilenet_v2_cifar(0.25, 10)
    names = [n for n, mod in m.named_modules() if keeps_fp32_under_bf16(mod)]
    assert names and all(mod.stride[0] == 2 for n, mod in m.named_modules() if n in names)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen = {}
    for n, mod in m.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.dtype))
    with fp32_islands(m, torch.bfloat16, torch.device("cpu")) as patched:
        assert patched == names
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.randn(2, 3, 32, 32))
    assert all(seen[n] == torch.float32 for n in names)
    assert any(dt == torch.bfloat16 for n, dt in seen.items() if n not in names)  # the rest stays bf16
    assert all("forward" not in mod.__dict__ for mod in m.modules())  # restored
    assert m.state_dict().keys() == before.keys()
    with fp32_islands(m, None, torch.device("cpu")) as patched:  # fp32 training: nothing to do
        assert patched == []


def test_fit_records_the_learning_curve_without_changing_the_weights(tmp_path):
    from conftest import make_imagefolder, make_tiny_vgg

    from vggc.data import Preprocess, load_split
    from vggc.evaluate import evaluate
    from vggc.train import TrainConfig, fit

    data = make_imagefolder(tmp_path / "data", per_class=4)
    train, test = load_split(data, "train"), load_split(data, "test")
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, seed=0, precision="fp32")

    def evaluate_epoch(m):
        with torch.inference_mode():
            return {"top1": evaluate(lambda x: m(x), test, Preprocess()).top1, "n_eval": len(test)}

    a, b = make_tiny_vgg(), make_tiny_vgg()
    ra = fit(a, train, Preprocess(), cfg, evaluate_epoch=evaluate_epoch)
    fit(b, train, Preprocess(), cfg)
    assert all({"eval_seconds", "n_eval", "top1"} <= set(h) for h in ra.history)
    assert all(0.0 <= h["top1"] <= 1.0 and h["n_eval"] == len(test) for h in ra.history)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_timed_pipeline_pilots_allocates_and_reuses_the_pilot(tmp_path, monkeypatch):
    """With a time budget the prune step trains a pilot with a curve, allocates, writes the final model
    (here: a copy of the pilot, since the tiny model cannot be within budget and is flat or short), records
    why in its manifest, pipeline.json and the log, and a rerun after the final is lost reuses the pilot."""
    from test_pipeline import _tiny_setup

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch, prune_finetune_epochs=2, max_finetune_epochs=4)
    log: list[str] = []
    out = tmp_path / "run"
    res = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune", "pruned50_onnx"],
                                time_budget="2h", log=log.append)
    step = {s["name"]: s for s in res["steps"]}["prune50"]
    assert step["status"] == "ok", step["status"]
    a = step["metrics"]["allocation"]
    assert a["pilot_epochs"] == 2 and a["epochs"] in (2, 3, 4) and a["why"]
    final, pilot = out / "tiny_pruned50.pt", out / "tiny_pruned50_pilot.pt"
    doc = json.loads((out / "tiny_pruned50.pt.json").read_text())
    assert doc["artifact"] == "tiny_pruned50.pt" and doc["metrics"]["allocation"] == a
    assert doc["metrics"]["epochs_allocated"] == a["epochs"] and len(doc["metrics"]["pilot"]["curve"]) == 2
    hist = [h for s in doc["metrics"]["steps"] for h in s["history"]]
    assert len(hist) == a["epochs"] and all("top1" in h for h in hist)
    cmd = shlex.split(step["metrics"]["command"])
    assert cmd[cmd.index("--finetune-epochs") + 1] == str(a["epochs"]) and "--curve" in cmd
    assert cmd[cmd.index("--out") + 1] == "$OUT/tiny_pruned50.pt"
    # the decision is logged as soon as the step ends, right after its "done" line (a long run's log shows
    # it while later steps train, and a killed run has it), and before the next step's lines
    i = next(i for i, m in enumerate(log) if m.startswith("-- prune50: done in"))
    assert log[i + 1].startswith(f"-- prune50: {a['epochs']} epoch(s) (") and a["why"] in log[i + 1]
    assert log[i + 2] == "== pruned50_onnx: ONNX FP32 export", log[i:i + 3]
    budget = json.loads((out / "pipeline.json").read_text())["time_budget"]
    assert budget["seconds"] == 7200 and budget["within"]
    assert budget["spent_seconds"] == pytest.approx(sum(s["spent"] for s in res["steps"]), abs=0.05)
    assert step["spent"] == step["seconds"] and step["metrics"]["earlier_seconds"] == 0.0
    if not a["extended"]:
        assert final.read_bytes() == pilot.read_bytes()
    # the final model lost (a kill before the marker): the pilot is reused, not trained again
    (out / ".steps" / "prune50.json").unlink()
    final.unlink()
    import vggc.compress.prune as prune_pkg

    calls = []
    real = prune_pkg.prune_file
    monkeypatch.setattr(prune_pkg, "prune_file", lambda *a, **k: calls.append(k["finetune_epochs"]) or real(*a, **k))
    res2 = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"], time_budget="2h",
                                 log=log.append)
    step2 = {s["name"]: s for s in res2["steps"]}["prune50"]
    assert step2["status"] == "ok"
    assert calls == ([a["epochs"]] if a["extended"] else [])
    # the budget's account keeps the reused pilot's training (done by the first run), and a cached
    # step keeps what it cost when it was made
    from vggc.pipeline.pilot import epoch_seconds

    pilot_doc = json.loads((out / "tiny_pruned50_pilot.pt.json").read_text())
    pilot_s = epoch_seconds([h for s in pilot_doc["metrics"]["steps"] for h in s["history"]])
    assert pilot_s > 0 and step2["metrics"]["earlier_seconds"] == pytest.approx(pilot_s, abs=0.01)
    assert step2["spent"] == pytest.approx(step2["seconds"] + pilot_s, abs=0.02)
    res3 = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"], time_budget="2h")
    step3 = {s["name"]: s for s in res3["steps"]}["prune50"]
    assert step3["status"] == "cached" and step3["seconds"] == 0 and step3["spent"] == step2["spent"]
    assert res3["time_budget"]["spent_seconds"] == pytest.approx(sum(s["spent"] for s in res3["steps"]), abs=0.05)
    # new training data: a pilot trained on the old data is not this run's, so it is trained again
    calls.clear()
    img = next((data / "train").rglob("*.png"))
    img.write_bytes(img.read_bytes() + b"\0")
    res4 = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"], time_budget="2h")
    step4 = {s["name"]: s for s in res4["steps"]}["prune50"]
    assert step4["status"] == "ok" and "train data changed" in step4["why"]
    assert calls[0] == 2 and step4["metrics"]["earlier_seconds"] == 0.0
    from vggc.errors import InputError

    for bad, why in (("soon", "use e.g. 6h"), ("30m", "leaves nothing for training")):
        with pytest.raises(InputError, match=f"--time-budget: .*{why}"):
            pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"], time_budget=bad)
