"""Pipeline step runner: caching by content, partial reruns, failures reported, kills resumable."""

from __future__ import annotations

import json

import pytest

from vggc.pipeline.steps import Step, run_steps


class Recorder:
    def __init__(self):
        self.calls = []

    def writer(self, name, text_fn, fail=False, interrupt=False):
        def run(ctx):
            self.calls.append(name)
            if interrupt:
                tmp = ctx.out_dir / (".tmp-" + ctx.step.outputs[0])
                tmp.write_text("partial")
                raise KeyboardInterrupt
            if fail:
                raise RuntimeError(f"{name} broke\nsecond line")
            src = "".join(p.read_text() for d in ctx.step.deps for p in ctx.paths[d])
            ctx.output().write_text(src + text_fn())
            return {"len": len(src)}
        return run


def _steps(rec, tmp_path, a_setting=1, fail_b=False, interrupt_c=False):
    src = tmp_path / "source.txt"
    if not src.exists():
        src.write_text("S")
    return [
        Step("a", ["a.txt"], rec.writer("a", lambda: f"a{a_setting}"), inputs=[src], settings={"x": a_setting}),
        Step("b", ["b.txt"], rec.writer("b", lambda: "b", fail=fail_b), inputs=[src]),
        Step("c", ["c.txt"], rec.writer("c", lambda: "c", interrupt=interrupt_c), deps=["a"]),
        Step("d", ["d.txt"], rec.writer("d", lambda: "d"), deps=["b"]),
    ]


def test_rerun_is_cached_and_settings_change_reruns_dependents(tmp_path):
    out = tmp_path / "run"
    rec = Recorder()
    res = run_steps(_steps(rec, tmp_path), out)
    assert [r.status for r in res] == ["ok"] * 4 and rec.calls == ["a", "b", "c", "d"]
    rec.calls.clear()
    res = run_steps(_steps(rec, tmp_path), out)
    assert [r.status for r in res] == ["cached"] * 4 and rec.calls == []
    res = run_steps(_steps(rec, tmp_path, a_setting=2), out)
    assert rec.calls == ["a", "c"]  # b and d do not depend on a
    assert (out / "c.txt").read_text() == "a2c"


def test_changed_input_file_and_tampered_output_rerun(tmp_path):
    out = tmp_path / "run"
    rec = Recorder()
    run_steps(_steps(rec, tmp_path), out)
    rec.calls.clear()
    (out / "d.txt").write_text("tampered")
    run_steps(_steps(rec, tmp_path), out)
    assert rec.calls == ["d"]
    rec.calls.clear()
    (tmp_path / "source.txt").write_text("S2")
    run_steps(_steps(rec, tmp_path), out)
    # a and b read source.txt, so they rerun; their outputs came out byte-identical, so the
    # content-addressed keys of c and d are unchanged and they stay cached
    assert rec.calls == ["a", "b"]


def test_failure_is_reported_and_the_rest_go_on(tmp_path):
    rec = Recorder()
    res = {r.name: r for r in run_steps(_steps(rec, tmp_path, fail_b=True), tmp_path / "run")}
    assert res["b"].status == "failed: b broke"
    assert res["d"].status.startswith("skipped: needs b")
    assert res["a"].ok and res["c"].ok
    assert not (tmp_path / "run" / ".steps" / "b.json").exists()


def test_interrupted_step_leaves_no_marker_and_resumes(tmp_path):
    out = tmp_path / "run"
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt):
        run_steps(_steps(rec, tmp_path, interrupt_c=True), out)
    assert (out / ".steps" / "a.json").is_file() and not (out / ".steps" / "c.json").exists()
    assert not (out / "c.txt").exists()
    rec.calls.clear()
    res = run_steps(_steps(rec, tmp_path), out)
    assert rec.calls == ["c", "d"] and all(r.ok for r in res)
    marker = json.loads((out / ".steps" / "c.json").read_text())
    assert set(marker["outputs"]) == {"c.txt"} and marker["key"]


def test_unavailable_step_is_reported_not_run(tmp_path):
    rec = Recorder()
    step = Step("trt", ["x.engine"], rec.writer("trt", lambda: "x"), available=lambda: "tensorrt not installed")
    (res,) = run_steps([step], tmp_path / "run")
    assert res.status == "unavailable: tensorrt not installed" and rec.calls == []


