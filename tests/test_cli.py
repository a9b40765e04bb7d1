"""The command line: help, info/eval contracts, train, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from click.testing import CliRunner
from conftest import assert_one_line_error, make_tiny_vgg

from vggc.cli import COMMANDS, main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_command_and_explains_options():
    import click

    res = run("--help")
    assert res.exit_code == 0
    for name in COMMANDS.values():
        assert name in res.output
        assert run(name, "--help").exit_code == 0, name
        cmd = main.get_command(None, name)
        assert cmd.help, f"{name} has no description"
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name not in ("help",):
                assert p.help, f"vggc {name}: option {p.opts[0]} has no help text"


def test_info_json_on_reference(ref_weights):
    res = run("info", ref_weights, "--json")
    doc = json.loads(res.output)
    assert abs(doc["params"] - 15.25e6) < 0.1e6
    assert abs(doc["macs"] - 314e6) / 314e6 < 0.02
    assert doc["config"]["widths"][:3] == [64, 64, "M"] and doc["config"]["batch_norm"] is True
    assert [r["out"] for r in doc["layers"] if r["type"] == "conv"][-1] == 512


def test_eval_json_subset(ref_weights, cifar_dir):
    res = run("eval", ref_weights, "--data", cifar_dir, "--limit", 500, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["n"] == 500 and 0.8 < doc["top1"] <= 1.0
    assert set(doc["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"}


@pytest.mark.slow
def test_eval_full_test_set_matches_sidecar(ref_weights, cifar_dir):
    """Acceptance: top-1 within 0.1 pt of test_acc_fp32 on all 10,000 test images."""
    expected = json.loads(ref_weights.with_suffix(".json").read_text())["test_acc_fp32"]
    res = run("eval", ref_weights, "--data", cifar_dir, "--json")
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["n"] == 10_000
    assert abs(doc["top1"] - expected) <= 0.001


def test_torchvision_vgg16_evaluates_at_32_and_224(tmp_path, cifar_dir):
    torch.manual_seed(0)
    w = tmp_path / "tv_vgg16.pt"
    torch.save(torchvision.models.vgg16(num_classes=10).state_dict(), w)
    for size in (32, 224):
        res = run("eval", w, "--data", cifar_dir, "--limit", 10, "--batch-size", 5, "--input-size", size, "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output[res.output.index("{"):])
        assert doc["n"] == 10 and doc["input_size"] == size


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_data):
    resnet = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), resnet)
    assert_one_line_error(run("info", resnet), 2, "looks like a ResNet")

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_one_line_error(run("info", empty), 2, "empty")

    good = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:1000])
    assert_one_line_error(run("info", trunc), 2, "truncated")

    pickled = tmp_path / "pickled.pt"
    torch.save(make_tiny_vgg(), pickled)
    assert_one_line_error(run("info", pickled), 2, "torch.save(model.state_dict(), path)")

    assert_one_line_error(run("eval", good, "--data", tmp_path / "missing"), 2, "does not exist")
    (tmp_path / "junk").mkdir()
    assert_one_line_error(run("eval", good, "--data", tmp_path / "junk"), 2, "neither a CIFAR-10")

    res = run("eval", good)  # missing --data is a usage error
    assert res.exit_code == 2 and "--data" in res.output


def test_train_then_eval_on_tiny_data(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "base.pt"
    res = run("train", "--data", tiny_data, "--out", out, "--epochs", 1, "--batch-size", 20, "--precision", "fp32")
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "base.pt.json").read_text())
    assert man["settings"]["train"]["seed"] == 0 and man["metrics"]["n"] == 60
    assert man["sha256"] and not (tmp_path / "base.pt.ckpt").exists()
    res = run("eval", out, "--data", tiny_data, "--json")
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["n"] == 60 and abs(doc["top1"] - man["metrics"]["top1"]) < 1e-9


def test_console_script_exit_code(tmp_path):
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    p = subprocess.run([sys.executable, "-c", "from vggc.cli import main; main()", "info", str(empty)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "Traceback" not in p.stderr


def test_nan_weights_are_one_line_errors_in_every_command(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    sd = make_tiny_vgg().state_dict()
    sd["features.4.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(sd, bad)
    msg = "tensor features.4.weight holds 1 NaN value"
    assert_one_line_error(run("info", bad), 2, msg)
    assert_one_line_error(run("eval", bad, "--data", tiny_data), 2, msg)
    assert_one_line_error(run("export", bad, "--no-parity", "--out", tmp_path / "m.onnx"), 2, msg)
    assert_one_line_error(run("quantize", bad, "--mode", "dynamic", "--backend", "onnxruntime", "--data", tiny_data,
                              "--out", tmp_path / "q.onnx"), 2, msg)
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_corrupt_manifest_is_one_line_error_in_eval_bench_and_quantize(tmp_path, tiny_data, monkeypatch, kind):
    """A manifest `<file>.json` that exists but does not parse is refused the same way everywhere,
    for a state_dict and for an ONNX file (never evaluated with default normalisation)."""
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), weights)
    model = weights
    if kind == "onnx":
        model = tmp_path / "tiny.onnx"
        res = run("export", weights, "--no-parity", "--out", model)
        assert res.exit_code == 0, res.output
    manifest = model.with_name(model.name + ".json")
    manifest.write_text('{"preprocess": {"mean": [0.5, 0.5')  # truncated JSON
    msg = manifest.name
    assert_one_line_error(run("eval", model, "--data", tiny_data), 2, msg)
    assert_one_line_error(run("bench", model, "--data", tiny_data, "--out", tmp_path / "b"), 2, msg)
    if kind == "pt":  # quantize reads a state_dict
        assert_one_line_error(run("quantize", model, "--mode", "dynamic", "--backend", "onnxruntime",
                                  "--data", tiny_data, "--out", tmp_path / "q.onnx"), 2, msg)
        assert not (tmp_path / "q.onnx").exists()
    assert not (tmp_path / "b" / "results.json").exists()
