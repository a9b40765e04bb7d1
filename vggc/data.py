"""CIFAR-10 data: find the layout, decode once into a uint8 cache, batch with preprocessing.

Supported layouts of ``--data DIR``:

* ``cifar-py``: torchvision's ``cifar-10-batches-py`` (``DIR`` itself or ``DIR/cifar-10-batches-py``),
  read with a restricted unpickler that only rebuilds numpy arrays;
* ``imagefolder``: ``DIR/{train,test}/<class>/*.{jpg,jpeg,png}`` (class index = sorted order).

A split is decoded once into ``uint8 (N, 3, 32, 32)`` plus labels and cached under
``$VGGC_CACHE`` (default ``~/.cache/vggc``), keyed by the files' names and contents (found through
their listing: names, sizes, mtimes), so later runs load in a fraction of a second. All
preprocessing works on whole batches of tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vggc.artifacts import atomic_path
from vggc.errors import DataError, InputError
from vggc.progress import Progress, no_progress

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SPLITS = ("train", "test")
CACHE_VERSION = 1


@dataclass
class Split:
    """One split in memory: ``images`` uint8 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, indices: torch.Tensor) -> "Split":
        """Return the rows at ``indices`` as a new split."""
        return Split(self.images[indices], self.labels[indices], self.classes, self.name)


# ----------------------------------------------------------------------------- layout detection

def detect_layout(root: str | os.PathLike) -> tuple[str, Path]:
    """Return ``(kind, path)`` with kind ``"cifar-py"`` or ``"imagefolder"``.

    Raises :class:`DataError` for a missing directory or one with neither layout.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data directory does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is not a directory")
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return "cifar-py", cand
    if all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in SPLITS):
        return "imagefolder", root
    raise DataError(f"{root}: neither a CIFAR-10 python-batches directory (cifar-10-batches-py) "
                    "nor an ImageFolder tree with train/<class>/ and test/<class>/")


def download_cifar10(root: str | os.PathLike) -> Path:
    """Download CIFAR-10 through torchvision into ``root`` (needs internet); return the batch dir."""
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    return Path(root) / "cifar-10-batches-py"


# ----------------------------------------------------------------------------- cifar-py reading

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtins, and refuses everything else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise DataError(f"{path}: unreadable CIFAR batch ({err})") from None
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    return data, labels


def _load_cifar_py(path: Path, split: str) -> Split:
    files = [path / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [path / "test_batch"]
    files = [f for f in files if f.is_file()]
    parts = [_read_cifar_batch(f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    classes = CIFAR10_CLASSES
    meta = path / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                m = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            names = m.get(b"label_names") or m.get("label_names")
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        except Exception:  # noqa: BLE001 - class names are cosmetic; keep CIFAR-10's
            pass
    return Split(images.contiguous(), labels, classes, split)


# ----------------------------------------------------------------------------- imagefolder

def _list_imagefolder(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    base = root / split
    if not base.is_dir():
        raise DataError(f"{base}: missing split directory")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    items = []
    for ci, c in enumerate(classes):
        for entry in sorted(os.scandir(base / c), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                items.append((Path(entry.path), ci))
    if not items:
        raise DataError(f"{base}: no .jpg/.jpeg/.png images in its class folders")
    return classes, items


def _decode_images(items: Sequence[tuple[Path, int]], progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image

    images = None
    labels = torch.empty(len(items), dtype=torch.int64)
    for n, (path, label) in enumerate(progress(items, total=len(items), desc="decode")):
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            img = decode_image(data, mode=ImageReadMode.RGB)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a data error
            raise DataError(f"{path}: cannot decode image ({err})") from None
        if images is None:
            images = torch.empty((len(items), *img.shape), dtype=torch.uint8)
        if img.shape != images.shape[1:]:
            raise DataError(f"{path}: image is {tuple(img.shape[1:])}, others are {tuple(images.shape[2:])}")
        images[n] = img
        labels[n] = label
    return images, labels


# ----------------------------------------------------------------------------- cache + public API

def cache_dir() -> Path:
    """Return the decode cache directory (``$VGGC_CACHE`` or ``~/.cache/vggc``)."""
    return Path(os.environ.get("VGGC_CACHE", Path.home() / ".cache" / "vggc"))


def _listing_key(kind: str, path: Path, split: str) -> str:
    """Return a digest of one split's listing: its resolved path and every file's name, size and
    mtime (one stat each, no read)."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{path.resolve()}|{split}".encode())
    for name, f in _split_files(kind, path, split):
        st = f.stat()
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _split_files(kind: str, path: Path, split: str) -> Iterator[tuple[str, Path]]:
    """Yield ``(name relative to the split, path)`` of every file of one split (an ImageFolder's
    class folders, or the python batches' folder), sorted: what its listing and content keys cover."""
    if kind == "imagefolder":
        base = path / split
        for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
            for e in sorted(os.scandir(cdir), key=lambda e: e.name):
                if e.is_file():
                    yield f"{cdir.name}/{e.name}", Path(e.path)
    else:
        for f in sorted(path.iterdir()):
            if f.is_file():
                yield f.name, f


