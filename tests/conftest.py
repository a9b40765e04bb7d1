"""Shared fixtures. Tests that need ../shared skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VGGC_SHARED", ROOT.parent / "shared"))
REF_WEIGHTS = SHARED / "models" / "vgg16_bn_cifar10.pt"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def ref_weights() -> Path:
    """The shared trained VGG16-BN state_dict (skips when ../shared is absent)."""
    if not REF_WEIGHTS.is_file():
        pytest.skip(f"reference model not found at {REF_WEIGHTS}")
    return REF_WEIGHTS


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The shared CIFAR-10 ImageFolder tree (skips when ../shared is absent)."""
    if not (CIFAR_JPEG / "test").is_dir():
        pytest.skip(f"CIFAR-10 data not found at {CIFAR_JPEG}")
    return CIFAR_JPEG


@pytest.fixture(scope="session")
def test_split(cifar_dir):
    """The full real test split (10,000 images) as a :class:`vggc.data.Split`."""
    from vggc.data import load_split

    return load_split(cifar_dir, "test")


def make_tiny_vgg(num_classes: int = 10, batch_norm: bool = True, seed: int = 0,
                  widths=(8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"),
                  classifier=(32, 32, 32)):
    """Return a small randomly initialised VGG (same layout family as VGG16) in eval mode."""
    from vggc.models import VGGConfig, build_vgg

    torch.manual_seed(seed)
    cfg = VGGConfig(widths=list(widths), batch_norm=batch_norm,
                    classifier=[*classifier, num_classes][: len(classifier) + 1],
                    classifier_indices=[0, 3, 6][: len(classifier)], pool_size=1)
    model = build_vgg(cfg).eval()
    if batch_norm:  # non-trivial BN statistics so folding/export bugs show up
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def tiny_vgg():
    return make_tiny_vgg()


def make_imagefolder(root: Path, per_class: int = 6, classes: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random ImageFolder (train/ and test/, PNG) under ``root``; return ``root``."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
                img[c % 3] = img[c % 3] // 4 + 40 * (c % 5)  # a weak class signal
                write_png(img, str(d / f"{i:04d}.png"))
    return root


def make_tiny_quant_setup(d: Path) -> dict:
    """A tiny VGG with O(1) logits (its last layer scaled x100, so INT8 has real work), its
    state_dict at ``d/tiny.pt`` and a tiny ImageFolder (8 images/class/split); returns
    ``{"dir", "model", "weights", "data"}``."""
    from vggc.artifacts import save_state_dict

    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(100.0)
    weights = d / "tiny.pt"
    save_state_dict(model.state_dict(), weights)
    return {"dir": d, "model": model, "weights": weights, "data": make_imagefolder(d / "data", per_class=8)}


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A tiny random ImageFolder dataset (6 images per class per split)."""
    return make_imagefolder(tmp_path / "data")


def run_cli(*args, catch_exceptions: bool = True):
    """Invoke the ``vggc`` CLI in-process with ``args`` (stringified); return Click's result."""
    from click.testing import CliRunner

    from vggc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch_exceptions)


def assert_one_line_error(res, code, pattern):
    """Assert a CLI result failed with exit ``code`` and exactly one ``error:`` line containing
    ``pattern``, and no traceback."""
    assert res.exit_code == code, res.output
    out = res.output.strip()
    assert "Traceback" not in out
    errs = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and pattern in errs[0], out


def _flat_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` 32x32 uint8 images, each one random colour plus a little noise."""
    base = torch.rand(n, 3, 1, 1, generator=g) * 200 + 20
    return (base + 10 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 255).round().to(torch.uint8)


def make_tiny_student(d: Path, n: int = 40, seed: int = 0) -> dict:
    """A tiny random-init CIFAR MobileNetV2 (width 0.25) that INT8 can reproduce, its state_dict at
    ``d/student.pt`` and an ImageFolder of ``n`` train and ``n`` test images labelled by the model's
    own FP32 predictions (its FP32 top-1 is 1.0, so an INT8 file's top-1 is its agreement with FP32);
    returns ``{"dir", "model", "weights", "data"}``.

    A random deep network amplifies small input changes (INT8 rounding too), so: the images are flat
    colours; BatchNorm statistics are those of the training images and every BN before a ReLU6 is
    shifted into its linear range (bias 3), so the network is close to affine in the colour; the
    head reads the 3 directions in which the pooled features vary most; the test images are the
    ``n`` of ``5 n`` candidates with the widest FP32 top-2 margin."""
    from torchvision.io import write_png
    from torchvision.ops.misc import Conv2dNormActivation

    from vggc.artifacts import save_state_dict
    from vggc.data import resolve_preprocess
    from vggc.models import mobilenet_v2_cifar

    g = torch.Generator().manual_seed(seed)
    pre = resolve_preprocess()
    train, pool = _flat_images(n, g), _flat_images(5 * n, g)
    torch.manual_seed(seed)
    model = mobilenet_v2_cifar(0.25)
    before_relu = {id(m[1]) for m in model.modules() if isinstance(m, Conv2dNormActivation)}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # one forward pass: the statistics of the training images
            m.bias.data.fill_(3.0 if id(m) in before_relu else 0.0)
    model.train()
    with torch.no_grad():
        model(pre(train))
    model.eval()
    with torch.no_grad():
        f = torch.flatten(model.avgpool(model.features(pre(train))), 1)
        fc = f - f.mean(0)
        w = torch.randn(10, 3, generator=g) @ torch.linalg.svd(fc, full_matrices=False).Vh[:3]
        w *= 3 / (fc @ w.T).std()
        model.classifier[1].weight.copy_(w)
        model.classifier[1].bias.copy_(-w @ f.mean(0))
        logits, train_labels = model(pre(pool)), model(pre(train)).argmax(1)
    top2 = logits.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]).topk(n).indices.sort().values
    for split, imgs, labels in (("train", train, train_labels), ("test", pool[keep], logits.argmax(1)[keep])):
        for c in range(10):
            (d / "data" / split / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(imgs, labels.tolist())):
            write_png(img, str(d / "data" / split / f"class{y:02d}" / f"{i:04d}.png"))
    weights = d / "student.pt"
    save_state_dict(model.state_dict(), weights)
    return {"dir": d, "model": model, "weights": weights, "data": d / "data"}


def load_script(name: str):
    """Import ``scripts/<name>.py`` (not a package) as a module; return it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY_PRESET = dict(parity_limit=None, calib_size=20, prune_target_macs=0.5, prune_finetune_epochs=1, prune_limit=None,
                   distill_epochs=1, distill_limit=None, distill_width=0.25, eval_limit=None, bench_quick=True,
                   bench_limit=None, bench_batch=8, train_batch=8)


def use_tiny_preset(monkeypatch, **overrides):
    """Register the pipeline preset ``"tiny"`` (:data:`TINY_PRESET`, ``overrides`` replacing fields) for
    this test and return it. Its bench times each row for its minimum calls per round only, with no
    minimum seconds: these tests check rows, keys and files, never speed (speed lives in `vggc bench`)."""
    from vggc import pipeline
    from vggc.bench import timed

    preset = pipeline.Preset("tiny", **{**TINY_PRESET, **overrides})
    monkeypatch.setitem(pipeline.PRESETS, "tiny", preset)
    monkeypatch.setattr(timed, "ROUND_TASK", {"batch": (2, 0.0), "b1": (3, 0.0)})
    return preset
