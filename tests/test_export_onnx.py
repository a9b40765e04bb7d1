"""ONNX export: dynamic batch, self-contained file, FP16 with FP32 I/O, parity gate, ORT backend, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_vgg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vggc import runtime  # noqa: E402
from vggc.data import Preprocess, Split  # noqa: E402
from vggc.errors import InputError, ModelFormatError, VggcError  # noqa: E402
from vggc.export.onnx import export_onnx, export_with_parity  # noqa: E402


def _tiny_model(scale: float = 100.0):
    """A tiny VGG whose logits are O(1) (the default init gives ~1e-4, too small to test FP16)."""
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(scale)
    return model


def _run(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


def _leftovers(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    model = _tiny_model()
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    pre = Preprocess(input_size=32)
    export_onnx(model, out, input_size=32, preprocess=pre)
    return model, out


def test_fp32_export_dynamic_batch_matches_torch(tiny_onnx):
    model, out = tiny_onnx
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert proto.opset_import[0].version == 18
    # one self-contained file: no external data, nothing beside it
    assert all(init.data_location == 0 for init in proto.graph.initializer)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]
    g = torch.Generator().manual_seed(1)
    for n in (1, 256):  # an example batch of 1 would have baked the batch in; both must run
        x = torch.randn(n, 3, 32, 32, generator=g)
        got = _run(out, x)
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (n, 10)
        assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_ort_backend_describes_and_runs(tiny_onnx):
    from vggc.models import count_macs

    model, out = tiny_onnx
    mf = runtime.describe(out)
    assert mf.format == "onnx"
    assert mf.meta["precision"] == "fp32"
    n_weights = sum(int(np.prod(i.dims)) for i in onnx.load(str(out)).graph.initializer if i.data_type == 1)
    assert mf.params == n_weights > 0
    assert mf.macs == count_macs(model, 32)  # from shape inference: no manifest beside this file
    assert mf.preprocess.input_size == 32
    assert mf.size_bytes == out.stat().st_size

    keys = {b.key for b in runtime.backends_for("onnx")}
    assert {"onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"} <= keys
    be = runtime.get_backend("onnxruntime-cpu")
    assert runtime.effective_precision(be, mf) == "fp32"
    assert runtime.default_backend("onnx").key == "onnxruntime-cpu"
    runner = runtime.open_model(mf, be)
    x = torch.randn(3, 3, 32, 32)
    got = runner.predict(x)
    assert got.dtype == torch.float32 and got.shape == (3, 10)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=1e-4, rtol=1e-4)
    assert runner.compile_seconds >= 0
    runner.close()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = runtime.get_backend("onnxruntime-cuda").available()
        assert reason and "onnxruntime-gpu not installed" in reason


def test_fp16_via_cli_keeps_float32_io(tmp_path):
    from vggc.artifacts import save_state_dict
    from vggc.cli import main

    model = _tiny_model()
    weights = tmp_path / "tiny.pt"
    save_state_dict(model.state_dict(), weights)
    out = tmp_path / "tiny-fp16.onnx"
    res = CliRunner().invoke(main, ["export", str(weights), "--fp16", "--no-parity", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["precision"] == "fp16" and facts["parity"] is None

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)

    x = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = _run(out, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.dtype == np.float32 and got.shape == (256, 10)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 2e-2 * scale
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert _run(out, x[:1]).shape == (1, 10)

    manifest = json.loads((tmp_path / "tiny-fp16.onnx.json").read_text())
    assert manifest["kind"] == "onnx" and manifest["precision"] == "fp16"
    assert manifest["inputs"]["source"]["path"] == str(weights)
    mf = runtime.describe(out)
    assert mf.meta["precision"] == "fp16" and mf.macs == manifest["macs"]
    assert runtime.effective_precision(runtime.get_backend("onnxruntime-cpu"), mf) == "fp16"


def test_bad_opset_is_one_line_input_error(tmp_path, tiny_vgg):
    out = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="opset 11: unsupported") as exc:
        export_onnx(tiny_vgg, out, opset=11)
    assert "\n" not in str(exc.value)
    assert not out.exists() and not _leftovers(tmp_path)

    from vggc.cli import main

    res = CliRunner().invoke(main, ["export", "x.pt", "--opset", "99", "--no-parity", "--out", str(out)])
    assert res.exit_code == 2 and "--opset 99: unsupported" in res.output
    res = CliRunner().invoke(main, ["export", "x.pt", "--out", str(out)], env={"VGGC_DATA": ""})
    assert res.exit_code == 2 and "x.pt" in res.output  # no --data is fine now; the missing file is not


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    import vggc.export.onnx as onnx_export

    def bad_parity(*a, **k):
        return {"kind": "real", "n": 20, "max_abs_logit_diff": 3.0, "mean_abs_logit_diff": 1.0, "top1_agreement": 0.5,
                "agreements": 10, "torch_top1": 0.5, "onnx_top1": 0.4}

    monkeypatch.setattr(onnx_export, "check_parity", bad_parity)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.arange(20) % 10, tuple(str(i) for i in range(10)))
    out = tmp_path / "m.onnx"
    with pytest.raises(VggcError, match="parity too low: top-1 agreement 50.00% < 99.90% on 20 real images"):
        export_with_parity(_tiny_model(), out, preprocess=Preprocess(), split=split)
    assert not out.exists() and not (tmp_path / "m.onnx.json").exists()
    assert not _leftovers(tmp_path)


def test_unreadable_onnx_is_model_format_error(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x08\x07not really a protobuf" * 10)
    with pytest.raises(ModelFormatError, match="junk.onnx"):
        runtime.describe(bad)


def test_cli_export_reference_model_parity(ref_weights, cifar_dir, tmp_path):
    from vggc.cli import main

    out = tmp_path / "vgg16.onnx"
    res = CliRunner().invoke(main, ["export", str(ref_weights), "--format", "onnx", "--out", str(out),
                                    "--data", str(cifar_dir), "--parity-limit", "1000", "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    p = facts["parity"]
    assert p["n"] == 1000
    assert p["top1_agreement"] >= 0.999
    assert p["max_abs_logit_diff"] < 1e-3
    assert abs(p["onnx_top1"] - p["torch_top1"]) <= 0.001
    assert 0.85 < p["torch_top1"] < 0.93
    manifest = json.loads((tmp_path / "vgg16.onnx.json").read_text())
    assert manifest["metrics"]["parity"]["top1_agreement"] == p["top1_agreement"]
    assert manifest["arch"] == "vgg16_bn" and manifest["precision"] == "fp32"
    mf = runtime.describe(out)
    sidecar = json.loads(ref_weights.with_suffix(".json").read_text())
    assert mf.preprocess.mean == pytest.approx(tuple(sidecar["mean"]))
    assert mf.arch == "vgg16_bn" and mf.macs == facts["macs"]
    assert sorted(os.listdir(tmp_path)) == ["vgg16.onnx", "vgg16.onnx.json"]


def test_torchvision_vgg16_layout_exports(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=10).eval()  # no BN, 25088-4096-4096-10 head
    out = tmp_path / "tv.onnx"
    export_onnx(model, out, input_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tv.onnx"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = _run(out, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (2, 10)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert runtime.describe(out).macs == pytest.approx(432_775_168)


# ----------------------------------------------------------------------------- parity without --data

def test_export_without_data_checks_parity_on_synthetic_images(tmp_path):
    from vggc.cli import main

    weights, out = tmp_path / "tiny.pt", tmp_path / "m.onnx"
    torch.save(_tiny_model().state_dict(), weights)
    res = CliRunner().invoke(main, ["export", str(weights), "--format", "onnx", "--out", str(out)],
                             env={"VGGC_DATA": ""})
    assert res.exit_code == 0, res.output
    assert "on 512 synthetic images (fixed seed 0)" in res.output
    assert "real images (--data DIR) give the stronger check" in res.output
    assert "PyTorch top-1" not in res.output  # random images have no labels
    manifest = json.loads((tmp_path / "m.onnx.json").read_text())
    p = manifest["parity"]
    assert p["kind"] == "synthetic" and p["n"] == 512 and p["torch_top1"] is None
    assert p["top1_agreement"] >= 0.999 and p["max_abs_logit_diff"] < 1e-3
    assert manifest["settings"]["parity_kind"] == "synthetic"

    out16 = tmp_path / "m16.onnx"
    res = CliRunner().invoke(main, ["export", str(weights), "--fp16", "--parity-limit", "64", "--out", str(out16),
                                    "--json"], env={"VGGC_DATA": ""})
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)["parity"]
    assert p["kind"] == "synthetic" and p["n"] == 64 and p["min_agreement"] == 0.995


def test_export_with_data_checks_real_images(tmp_path, tiny_data, monkeypatch):
    from vggc.cli import main

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    weights, out = tmp_path / "tiny.pt", tmp_path / "m.onnx"
    torch.save(_tiny_model().state_dict(), weights)
    res = CliRunner().invoke(main, ["export", str(weights), "--data", str(tiny_data), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)["parity"]
    assert p["kind"] == "real" and p["n"] == 60 and p["torch_top1"] is not None
    res = CliRunner().invoke(main, ["export", str(weights), "--no-parity", "--out", str(tmp_path / "n.onnx")],
                             env={"VGGC_DATA": ""})
    assert res.exit_code == 0 and "parity check skipped (--no-parity)" in res.output


def test_synthetic_split_is_fixed_seed_at_the_input_size():
    from vggc.export.onnx import synthetic_split

    a, b = synthetic_split(10, 64, seed=3), synthetic_split(10, 64, seed=3)
    assert a.images.shape == (10, 3, 64, 64) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, synthetic_split(10, 64, seed=4).images)
    assert a.name == "synthetic" and (a.labels == -1).all()


def test_synthetic_parity_below_the_bar_is_refused(tmp_path, monkeypatch):
    """An ONNX file whose predictions disagree with PyTorch is refused on synthetic images too."""
    from vggc.export.onnx import synthetic_split
    from vggc.export.ort_backend import OrtRunner

    real_predict = OrtRunner.predict

    def broken(self, x):  # the exported graph's output with the classes rotated: wrong predictions
        return real_predict(self, x).roll(1, dims=1)

    monkeypatch.setattr(OrtRunner, "predict", broken)
    out = tmp_path / "m.onnx"
    with pytest.raises(VggcError, match=r"parity too low: .* on 64 synthetic images"):
        export_with_parity(_tiny_model(), out, preprocess=Preprocess(), split=synthetic_split(64, 32))
    assert not out.exists() and not (tmp_path / "m.onnx.json").exists() and not _leftovers(tmp_path)
