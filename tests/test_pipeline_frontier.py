"""The frontier (#17): several MAC targets, the cheap KD teacher, early stop, what is left of the
budget for INT8, and the rebuild commands the pipeline records (parsed by the real Click commands)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import make_imagefolder, make_tiny_vgg

from vggc.artifacts import save_state_dict


def test_full_preset_builds_one_branch_per_target_and_old_names_expand():
    from vggc.pipeline import PRESETS, build_steps
    from vggc.pipeline import _expand_families as expand
    from vggc.pipeline.build import family, target_tag

    assert [target_tag(t) for t in (0.5, 0.25, 0.125)] == ["50", "25", "12_5"]
    assert family("pruned12_5_int8_ov_static") == "pruned_int8_ov_static" and family("prune_scan") == "prune_scan"
    full = PRESETS["full"]
    assert full.targets() == (0.5, 0.25, 0.125)
    steps = {s.name: s for s in build_steps(Path("w.pt"), Path("d"), full)}
    for tag in ("50", "25", "12_5"):
        prune = steps[f"prune{tag}"]
        # one scan; the INT8 OpenVINO teacher; the unpruned model's FP32 reference (not evaluated again)
        assert prune.deps == ["prune_scan", "int8_ov_static", "source_eval"]
        assert prune.settings["kd"]["teacher_backend"] == "openvino-cpu" and prune.settings["stop"]["margin_pt"] > 0
        for q in ("ort", "torch", "ov"):  # ONNX Runtime and NNCF quantize the pruned model's FP32 ONNX export
            assert steps[f"pruned{tag}_int8_{q}_static"].deps == [f"prune{tag}"] + (
                [f"pruned{tag}_onnx"] if q != "torch" else [])
            assert steps[f"pruned{tag}_int8_{q}_static"].settings["max_fp32_layers"] == full.max_fp32_layers
    assert steps["int8_ort_static"].deps == ["source_eval", "onnx_fp32"] == steps["int8_ov_static"].deps
    assert steps["int8_ort_dynamic"].deps == ["onnx_fp32"] and steps["int8_torch_static"].deps == ["source_eval"]
    assert steps["distill"].deps == ["int8_ov_static", "source_eval"]
    log: list[str] = []
    assert expand(["prune", "onnx_fp32"], list(steps.values()), log.append) == [
        "prune50", "prune25", "prune12_5", "onnx_fp32"]
    assert log == ["-- --only prune: deprecated name; it now means prune50, prune25, prune12_5"]
    quick = {s.name for s in build_steps(Path("w.pt"), Path("d"), PRESETS["quick"])}
    assert {"prune50", "pruned50_int8_ov_static"} <= quick and not any("25" in n for n in quick)


def test_budget_left_is_the_budget_minus_what_pruning_lost():
    from vggc.pipeline.build import budget_left

    meta = {"metrics": {"top1_source": 0.8835, "top1": 0.8800}}
    assert budget_left(meta, None) == pytest.approx(0.8835 - 0.35)  # default budget: 1 % of 88.35 %
    assert budget_left(meta, 0.5) == pytest.approx(0.15)
    assert budget_left({"metrics": {"top1_source": 0.9, "top1": 0.85}}, 1.0) == pytest.approx(-4.0)
    with pytest.raises(ValueError):
        budget_left({"metrics": {}}, 1.0)


def _parse(cli_main, command: str):
    """Parse one recorded ``vggc ...`` command with the real Click command; return its params."""
    parts = shlex.split(command)
    assert parts[0] == "vggc"
    import click

    sub = cli_main.get_command(click.Context(cli_main), parts[1])  # the group loads commands lazily
    ctx = sub.make_context(parts[1], parts[2:])
    return ctx.params


def test_recorded_commands_parse_with_the_real_cli(tmp_path):
    from vggc.cli import main
    from vggc.pipeline import commands as c

    w, d, t = tmp_path / "w.pt", tmp_path / "data", tmp_path / "t.xml"
    d.mkdir()
    scan = tmp_path / "scan.json"
    for f in (w, t, scan):
        f.write_text("x")
    p = _parse(main, c.prune_cmd(w, tmp_path / "p.pt", d, strategy="sensitivity", target=0.25, scan=scan, epochs=5,
                                 lr=0.01, batch=128, limit=None, eval_limit=None, seed=0, kd_alpha=0.9,
                                 kd_temperature=4.0, teacher_model=t, teacher_backend="openvino-cpu",
                                 stop_drop=5.88, stop_after=1, bn_recalib=500))
    assert (p["target_macs"], p["finetune_epochs"], p["kd_alpha"], p["teacher_model"], p["teacher_backend"],
            p["stop_drop"], p["sensitivity"], p["bn_recalib"]) == (0.25, 5, 0.9, str(t), "openvino-cpu", 5.88,
                                                                    str(scan), 500)
    q = _parse(main, c.quantize_cmd(w, tmp_path / "q.xml", d, mode="static", backend="openvino", calib_size=1000,
                                    seed=0, reduce_range=False, max_drop=0.53, max_fp32_layers=4, eval_limit=None,
                                    fp32_onnx=t))
    assert (q["backend"], q["max_drop"], q["max_fp32_layers"], q["reduce_range"], q["no_eval"], q["fp32_onnx"]) == (
        "openvino", 0.53, 4, False, False, str(t))
    q = _parse(main, c.quantize_cmd(w, tmp_path / "q.onnx", d, mode="static", backend="onnxruntime",
                                    calib_size=128, seed=0, reduce_range=True))
    assert q["max_drop"] is None and q["no_eval"] and q["reduce_range"] is True
    e = _parse(main, c.export_cmd(w, tmp_path / "m.onnx", d, fp16=True, parity_limit=256, seed=0))
    assert e["fp16"] and e["parity_limit"] == 256
    k = _parse(main, c.distill_cmd(w, tmp_path / "s.pt", d, epochs=5, lr=0.05, batch=128, limit=None,
                                   eval_limit=500, width=1.0, temperature=4.0, alpha=0.9, seed=0, teacher_model=t,
                                   teacher_backend="openvino-cpu"))
    assert (k["epochs"], k["teacher_model"], k["eval_limit"]) == (5, str(t), 500)
    s = _parse(main, c.scan_cmd(w, tmp_path / "scan", d, scan_limit=1000, seed=0))
    assert s["scan"] and s["scan_limit"] == 1000
    assert c.rebuild_chain("q", {"q": ["p"], "p": ["s", "t"], "t": ["e"]},
                           {"q": "Q", "p": "P", "s": "S", "t": "T", "e": "E"}) == ["S", "E", "T", "P", "Q"]


def test_fit_stop_check_ends_training_and_a_resume_asks_again(tmp_path):
    from vggc.data import Preprocess, load_split
    from vggc.train import TrainConfig, fit

    data = make_imagefolder(tmp_path / "data", per_class=4)
    train = load_split(data, "train")
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.01, seed=0, precision="fp32")
    asked: list[int] = []

    def stop(rec):
        asked.append(rec["epoch"])
        return "too far" if rec["epoch"] == 1 else None

    ckpt = tmp_path / "m.ckpt"
    res = fit(make_tiny_vgg(), train, Preprocess(), cfg, checkpoint=ckpt, stop_check=stop)
    assert res.stopped_early == "too far" and [h["epoch"] for h in res.history] == [1] and asked == [1]
    assert res.history[-1]["stopped_early"] == "too far"
    # killed after the decision, before the caller saved its output: the resume decides the same, trains nothing
    again = fit(make_tiny_vgg(), train, Preprocess(), cfg, checkpoint=ckpt, resume=True, stop_check=stop)
    assert again.stopped_early == "too far" and again.epochs_run == 0 and asked == [1, 1]
    # no reason: all epochs run, the last one is not asked (nothing left to stop)
    asked.clear()
    full = fit(make_tiny_vgg(), train, Preprocess(), cfg, stop_check=lambda r: asked.append(r["epoch"]))
    assert full.stopped_early is None and len(full.history) == 3 and asked == [1, 2]


def test_prune_with_a_file_teacher_and_early_stop(tmp_path, monkeypatch):
    """KD from the source's ONNX export on ONNX Runtime: the manifest says which teacher ran and how
    it agrees with the PyTorch source; an early stop keeps the model so far and says why."""
    from vggc.compress.distill import KDConfig
    from vggc.compress.prune import PruneSpec, prune_file
    from vggc.errors import InputError
    from vggc.export.job import export_file
    from vggc.train import TrainConfig

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "w.pt"
    save_state_dict(make_tiny_vgg().state_dict(), w)
    teacher = tmp_path / "w.onnx"
    export_file(str(w), str(teacher), data=None)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, seed=0, precision="fp32")
    out = tmp_path / "p.pt"
    m = prune_file(w, data, out, PruneSpec(target_macs=0.5), train_cfg=cfg, finetune_epochs=2, kd=KDConfig(),
                   teacher_model=teacher, teacher_backend="onnxruntime-cpu", stop_drop_pt=-100.0, bn_recalib=0)
    tm = m["teacher_model"]
    assert tm["backend"] == "onnxruntime-cpu" and tm["agreement"] == 1.0 and tm["top1"] == m["top1_source"]
    assert m["stopped_early"].startswith("stopped after 1/2 epochs")  # -100 pt: always "too far"
    doc = json.loads((out.with_name("p.pt.json")).read_text())
    assert doc["settings"]["teacher_model"]["sha256"] == tm["sha256"] and doc["metrics"]["stop_rule"]["after_epochs"] == 1
    assert [len(s["history"]) for s in doc["metrics"]["steps"]] == [1]
    assert torch.load(out, weights_only=True)  # the model so far is saved
    with pytest.raises(InputError, match="needs --kd-alpha"):
        prune_file(w, data, tmp_path / "q.pt", PruneSpec(target_macs=0.5), train_cfg=cfg, finetune_epochs=2,
                   teacher_model=teacher, bn_recalib=0)


def test_file_teacher_refuses_other_preprocessing(tmp_path):
    from vggc.compress.teacher import open_teacher
    from vggc.data import Preprocess
    from vggc.errors import InputError
    from vggc.export.job import export_file

    w = tmp_path / "w.pt"
    save_state_dict(make_tiny_vgg().state_dict(), w)
    export_file(str(w), str(tmp_path / "w.onnx"), data=None)
    t = open_teacher(tmp_path / "w.onnx", Preprocess(), backend="onnxruntime-cpu")
    x = torch.randn(4, 3, 32, 32)
    assert t(x).shape == (4, 10) and t.facts["precision"] == "fp32"
    t.close()
    other = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32)
    with pytest.raises(InputError, match="preprocessing differs"):
        open_teacher(tmp_path / "w.onnx", other)


def test_int8_step_that_misses_the_budget_writes_plain_int8_and_says_so(tmp_path, monkeypatch):
    """The accuracy-aware INT8 step gets the whole budget for the unpruned model; when no allowed set of
    FP32 layers meets it the step writes plain INT8 (the row shows the drop) and the log says why."""
    from test_pipeline import _tiny_setup

    import vggc.compress.quantize as q
    from vggc.compress.quantize import BudgetNotMetError

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    real, calls = q.quantize, []

    def quantize(*args, **kw):
        calls.append(kw.get("max_drop"))
        if kw.get("max_drop") is not None:
            raise BudgetNotMetError("--max-drop 0.25: INT8 still loses 3.00 pt with the 4 most sensitive layers")
        return real(*args, **kw)

    monkeypatch.setattr(q, "quantize", quantize)
    log: list[str] = []
    res = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=tmp_path / "run", only=["int8_ort_static"],
                                max_drop_pt=0.25, log=log.append)
    step = {s["name"]: s for s in res["steps"]}["int8_ort_static"]
    assert step["status"] == "ok" and calls == [0.25, None]  # the whole budget for the unpruned model, then plain
    assert step["metrics"]["budget_note"].endswith("wrote plain INT8") and "--max-drop" not in step["metrics"]["command"]
    assert any(m.startswith("-- int8_ort_static: --max-drop 0.25: INT8 still loses") for m in log)
    row = next(r for r in res["rows"] if r["model"] == "tiny_int8_ort_static.onnx" and r["status"] == "ok")
    # the rebuild commands: the FP32 ONNX export it quantized, then the plain quantization that ran
    export = {s["name"]: s for s in res["steps"]}["onnx_fp32"]["metrics"]["command"]
    assert row["rebuild"] == [export, step["metrics"]["command"]]


def test_pipeline_commands_are_relative_to_out_and_the_work_is_counted(tmp_path, monkeypatch):
    """Inputs given relative stay relative in the recorded commands, files under --out are $OUT/...
    (pipeline.json says what OUT was), every command parses with the real CLI once OUT is set, and
    each step's work is recorded: the unpruned model is evaluated in FP32 once (source_eval), the
    prune step and the INT8 teacher take its top-1 from there, each FP32 ONNX file is exported once."""
    import click
    from test_pipeline import _tiny_setup

    from vggc.cli import main
    from vggc.pipeline.commands import command_args

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    log: list[str] = []
    res = pipeline.run_pipeline("tiny.pt", "data", preset="tiny", out_dir="run", only=["prune", "pruned_onnx"],
                                log=log.append)
    doc = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert doc["out_as_given"] == "run"
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["source_eval"]["work"]["fp32_source_evals"] == 1
    assert steps["prune50"]["status"] == "ok" and steps["prune50"]["work"]["fp32_source_evals"] == 0
    assert steps["pruned50_onnx"]["work"]["fp32_exports"] == 1 == steps["onnx_fp32"]["work"]["fp32_exports"]
    assert steps["int8_ov_static"]["work"]["fp32_exports"] == 0  # NNCF quantized onnx_fp32's file
    assert doc["work"]["fp32_exports"] == 2 and doc["work"]["fp32_source_evals"] == 1
    assert doc["work"]["fp32_exports"] == sum(s["work"].get("fp32_exports", 0) for s in doc["steps"])
    assert doc["step_seconds"] == pytest.approx(sum(s["seconds"] for s in doc["steps"]), abs=0.05)
    assert any(m.startswith("-- pruned50_onnx: done in") and m.endswith("(1 FP32 export)") for m in log)
    commands = [s["metrics"]["command"] for s in doc["steps"] if "command" in s["metrics"]]
    assert len(commands) >= 3
    for cmd in commands:
        assert str(tmp_path) not in cmd and '"$OUT/' in cmd, cmd
        args = command_args(cmd, out="run")
        name = shlex.split(cmd)[1]
        sub = main.get_command(click.Context(main), name)
        params = sub.make_context(name, args).params  # the files it names exist once OUT=run
        if name == "prune":
            assert params["weights"] == "tiny.pt" and params["data"] == "data"
    row = next(r for r in res["rows"] if r["model"] == "tiny_pruned50.onnx")
    # the teacher: the unpruned model's FP32 ONNX export, then its INT8 IR from it
    assert [shlex.split(c)[1] for c in row["rebuild"]] == ["export", "quantize", "prune", "export"]
    assert '--fp32-onnx "$OUT/tiny.onnx"' in row["rebuild"][1]