def test_pipeline_end_to_end_on_tiny_model(tmp_path, monkeypatch):
    """A real (small) run: export, static INT8, prune, an unavailable TensorRT step, the bench;
    then a rerun that is fully cached with identical accuracies."""
    import torch
    from conftest import make_imagefolder, make_tiny_vgg, use_tiny_preset

    from vggc import pipeline

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data", per_class=4)
    weights = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), weights)
    use_tiny_preset(monkeypatch)
    out = tmp_path / "run"
    only = ["onnx_fp32", "int8_ort_static", "prune", "trt_fp16"]
    first = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=only)
    status = {s["name"]: s["status"] for s in first["steps"]}
    assert status["onnx_fp32"] == "ok" and status["int8_ort_static"] == "ok" and status["prune50"] == "ok"
    assert status["trt_fp16"].startswith("unavailable:")  # no TensorRT / CUDA here
    assert status["bench"] == "ok"
    rows = first["rows"]
    models = {r["model"] for r in rows if r["status"] == "ok"}
    assert {"tiny.pt", "tiny.onnx", "tiny_int8_ort_static.onnx", "tiny_pruned50.pt"} <= models
    trt = [r for r in rows if r["model"] == "tiny_fp16.engine"]
    assert trt and trt[0]["status"] == status["trt_fp16"].removeprefix("unavailable: ") and trt[0]["top1"] is None
    assert (out / "bench" / "report.md").is_file() and (out / "pipeline.json").is_file()

    second = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=only)
    assert {s["name"]: s["status"] for s in second["steps"] if s["status"] != "cached"} == {
        "trt_fp16": status["trt_fp16"]}
    acc = lambda rs: {(r["model"], r["backend"]): r["top1"] for r in rs}  # noqa: E731
    assert acc(second["rows"]) == acc(rows)


def _tiny_setup(tmp_path, monkeypatch, **preset):
    import torch
    from conftest import make_imagefolder, make_tiny_vgg, use_tiny_preset

    from vggc import pipeline

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data", per_class=4)
    weights = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), weights)
    use_tiny_preset(monkeypatch, **preset)
    return pipeline, weights, data


def run_tiny_onnx_pipeline(tmp_path, monkeypatch):
    """Run ``vggc pipeline`` on a tiny model (the tiny preset as ``quick``, ``--only onnx_fp32``, one thread,
    ``--max-drop 100``) into ``tmp_path/run``; return ``(result, out dir)``. Torch's thread count is restored."""
    import torch
    from conftest import run_cli

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    monkeypatch.setitem(pipeline.PRESETS, "quick", pipeline.PRESETS["tiny"])
    out = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        res = run_cli("pipeline", weights, "--data", data, "--out", out, "--only", "onnx_fp32", "--threads", 1,
                      "--max-drop", "100")
    finally:
        torch.set_num_threads(before)
    return res, out


def _kill_after_first_epoch(monkeypatch):
    """Make the next fit() raise KeyboardInterrupt once its first epoch's checkpoint is written."""
    import vggc.train

    real_fit, calls = vggc.train.fit, []

    def fit(*args, on_epoch=None, **kw):
        calls.append(kw.get("resume"))

        def boom(rec):
            if len(calls) == 1:
                raise KeyboardInterrupt
            if on_epoch:
                on_epoch(rec)
        return real_fit(*args, on_epoch=boom, **kw)

    monkeypatch.setattr(vggc.train, "fit", fit)
    import vggc.compress.distill  # binds fit at import: patch its name too

    monkeypatch.setattr(vggc.compress.distill, "fit", fit)
    return calls


