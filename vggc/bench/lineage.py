"""What training a model file carries, read from its manifests: the bench puts it beside each row
so a smoke budget (one epoch on 1,000 images) is never mistaken for what the method can reach.

A pruned or distilled state_dict's manifest records its fine-tune / distillation budget; files made
from it (its ONNX export, its INT8 files) point back at it through ``inputs.source``, which is
followed a few links up.
"""

from __future__ import annotations

from pathlib import Path

from vggc.artifacts import read_manifest
from vggc.errors import VggcError

MAX_LINKS = 4


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
        return f"pruned, fine-tuned{kd} {epochs} epoch(s) on {_count(images)} train images" if images else None
    if "distill" in settings and isinstance(settings.get("train"), dict):
        epochs = settings["train"].get("epochs")
        return f"distilled {epochs} epoch(s) on {_count(images)} train images" if images and epochs else None
    return None


def training_budget(meta: dict) -> str | None:
    """Return a one-line description of the training behind a model file (``meta``: its manifest),
    following ``inputs.source`` back to the pruned/distilled state_dict; ``None`` when none is recorded
    (e.g. the user's own trained model)."""
    for _ in range(MAX_LINKS):
        text = _budget(meta)
        if text:
            return text
        src = ((meta.get("inputs") or {}).get("source") or {}).get("path")
        if not src or not Path(src).is_file():
            return None
        try:
            meta = read_manifest(Path(src))
        except VggcError:
            return None  # the source's own rows report its unreadable manifest
    return None
