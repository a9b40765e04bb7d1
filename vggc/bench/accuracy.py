"""The bench's accuracy pass and its cache: top-1 and per-image predictions of an opened runner
over the (sub)split, and ``<out>/accuracy-cache.json``, keyed by everything the result depends on.

Accuracy of a given file on a given backend is deterministic for fixed inputs, so it is cached.
The key (:func:`accuracy_key_inputs`, stored readably beside each entry) covers: the SHA-256 of
the model's files; the backend key, the precision it runs the file at and its device; the
images actually evaluated (digest of their pixels and labels, and their count); preprocessing;
the batch and thread count; the vggc source digest and library versions
(:func:`vggc.provenance.result_environment`); and the CPU's kernel-selecting ISA flags
(:func:`vggc.cpu.fingerprint`; int8 and bf16 kernels differ between ISAs), or the GPUs for a CUDA
row. A rerun reuses an entry only when all of that matches; otherwise it re-measures and says
which input changed (:func:`changed_inputs`).

Each entry keeps the per-image predicted classes, so a cached row can still be paired image by
image with the baseline (:mod:`vggc.bench.baseline`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch

from vggc import cpu, provenance, runtime
from vggc.artifacts import sha256_file, write_json
from vggc.data import Split
from vggc.evaluate import evaluate
from vggc.progress import Progress, no_progress
from vggc.reference import pack_predictions, split_digest, unpack_predictions  # noqa: F401 - split_digest re-exported

CACHE_NAME = "accuracy-cache.json"
CACHE_VERSION = 2


def _files_digest(mf: runtime.ModelFile) -> str:
    files = [f for f in mf.files if Path(f).is_file()] or [mf.path]
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


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
                               "about": "top-1 and per-image predictions per key; each entry's 'inputs' say "
                                        "what its key covers; delete this file or pass --no-cache to re-measure",
                               "entries": self.entries})


    def near(self, inputs: dict) -> dict | None:
        """Return the inputs of the newest entry for the same model files and backend (``None``
        when there is none): what an earlier run measured this row under."""
        if self.path is None:
            return None
        same = [e for e in self.entries.values() if isinstance(e, dict) and isinstance(e.get("inputs"), dict)
                and e["inputs"].get("model_sha256") == inputs.get("model_sha256")
                and e["inputs"].get("backend") == inputs.get("backend")]
        return max(same, key=lambda e: str(e.get("created")))["inputs"] if same else None


def accuracy_key_inputs(mf: runtime.ModelFile, be: runtime.Backend, *, n_images: int, data_digest: str,
                        batch: int, threads: int) -> dict:
    """Return, readably, everything a (model, backend) top-1 depends on (see the module docstring)."""
    inputs = {
        "model_sha256": _files_digest(mf),
        "backend": be.key,
        "precision": runtime.effective_precision(be, mf),
        "device": be.device,
        "n_images": n_images,
        "data": data_digest,
        "preprocess": mf.preprocess.to_dict(),
        "batch": batch,
        "threads": threads,
        **provenance.result_environment(),
    }
    if be.device == "cpu":
        inputs["cpu"] = cpu.fingerprint()
    else:
        from vggc.bench.machine import gpu_info

        inputs["gpus"] = [g["name"] for g in gpu_info()]
    return inputs


def accuracy_key(inputs: dict) -> str:
    """Return the cache key of :func:`accuracy_key_inputs`' result (a versioned SHA-256)."""
    return f"v{CACHE_VERSION}|" + hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def changed_inputs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Return ``"name: old -> new"`` for every key input that differs (nested dicts by dotted name)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_inputs(a, b, f"{prefix}{k}.")
        elif a != b:
            short = [str(v)[:16] + ("…" if len(str(v)) > 16 else "") for v in (a, b)]
            out.append(f"{prefix}{k}: {short[0]} -> {short[1]}")
    return out


def measure_accuracy(runner: runtime.Runner, mf: runtime.ModelFile, be: runtime.Backend, split: Split, *,
                     batch: int, threads: int, cache: AccuracyCache, data_digest: str,
                     progress: Progress = no_progress) -> tuple[float, bool, torch.Tensor, str | None]:
    """Measure top-1 of ``runner`` over ``split`` at batch ``batch`` (a short last batch padded), or
    take it from ``cache`` when every key input matches.

    Returns ``(top1, cached, predictions, why)``: ``predictions`` the predicted class per image
    (int64, in ``split`` order), ``why`` ``None`` or, when an earlier entry for the same files and
    backend did not match, which key inputs changed (so the re-measurement is explained).
    """
    inputs = accuracy_key_inputs(mf, be, n_images=len(split), data_digest=data_digest, batch=batch, threads=threads)
    key = accuracy_key(inputs)
    hit = cache.get(key)
    pred = unpack_predictions(hit.get("predictions", ""), len(split)) if isinstance(hit, dict) else None
    if hit is not None and pred is not None:
        return float(hit["top1"]), True, pred, None
    old = cache.near(inputs)
    why = None
    if old is not None:
        why = "accuracy re-measured: " + ("; ".join(changed_inputs(old, inputs)) or "cache entry unreadable")
    res = evaluate(_fixed_batch(runner.predict, batch), split, mf.preprocess, batch_size=batch,
                   progress=_labelled(progress, f"{mf.path.name} {be.key}"))
    cache.put(key, {"top1": res.top1, "correct": res.correct, "n": res.n, "model": mf.path.name,
                    "backend": be.key, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "inputs": inputs, "predictions": pack_predictions(res.predictions)})
    return res.top1, False, res.predictions, why