@pytest.mark.parametrize("step", ["prune", "distill"])
def test_killed_training_step_resumes_from_its_checkpoint(tmp_path, monkeypatch, step):
    """A kill during a fine-tune/distillation leaves no output and no marker; the rerun continues
    from the per-epoch checkpoint (not from scratch) and the step then succeeds."""
    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch, prune_finetune_epochs=2, distill_epochs=2)
    calls = _kill_after_first_epoch(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=[step])
    name = {"prune": "tiny_pruned50.pt", "distill": "tiny_student_mbv2.pt"}[step]
    marker = {"prune": "prune50"}.get(step, step)
    assert not (out / name).exists() and not (out / ".steps" / f"{marker}.json").exists()
    assert any(p.name.startswith(name) and p.name.endswith(".ckpt") for p in out.iterdir())

    second = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=[step])
    assert {s["name"]: s["status"] for s in second["steps"]}[marker] == "ok"
    assert calls == [False, True]  # the second fit resumed
    manifest = json.loads((out / f"{name}.json").read_text())
    history = (manifest["metrics"]["steps"][0]["history"] if step == "prune"
               else manifest["metrics"]["train"]["history"])
    assert [h["epoch"] for h in history] == [1, 2]
    assert not [p for p in out.iterdir() if p.name.endswith((".ckpt", ".state.pt"))]


def test_stale_checkpoint_from_other_settings_is_discarded(tmp_path, monkeypatch):
    """A checkpoint left by a killed run with other settings is not resumed: the step starts over."""
    import vggc.compress.prune as prune_pkg

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch, prune_finetune_epochs=2)
    calls = _kill_after_first_epoch(monkeypatch)
    real_prune_file, tries = prune_pkg.prune_file, []

    def prune_file(*args, resume=False, **kw):
        tries.append(resume)
        return real_prune_file(*args, resume=resume, **kw)

    monkeypatch.setattr(prune_pkg, "prune_file", prune_file)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"])
    _tiny_setup(tmp_path, monkeypatch, prune_finetune_epochs=3)  # the user changed the budget
    res = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"])
    assert {s["name"]: s["status"] for s in res["steps"]}["prune50"] == "ok"
    # the step's key changed with the budget, so the killed attempt's checkpoint is deleted before
    # any resume is tried (its settings file would refuse it too: vggc prune --resume)
    assert tries == [False, False] and calls == [False, False]
    manifest = json.loads((out / "tiny_pruned50.pt.json").read_text())
    assert [h["epoch"] for h in manifest["metrics"]["steps"][0]["history"]] == [1, 2, 3]


def test_sensitivity_preset_adds_a_cached_scan_step_not_benched(tmp_path, monkeypatch):
    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch, prune_strategy="sensitivity", scan_limit=20,
                                          prune_finetune_epochs=0)
    out = tmp_path / "run"
    first = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"])
    status = {s["name"]: s["status"] for s in first["steps"]}
    assert status["prune_scan"] == "ok" and status["prune50"] == "ok"
    assert (out / "prune_scan" / "sensitivity.png").is_file()
    assert not [r for r in first["rows"] if "sensitivity" in r["model"]]
    manifest = json.loads((out / "tiny_pruned50.pt.json").read_text())
    assert manifest["settings"]["prune"]["strategy"] == "sensitivity"
    assert manifest["inputs"]["sensitivity"]["path"].endswith("sensitivity.csv.json")
    second = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["prune"])
    assert {s["name"]: s["status"] for s in second["steps"]}["prune_scan"] == "cached"


def test_claim_out_dir_removes_stale_temps_and_refuses_a_second_writer(tmp_path):
    from vggc.errors import InputError
    from vggc.pipeline.steps import claim_out_dir

    out = tmp_path / "run"
    (out / "bench").mkdir(parents=True)
    (out / ".tmp-model-ab12.onnx").write_text("half an export")  # what a SIGKILL leaves
    (out / "bench" / ".tmp-results-cd34.json").write_text("{")
    (out / "model.onnx").write_text("finished")
    with claim_out_dir(out) as stale:
        assert sorted(p.name for p in stale) == [".tmp-model-ab12.onnx", ".tmp-results-cd34.json"]
        assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [".lock", "model.onnx"]
        with pytest.raises(InputError, match="another vggc pipeline is writing there"):
            with claim_out_dir(out):
                pass
    with claim_out_dir(out) as stale:  # released: the next run gets it
        assert stale == []


