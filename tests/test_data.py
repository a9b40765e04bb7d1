"""Data layouts, caching, subsets, preprocessing and augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import make_imagefolder

from vggc.data import (
    CIFAR10_MEAN,
    Preprocess,
    augment_batch,
    balanced_indices,
    detect_layout,
    load_split,
    resolve_preprocess,
)
from vggc.errors import DataError, InputError


def _write_cifar_py(root, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_train // 5))}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), b"labels": list(range(10)) * (n_test // 10)}
    (d / "test_batch").write_bytes(pickle.dumps(test))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root, test


def test_cifar_py_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    root, test = _write_cifar_py(tmp_path / "cifar")
    assert detect_layout(root)[0] == "cifar-py"
    split = load_split(root, "test")
    assert split.images.shape == (20, 3, 32, 32) and split.images.dtype == torch.uint8
    assert torch.equal(split.images[3].flatten(), torch.from_numpy(test[b"data"][3]))
    assert split.classes[0] == "c0"
    assert len(load_split(root, "train")) == 50


def test_cifar_py_refuses_foreign_pickles(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    root, _ = _write_cifar_py(tmp_path / "cifar")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_split(root, "test", use_cache=False)


def test_imagefolder_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    root = make_imagefolder(tmp_path / "d", per_class=3)
    a = load_split(root, "train")
    assert len(a) == 30 and a.classes[0] == "class00"
    assert list(torch.bincount(a.labels)) == [3] * 10
    assert any((tmp_path / "cache").iterdir())
    b = load_split(root, "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_missing_and_unsupported_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="neither a CIFAR-10"):
        detect_layout(tmp_path / "junk")


def test_balanced_indices():
    labels = torch.arange(10).repeat_interleave(100)
    idx = balanced_indices(labels, 250, seed=1)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and idx.numel() == 250 and idx.unique().numel() == 250
    assert torch.equal(idx, balanced_indices(labels, 250, seed=1))
    assert not torch.equal(idx, balanced_indices(labels, 250, seed=2))
    for bad in (0, 1001):
        with pytest.raises(InputError, match="between 1 and"):
            balanced_indices(labels, bad)


def test_preprocess_and_resolution():
    imgs = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    p = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=64)
    out = p(imgs)
    assert out.shape == (2, 3, 64, 64) and torch.allclose(out, torch.ones_like(out))
    assert resolve_preprocess({}).mean == CIFAR10_MEAN
    assert resolve_preprocess({"mean": [0.1, 0.2, 0.3], "input_size": 224}).input_size == 224
    assert resolve_preprocess({"mean": [0.1, 0.2, 0.3]}, mean=(0.0, 0.0, 0.0)).mean == (0.0, 0.0, 0.0)
    with pytest.raises(InputError):
        resolve_preprocess({}, input_size=16)


def test_augment_batch_is_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = augment_batch(x, g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    # every output image is a (possibly flipped) shift of its input: the centre 24x24 overlaps
    changed = (y != x).flatten(1).any(1).float().mean()
    assert changed > 0.5
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(y, augment_batch(x, g2))


def test_real_test_split(test_split):
    assert len(test_split) == 10_000
    assert list(torch.bincount(test_split.labels)) == [1000] * 10
    assert test_split.classes[0] == "airplane"


def test_load_split_is_kept_in_memory_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    """A second load_split of the same split lists no file and decodes nothing; an image added (or
    replaced by a rename) is seen at once, one edited in place once split_fingerprint (every
    pipeline run, every step key) has listed the files; a changed python batch file too."""
    import os

    import vggc.data as data_mod
    from vggc.data import clear_split_memo, split_fingerprint

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    clear_split_memo()
    root = make_imagefolder(tmp_path / "d", per_class=2, classes=2)
    listings = []
    real_listing = data_mod._listing_key
    monkeypatch.setattr(data_mod, "_listing_key", lambda *a: listings.append(a) or real_listing(*a))
    a = load_split(root, "train")
    b = load_split(root, "train")
    assert len(listings) == 1 and torch.equal(a.images, b.images) and len(b) == 4
    c0 = root / "train" / "class00"
    (c0 / "0009.png").write_bytes((c0 / "0000.png").read_bytes())  # one image added
    assert len(load_split(root, "train")) == 5 and len(listings) == 2
    from torchvision.io import write_png

    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(c0 / "0000.png"))  # edited in place
    os.utime(c0 / "0000.png", ns=(1, 1))
    split_fingerprint(root, "train")
    after = load_split(root, "train")
    assert int(after.images[0].sum()) == 0 and not torch.equal(after.images[0], a.images[0])

    croot, _ = _write_cifar_py(tmp_path / "cifar", n_test=20)
    first = load_split(croot, "test")
    rng = np.random.default_rng(1)
    batch = {b"data": rng.integers(0, 256, (30, 3072), dtype=np.uint8), b"labels": list(range(10)) * 3}
    (croot / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    second = load_split(croot, "test")
    assert len(first) == 20 and len(second) == 30
    assert torch.equal(second.images[0].flatten(), torch.from_numpy(batch[b"data"][0]))


def test_split_fingerprint_is_content_not_mtime_and_a_restaged_copy_reuses_the_decode_cache(tmp_path, monkeypatch):
    """The same files copied elsewhere with new mtimes (a dataset staged again each session) keep
    the split's fingerprint, so a pipeline resumes across sessions, and are not decoded again; one
    image with different bytes changes it."""
    import os
    import shutil

    import vggc.data as data_mod
    from vggc.data import clear_split_memo, split_fingerprint

    monkeypatch.setenv("VGGC_CACHE", str(tmp_path / "cache"))
    clear_split_memo()
    a = make_imagefolder(tmp_path / "a", per_class=2, classes=2)
    b = tmp_path / "b"
    shutil.copytree(a, b)  # new mtimes
    for f in (b / "test").rglob("*.png"):
        os.utime(f, ns=(10**18, 10**18))
    assert data_mod._listing_key("imagefolder", a, "test") != data_mod._listing_key("imagefolder", b, "test")
    assert split_fingerprint(a, "test") == split_fingerprint(b, "test")
    decodes = []
    real_decode = data_mod._decode_images
    monkeypatch.setattr(data_mod, "_decode_images", lambda *x: decodes.append(1) or real_decode(*x))
    first = load_split(a, "test")
    second = load_split(b, "test")
    assert len(decodes) == 1 and torch.equal(first.images, second.images)
    from torchvision.io import write_png

    write_png(torch.full((3, 32, 32), 7, dtype=torch.uint8), str(b / "test" / "class01" / "0001.png"))
    assert split_fingerprint(a, "test") != split_fingerprint(b, "test")
    assert int(load_split(b, "test").images[-1].float().mean()) == 7 and len(decodes) == 2
