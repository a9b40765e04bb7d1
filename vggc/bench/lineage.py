"""What training a model file carries, read from its manifests: the bench puts it beside each row
so a smoke budget (one epoch on 1,000 images) is never mistaken for what the method can reach.

A pruned or distilled state_dict's manifest records its fine-tune / distillation budget; files made
from it (its ONNX export, its INT8 files) point back at it through ``inputs.source``, which is
followed a few links up. :func:`ancestors` is that walk (the rebuild commands of
:mod:`vggc.bench.rebuild` follow it too, over more input roles).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

from vggc.artifacts import read_manifest
from vggc.errors import VggcError

MAX_LINKS = 4
# the input role that names the file an artifact was made from (ONNX export, quantization, pruning)
SOURCE_ROLES = ("source",)


def parent(meta: dict, roles: tuple[str, ...] = SOURCE_ROLES) -> Path | None:
    """Return the file ``meta`` (a manifest) was made from: the path of its first input among
    ``roles`` that exists on disk; ``None`` when it records none (a root, e.g. a trained model)."""
    for role in roles:
        src = ((meta.get("inputs") or {}).get(role) or {}).get("path")
        if src and Path(src).is_file():
            return Path(src)
    return None


def ancestors(meta: dict, roles: tuple[str, ...] = SOURCE_ROLES, limit: int = MAX_LINKS) -> Iterator[tuple[Path, dict]]:
    """Yield ``(path, manifest)`` for each file up the chain from ``meta`` (a manifest; not yielded
    itself), following :func:`parent` at most ``limit`` links and never a file twice. A manifest on
    the way that exists but is unreadable raises :class:`~vggc.errors.ModelFormatError` (from
    :func:`vggc.artifacts.read_manifest`) when the walk reaches it."""
    seen: set[Path] = set()
    for _ in range(limit):
        src = parent(meta, roles)
        if src is None or src.resolve() in seen:
            return
        seen.add(src.resolve())
        meta = read_manifest(src)
        yield src, meta


def _count(n) -> str:
    return f"{int(n):,}"


def _budget(meta: dict) -> str | None:
    settings, metrics = meta.get("settings") or {}, meta.get("metrics") or {}
    images = metrics.get("train_images")
    if "finetune_epochs" in settings and "prune" in settings:
        epochs = settings.get("finetune_epochs") or 0
        if not epochs:
            return "pruned, no fine-tune"
        kd = " with KD" if settings.get("distill_from_source") else ""
        if not images:
            return None
        ran = sum(len(st.get("history") or []) for st in metrics.get("steps") or []) or epochs
        if metrics.get("stopped_early"):
            return (f"pruned, fine-tuned{kd} {ran} of {epochs} epoch(s) on {_count(images)} train images: "
                    f"early stop, outside the budget")
        return f"pruned, fine-tuned{kd} {epochs} epoch(s) on {_count(images)} train images"
    if "distill" in settings and isinstance(settings.get("train"), dict):
        epochs = settings["train"].get("epochs")
        return f"distilled {epochs} epoch(s) on {_count(images)} train images" if images and epochs else None
    return None


def training_budget(meta: dict) -> str | None:
    """Return a one-line description of the training behind a model file (``meta``: its manifest),
    following ``inputs.source`` back to the pruned/distilled state_dict; ``None`` when none is recorded
    (e.g. the user's own trained model)."""
    try:
        for m in itertools.chain([meta], (m for _, m in ancestors(meta, limit=MAX_LINKS - 1))):
            text = _budget(m)
            if text:
                return text
    except VggcError:
        return None  # the source's own rows report its unreadable manifest
    return None