def test_pipeline_refuses_an_out_dir_another_run_holds(tmp_path, monkeypatch):
    from vggc.errors import InputError
    from vggc.pipeline.steps import claim_out_dir

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    out = tmp_path / "run"
    with claim_out_dir(out):
        with pytest.raises(InputError, match="another vggc pipeline"):
            pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=["onnx_fp32"])
    assert not (out / ".steps").exists() and not (out / "tiny.onnx").exists()


# ----------------------------------------------------------------------------- key inputs (issue 14)

def _data_steps(rec, data, threads=2):
    """Steps that read the train split, the test split, nothing, and a timing step."""
    from vggc import provenance

    return [
        Step("calib", ["calib.txt"], rec.writer("calib", lambda: "k"), data=data, splits=("train",)),
        Step("parity", ["parity.txt"], rec.writer("parity", lambda: "p"), data=data, splits=("test",)),
        Step("nodata", ["nodata.txt"], rec.writer("nodata", lambda: "n")),
        Step("timed", ["timed.txt"], rec.writer("timed", lambda: "t"), data=data, splits=("test",),
             environment=lambda: provenance.timing_environment(threads)),
    ]


def test_changed_training_image_reruns_only_the_steps_that_read_train(tmp_path):
    from conftest import make_imagefolder

    data = make_imagefolder(tmp_path / "data", per_class=1, classes=2)
    out, rec = tmp_path / "run", Recorder()
    run_steps(_data_steps(rec, data), out)
    rec.calls.clear()
    img = next((data / "train" / "class00").iterdir())
    img.write_bytes(img.read_bytes() + b"\0")  # one training image changed (size and mtime)
    res = {r.name: r for r in run_steps(_data_steps(rec, data), out)}
    assert rec.calls == ["calib"]
    assert res["calib"].why == "rerun (train data changed)"
    assert res["parity"].status == "cached" and res["nodata"].status == "cached"
    marker = json.loads((out / ".steps" / "calib.json").read_text())
    assert set(marker["key_inputs"]["data"]) == {"dir", "train"} and marker["why"] == "rerun (train data changed)"


def test_same_out_on_another_data_directory_reruns_the_data_steps(tmp_path):
    import shutil

    from conftest import make_imagefolder

    data = make_imagefolder(tmp_path / "data", per_class=1, classes=2)
    out, rec = tmp_path / "run", Recorder()
    run_steps(_data_steps(rec, data), out)
    rec.calls.clear()
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    res = {r.name: r for r in run_steps(_data_steps(rec, copy), out)}
    assert rec.calls == ["calib", "parity", "timed"]
    assert res["nodata"].status == "cached"
    assert res["parity"].why == "rerun (data directory changed)"  # same files: same contents
    assert res["calib"].key_inputs["data"]["dir"] == str(copy.resolve())


def test_changed_library_version_reruns_and_names_it(tmp_path, monkeypatch):
    from vggc import provenance

    out, rec = tmp_path / "run", Recorder()
    run_steps(_steps(rec, tmp_path), out)
    rec.calls.clear()
    real = provenance.library_versions()
    monkeypatch.setattr(provenance, "library_versions", lambda names=provenance.LIBRARIES: {**real, "torch": "9.9.9"})
    res = run_steps(_steps(rec, tmp_path), out)
    assert rec.calls == ["a", "b", "c", "d"]
    assert res[0].why == f"rerun (torch {real['torch']} -> 9.9.9)"
    assert res[0].key_inputs["environment"]["libraries"]["torch"] == "9.9.9"


def test_changed_vggc_source_reruns(tmp_path, monkeypatch):
    from vggc import provenance

    out, rec = tmp_path / "run", Recorder()
    run_steps(_steps(rec, tmp_path), out)
    rec.calls.clear()
    monkeypatch.setattr(provenance, "source_digest", lambda: "0" * 64)
    res = run_steps(_steps(rec, tmp_path), out)
    assert rec.calls == ["a", "b", "c", "d"] and res[0].why == "rerun (vggc source changed)"


