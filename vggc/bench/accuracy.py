"""The bench's accuracy pass and its cache: top-1 of an opened runner over the (sub)split, and
``<out>/accuracy-cache.json``, keyed by what the top-1 depends on.

Accuracy of a given file on a given backend is deterministic, so it is cached keyed by (SHA-256
of the model's files, backend key, number of images, digest of those images + labels,
preprocessing); reruns then only re-time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch

from vggc import runtime
from vggc.artifacts import sha256_file, write_json
from vggc.data import Split
from vggc.evaluate import evaluate
from vggc.progress import Progress, no_progress

CACHE_NAME = "accuracy-cache.json"
CACHE_VERSION = 1


def _files_digest(mf: runtime.ModelFile) -> str:
    files = [f for f in mf.files if Path(f).is_file()] or [mf.path]
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _split_digest(split: Split) -> str:
    h = hashlib.sha256()
    h.update(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


split_digest = _split_digest


def _fixed_batch(predict: Callable[[torch.Tensor], torch.Tensor], batch: int):
    """Wrap ``predict`` so every call sees exactly ``batch`` rows (pad by repeating row 0, drop extras)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= batch:
            return predict(x)
        pad = x[:1].expand(batch - n, *x.shape[1:])
        return torch.as_tensor(predict(torch.cat([x, pad])))[:n]

    return run


def _labelled(progress: Progress, label: str) -> Progress:
    def wrap(iterable: Iterable, total: int | None = None, desc: str = "", **kw):
        return progress(iterable, total=total, desc=label, **kw)

    return wrap


class AccuracyCache:
    """``accuracy-cache.json`` in the out dir; each new entry is written at once (atomically)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text())
                if doc.get("version") == CACHE_VERSION and isinstance(doc.get("entries"), dict):
                    self.entries = doc["entries"]
            except (OSError, json.JSONDecodeError, AttributeError):
                self.entries = {}  # a broken cache only costs time

    def get(self, key: str) -> dict | None:
        return self.entries.get(key) if self.path is not None else None

    def put(self, key: str, value: dict) -> None:
        if self.path is None:
            return
        self.entries[key] = value
        write_json(self.path, {"version": CACHE_VERSION,
                               "about": "top-1 per (model files sha256, backend, n_images, data digest, "
                                        "preprocess); delete this file or pass --no-cache to re-measure",
                               "entries": self.entries})


def measure_accuracy(runner: runtime.Runner, mf: runtime.ModelFile, be: runtime.Backend, split: Split, *,
                     batch: int, cache: AccuracyCache, data_digest: str,
                     progress: Progress = no_progress) -> tuple[float, bool]:
    """Return ``(top1, cached)`` of ``runner`` over ``split`` at batch ``batch`` (a short last batch
    padded), from ``cache`` when it holds this key (``cached`` True), else measured and stored."""
    key = "|".join([f"v{CACHE_VERSION}", _files_digest(mf), be.key, str(len(split)), data_digest,
                    json.dumps(mf.preprocess.to_dict(), sort_keys=True)])
    hit = cache.get(key)
    if hit is not None:
        return float(hit["top1"]), True
    res = evaluate(_fixed_batch(runner.predict, batch), split, mf.preprocess, batch_size=batch,
                   progress=_labelled(progress, f"{mf.path.name} {be.key}"))
    cache.put(key, {"top1": res.top1, "correct": res.correct, "n": res.n, "model": mf.path.name,
                    "backend": be.key, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return res.top1, False