# listing key -> content key, for this process (the disk keeps them under the decode cache too)
_CONTENT: dict[str, str] = {}


def _content_key(kind: str, path: Path, split: str, listing: str) -> str:
    """Return a digest of what one split holds: every file's name (relative to the split) and bytes.

    Unlike the listing key it does not change when the same files are copied elsewhere or staged
    again with new mtimes. Hashing the 50,000 training images reads ~46 MB (~5 s), so the result is
    remembered per listing key, in memory and in ``cache_dir()/content-<listing>.json``."""
    if listing in _CONTENT:
        return _CONTENT[listing]
    memo = cache_dir() / f"content-{listing}.json"
    try:
        key = json.loads(memo.read_text())["content"]
    except (OSError, ValueError, KeyError, TypeError):
        h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{split}".encode())
        for name, f in _split_files(kind, path, split):
            h.update(f"{name}|{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
        key = h.hexdigest()[:24]
        try:
            with atomic_path(memo) as tmp:
                tmp.write_text(json.dumps({"content": key, "split": split}))
        except OSError:
            pass  # a read-only cache directory only costs time
    _CONTENT[listing] = key
    return key


def split_fingerprint(root: str | os.PathLike, split: str) -> str:
    """Return a fingerprint of one split's contents as it would be read now: every file's name and
    bytes (:func:`_content_key`), independent of where the split lies and of its files' mtimes, so a
    dataset staged again (a new machine, a new session) keeps every step's key. A changed, added or
    removed image changes it (and drops a :func:`load_split` memo of the split it contradicts)."""
    kind, path = detect_layout(Path(root))
    listing = _listing_key(kind, path, split)
    memo_key = (kind, str(path.resolve()), split)
    if memo_key in _MEMO and _MEMO[memo_key][1] != listing:
        del _MEMO[memo_key]
    return _content_key(kind, path, split, listing)


# In-process memo of decoded splits: (kind, resolved path, split) -> (directory signature, listing key, Split).
# Listing every file (one stat each: ~2 s for the 50,000 training images) and loading the decode cache
# (~0.5 s) on every call is what it saves; a few splits at most are kept (the newest).
_MEMO: dict[tuple[str, str, str], tuple[tuple, str, Split]] = {}
_MEMO_SIZE = 4


def _dir_signature(kind: str, path: Path, split: str) -> tuple:
    """Return what :func:`load_split`'s memo is checked against without a stat per image: for an
    ImageFolder each class directory's (name, mtime_ns, inode) and its sorted file names (an image
    added, removed or replaced by a rename changes it), for python batches each batch file's (name,
    size, mtime_ns, inode). Editing an image in place is seen by the next :func:`split_fingerprint`
    (every pipeline run and step key lists every file), which drops the memo."""
    out = []
    if kind == "imagefolder":
        base = path / split
        for cdir in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name):
            st = cdir.stat()
            names = hashlib.sha256("\n".join(sorted(os.listdir(cdir))).encode()).hexdigest()
            out.append((cdir.name, st.st_mtime_ns, st.st_ino, names))
    else:
        for f in sorted(path.iterdir()):
            st = f.stat()
            out.append((f.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def clear_split_memo() -> None:
    """Forget every split :func:`load_split` keeps in memory (the next call reads the files again)."""
    _MEMO.clear()


def load_split(root: str | os.PathLike, split: str = "test", *, download: bool = False,
               use_cache: bool = True, progress: Progress = no_progress) -> Split:
    """Return one split of CIFAR-10 (``"train"`` or ``"test"``) as uint8 tensors.

    ``download=True`` fetches CIFAR-10 through torchvision into ``root`` first (internet needed).
    Decoded splits are cached on disk, keyed by every file's name and bytes (:func:`_content_key`).
    With ``use_cache`` a split is also kept in memory for the next call, checked against its
    directories (:func:`_dir_signature`) rather than a stat of every image; the tensors are shared,
    so a caller must not modify them in place.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    if download:
        try:
            detect_layout(root)
        except DataError:
            download_cifar10(root)
    kind, path = detect_layout(root)
    memo_key = (kind, str(path.resolve()), split)
    signature = _dir_signature(kind, path, split) if use_cache else None
    hit = _MEMO.get(memo_key) if use_cache else None
    if hit is not None and hit[0] == signature:
        _MEMO[memo_key] = _MEMO.pop(memo_key)  # the newest
        return _shared(hit[2])
    data = _load_split_files(kind, path, split, use_cache, progress)
    if use_cache:
        _MEMO.pop(memo_key, None)
        _MEMO[memo_key] = (signature, data.name_key, data.split)
        while len(_MEMO) > _MEMO_SIZE:
            del _MEMO[next(iter(_MEMO))]
    return _shared(data.split)


def _shared(split: Split) -> Split:
    """A new :class:`Split` on the memo's tensors (callers never modify images in place)."""
    return Split(split.images, split.labels, split.classes, split.name)


@dataclass
class _Loaded:
    split: Split
    name_key: str  # the listing key it was read under


def _load_split_files(kind: str, path: Path, split: str, use_cache: bool, progress: Progress) -> _Loaded:
    """Read one split from the decode cache, else decode it from its files (and cache it)."""
    key = _listing_key(kind, path, split)
    cfile = cache_dir() / f"{split}-{_content_key(kind, path, split, key)}.pt" if use_cache else None
    if use_cache and cfile.is_file():
        try:
            blob = torch.load(cfile, weights_only=True)
            return _Loaded(Split(blob["images"], blob["labels"], tuple(json.loads(blob["classes"])), split), key)
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt
            pass
    if kind == "cifar-py":
        data = _load_cifar_py(path, split)
    else:
        classes, items = _list_imagefolder(path, split)
        images, labels = _decode_images(items, progress)
        data = Split(images, labels, tuple(classes), split)
    if use_cache:
        try:
            with atomic_path(cfile) as tmp:
                torch.save({"images": data.images, "labels": data.labels,
                            "classes": json.dumps(list(data.classes))}, tmp)
        except OSError:
            pass  # a read-only cache directory only costs speed
    return _Loaded(data, key)


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Return ``n`` indices with classes as equal as possible, drawn with ``seed``, sorted.

    Raises :class:`InputError` if ``n`` is not in ``1..len(labels)``.
    """
    total = int(labels.numel())
    if n <= 0 or n > total:
        raise InputError(f"subset size {n} must be between 1 and the split size {total}")
    if n == total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per = [n // len(classes)] * len(classes)
    for i in range(n - sum(per)):
        per[i] += 1
    chosen = []
    spill = []
    for c, k in zip(classes.tolist(), per):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        chosen.append(idx[:k])
        spill.append(idx[k:])
    out = torch.cat(chosen)
    if out.numel() < n:  # some class too small: fill from the rest
        rest = torch.cat(spill)
        out = torch.cat([out, rest[torch.randperm(rest.numel(), generator=g)[: n - out.numel()]]])
    return out.sort().values


def limit_split(split: Split, limit: int | None, seed: int = 0) -> Split:
    """Return a class-balanced subset of ``limit`` images (the whole split when ``None``)."""
    if limit is None or limit >= len(split):
        return split
    return split.subset(balanced_indices(split.labels, limit, seed))


# ----------------------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class Preprocess:
    """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, S, S)``; returns that tensor."""

    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    input_size: int = 32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.input_size}


def resolve_preprocess(sidecar: dict | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, input_size: int | None = None) -> Preprocess:
    """Return the preprocessing to use: explicit options, else the sidecar JSON, else CIFAR-10's."""
    sidecar = sidecar or {}
    m = tuple(mean) if mean else tuple(sidecar.get("mean", CIFAR10_MEAN))
    s = tuple(std) if std else tuple(sidecar.get("std", CIFAR10_STD))
    size = int(input_size or sidecar.get("input_size", 32))
    if len(m) != 3 or len(s) != 3:
        raise InputError("--mean and --std need three comma-separated values")
    if any(v <= 0 for v in s):
        raise InputError("--std values must be positive")
    if size < 32:
        raise InputError(f"--input-size {size} is below the 32 px that VGG16's five pools need")
    return Preprocess(tuple(float(v) for v in m), tuple(float(v) for v in s), size)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (reflect padding ``pad``) and horizontal flip of a uint8 batch; same shape."""
    n, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    idx_c = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    out = padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    return out.to(torch.uint8)


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False,
                    indices: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels)`` batches, optionally shuffled with ``generator``.

    ``indices`` restricts iteration to those rows (e.g. a distributed shard).
    """
    order = indices if indices is not None else torch.arange(len(split))
    if shuffle:
        order = order[torch.randperm(order.numel(), generator=generator)]
    stop = order.numel() - (order.numel() % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]


Transform = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "Preprocess", "Split", "augment_batch",
           "balanced_indices", "cache_dir", "detect_layout", "download_cifar10", "iterate_batches",
           "limit_split", "load_split", "resolve_preprocess"]