def test_a_step_continues_only_an_unfinished_attempt_made_under_its_own_key(tmp_path):
    """ctx.resumable: a rerun after a failed (or killed) attempt may continue its work only when
    nothing in the key changed; new training data, --force or a first run start over, and the
    pipeline's _resumable then deletes the work (a checkpoint) instead of loading it."""
    from conftest import make_imagefolder

    from vggc.pipeline.build import _resumable

    data = make_imagefolder(tmp_path / "data", per_class=1, classes=2)
    out, seen, fail = tmp_path / "run", [], [True]

    def train(ctx):
        ckpt = ctx.out_dir / "m.ckpt"
        seen.append((ctx.resumable, ckpt.is_file()))
        resumed = _resumable(lambda resume: {"resumed": resume}, [ckpt], resumable=ctx.resumable)
        ckpt.write_text(ctx.key)  # what a killed attempt leaves
        if fail[0]:
            raise RuntimeError("killed")
        ctx.output().write_text("model")
        return resumed

    steps = lambda **kw: [Step("train", ["m.txt"], train, data=data, splits=("train",), **kw)]  # noqa: E731
    assert run_steps(steps(), out)[0].status.startswith("failed")
    assert seen == [(False, False)]
    assert run_steps(steps(), out)[0].status.startswith("failed")  # same key: may continue
    assert seen[-1] == (True, True)
    img = next((data / "train" / "class00").iterdir())
    img.write_bytes(img.read_bytes() + b"\0")  # the training data changed under the checkpoint
    res = run_steps(steps(), out)[0]
    assert seen[-1] == (False, True) and res.why == "rerun (train data changed)"
    assert run_steps(steps(), out, force=True)[0].status.startswith("failed")
    assert seen[-1] == (False, True)
    fail[0] = False
    res = run_steps(steps(), out)[0]
    assert seen[-1] == (True, True) and res.status == "ok" and res.metrics == {"resumed": True}
    assert run_steps(steps(settings={"lr": 2}), out)[0].metrics == {"resumed": False}  # finished: nothing to continue


def test_other_threads_retimes_only_the_timing_step(tmp_path):
    from conftest import make_imagefolder

    data = make_imagefolder(tmp_path / "data", per_class=1, classes=2)
    out, rec = tmp_path / "run", Recorder()
    run_steps(_data_steps(rec, data, threads=2), out)
    rec.calls.clear()
    res = {r.name: r for r in run_steps(_data_steps(rec, data, threads=1), out)}
    assert rec.calls == ["timed"]
    assert res["timed"].why == "re-timed (threads 2 -> 1)"
    assert res["timed"].key_inputs["environment"]["threads"] == 1
    assert res["timed"].key_inputs["environment"]["cpu_flags"]  # the CPU is part of a timing's key


def test_rerun_after_a_killed_attempt_says_so_and_a_tampered_output_is_named(tmp_path):
    out, rec = tmp_path / "run", Recorder()
    with pytest.raises(KeyboardInterrupt):
        run_steps(_steps(rec, tmp_path, interrupt_c=True), out)
    res = {r.name: r for r in run_steps(_steps(rec, tmp_path), out)}
    assert res["a"].why == "reused: key inputs unchanged"
    assert res["c"].why == "rerun (its previous attempt did not finish)"
    (out / "d.txt").write_text("tampered")
    res = {r.name: r for r in run_steps(_steps(rec, tmp_path), out)}
    assert res["d"].why == "rerun (d.txt was modified since it was written)"
    res = {r.name: r for r in run_steps(_steps(rec, tmp_path, a_setting=5), out)}
    assert res["a"].why == "rerun (x 1 -> 5)"


def test_pipeline_threads_retime_only_the_bench_and_changed_data_reruns_its_steps(tmp_path, monkeypatch):
    """Real tiny run: another --threads re-times the bench and reuses every other step; one changed
    training image reruns the calibration step (not the export, which reads test images); the same
    --out on a copy of the data reruns every data-dependent step; pipeline.json says why."""
    import shutil

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    out, only = tmp_path / "run", ["onnx_fp32", "int8_ort_static"]
    first = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=only, threads=2)
    assert all(s["status"] == "ok" for s in first["steps"]) and first["threads"] == 2
    bench = {s["name"]: s for s in first["steps"]}["bench"]
    assert bench["key_inputs"]["environment"]["threads"] == 2 and set(bench["key_inputs"]["data"]) == {"dir", "test"}
    assert {r["threads"] for r in first["rows"] if r["status"] == "ok"} == {2}

    log: list[str] = []
    second = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=only, threads=1, log=log.append)
    steps = {s["name"]: s for s in second["steps"]}
    assert {n: s["status"] for n, s in steps.items()} == {"source_eval": "cached", "onnx_fp32": "cached",
                                                          "int8_ort_static": "cached", "bench": "ok"}
    assert steps["bench"]["why"] == "re-timed (threads 2 -> 1)" and "-- bench: re-timed (threads 2 -> 1)" in log
    assert {r["threads"] for r in second["rows"] if r["status"] == "ok"} == {1}
    doc = json.loads((out / "pipeline.json").read_text())
    assert doc["threads"] == 1 and {s["name"]: s["why"] for s in doc["steps"]}["bench"] == "re-timed (threads 2 -> 1)"
    assert {s["name"]: s for s in doc["steps"]}["int8_ort_static"]["key_inputs"]["settings"]["reduce_range"] in (
        True, False)

    img = next((data / "train" / "class03").iterdir())
    img.write_bytes(img.read_bytes() + b"\0")  # one training image changed
    third = pipeline.run_pipeline(weights, data, preset="tiny", out_dir=out, only=only, threads=1)
    steps = {s["name"]: s for s in third["steps"]}
    assert steps["onnx_fp32"]["status"] == "cached"
    assert steps["int8_ort_static"]["status"] == "ok" and steps["int8_ort_static"]["why"] == "rerun (train data changed)"

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    fourth = pipeline.run_pipeline(weights, copy, preset="tiny", out_dir=out, only=only, threads=1)
    steps = {s["name"]: s for s in fourth["steps"]}
    assert steps["onnx_fp32"]["status"] == "ok"
    assert steps["onnx_fp32"]["why"] == "rerun (data directory changed)"  # same files: same contents
    assert steps["int8_ort_static"]["status"] == "ok" and steps["bench"]["status"] == "ok"
    assert "data directory changed" in steps["bench"]["why"]


_PIPELINE_SCRIPT = r"""
import sys, time
import vggc.pipeline as pipeline, vggc.train
pipeline.PRESETS["quick"] = pipeline.Preset("quick", parity_limit=None, calib_size=20, prune_target_macs=0.5,
    prune_finetune_epochs=4, prune_limit=None, distill_epochs=1, distill_limit=None, distill_width=0.25,
    eval_limit=None, bench_quick=True, bench_limit=None, bench_batch=8, train_batch=8)
pause = float(sys.argv[1])
real_fit = vggc.train.fit
def fit(*a, on_epoch=None, **kw):  # a pause after each epoch's checkpoint: a window to kill in
    def slow(rec):
        if on_epoch:
            on_epoch(rec)
        time.sleep(pause)
    return real_fit(*a, on_epoch=slow, **kw)
vggc.train.fit = fit
from vggc.cli import main
main(sys.argv[2:])
"""


def test_sigkill_during_training_then_rerun_resumes_to_identical_weights(tmp_path, monkeypatch):
    """`vggc pipeline` in a subprocess is SIGKILLed once the prune fine-tune's first checkpoint
    exists; the rerun resumes from it and ends with the same weights as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    _, weights, data = _tiny_setup(tmp_path, monkeypatch)
    script = tmp_path / "run_pipeline.py"
    script.write_text(_PIPELINE_SCRIPT)
    env = {**os.environ, "VGGC_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}

    def cmd(out, pause):
        return [sys.executable, str(script), str(pause), "pipeline", str(weights), "--data", str(data),
                "--out", str(out), "--only", "prune", "--threads", "1"]

    from vggc.artifacts import TMP_PREFIX

    def checkpoints(out):  # written ones: atomic_path's temporary file keeps the .ckpt suffix while it is written
        return [p for p in out.glob("*.ckpt") if not p.name.startswith(TMP_PREFIX)]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed, 2.0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not checkpoints(killed):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "tiny_pruned50.pt").exists() and not (killed / ".steps" / "prune50.json").exists()
    assert checkpoints(killed)

    rerun = subprocess.run(cmd(killed, 0), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "prune50: rerun (its previous attempt did not finish)" in rerun.stderr
    ft = json.loads((killed / "tiny_pruned50.pt.json").read_text())["metrics"]["steps"][0]
    assert [h["epoch"] for h in ft["history"]] == [1, 2, 3, 4]
    assert ft["resumed_from_epoch"] >= 1  # continued from the checkpoint, not from scratch
    from vggc.pipeline.build import prune_history  # what a time budget's account counts as an earlier run's

    restored = prune_history({"steps": [ft]}, restored=True)
    assert [h["epoch"] for h in restored] == list(range(1, ft["resumed_from_epoch"] + 1))

    clean = tmp_path / "clean"
    ref = subprocess.run(cmd(clean, 0), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    a = torch.load(killed / "tiny_pruned50.pt", weights_only=True)
    b = torch.load(clean / "tiny_pruned50.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_automatic_settings_enter_the_keys_resolved(tmp_path, monkeypatch):
    """reduce_range and training precision are 'auto' in the stages; the steps' keys hold what they
    resolve to on this CPU, so a run on a CPU that resolves them otherwise does not reuse them."""
    import vggc.compress.quantize as quantize
    import vggc.compress.quantize.core as quantize_core
    import vggc.cpu
    from vggc.pipeline import PRESETS, build_steps

    def keyed(vnni: bool, bf16: bool) -> dict:
        monkeypatch.setattr(quantize_core, "has_vnni", lambda: vnni)
        monkeypatch.setattr(vggc.cpu, "has_native_bf16", lambda: bf16)
        return {s.name: s.settings for s in build_steps(tmp_path / "w.pt", tmp_path, PRESETS["quick"])}

    here = keyed(vggc.cpu.has_vnni(), vggc.cpu.has_native_bf16())
    assert here["int8_ort_static"]["reduce_range"] is quantize.resolve_reduce_range(None)
    vnni, avx2 = keyed(True, True), keyed(False, False)
    assert vnni["int8_ort_static"]["reduce_range"] is False and avx2["int8_ort_static"]["reduce_range"] is True
    import torch

    if not torch.cuda.is_available():  # on CUDA training resolves to fp16 whatever the CPU
        assert vnni["prune50"]["train_precision"] == "bf16" and avx2["prune50"]["train_precision"] == "fp32"
        assert vnni["distill"]["train_precision"] == "bf16" and avx2["distill"]["train_precision"] == "fp32"
    steps = {s.name: s for s in build_steps(tmp_path / "w.pt", tmp_path, PRESETS["quick"])}
    # accuracy-aware static INT8 calibrates on train and checks the budget on test images
    assert steps["int8_ort_static"].splits == ("train", "test") and steps["int8_ort_dynamic"].splits == ()
    assert steps["onnx_fp32"].splits == ("test",) and steps["prune50"].splits == ("train", "test")


def test_cli_threads_reach_every_step_and_the_bench(tmp_path, monkeypatch):
    """`vggc pipeline --threads 1`: each step runs with torch at 1 thread and gets threads=1 for the
    ONNX Runtime sessions it opens; the bench rows are timed at 1 thread."""
    import torch
    from conftest import run_cli

    import vggc.export.job

    pipeline, weights, data = _tiny_setup(tmp_path, monkeypatch)
    monkeypatch.setitem(pipeline.PRESETS, "quick", pipeline.PRESETS["tiny"])
    real, seen = vggc.export.job.export_file, []

    def export_file(*a, **kw):
        seen.append((kw.get("threads"), torch.get_num_threads()))
        return real(*a, **kw)

    monkeypatch.setattr(vggc.export.job, "export_file", export_file)
    before = torch.get_num_threads()
    out = tmp_path / "run"
    try:  # the CLI sets torch's thread count for the process
        res = run_cli("pipeline", weights, "--data", data, "--out", out, "--only", "onnx_fp32", "--threads", 1)
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert seen == [(1, 1)]
    rows = json.loads((out / "bench" / "results.json").read_text())
    assert {r["threads"] for r in rows if r["status"] == "ok"} == {1}
    assert json.loads((out / "pipeline.json").read_text())["threads"] == 1
