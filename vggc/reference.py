"""The FP32 reference of a source model on one evaluation set, computed once and passed on.

The pipeline's ``source_eval`` step evaluates the unpruned FP32 model on the evaluation images and
writes :func:`reference_doc` (top-1, count, subset settings, the evaluation set's digest and the
per-image predictions, packed). Every later consumer (the prune job's ``top1_source``, the KD
teacher check, distillation's teacher top-1, the accuracy-aware quantization) takes the numbers
from it through :func:`reference_result` instead of evaluating the same model on the same images
again. :func:`evaluate_source` is the one place such an evaluation runs, and it counts itself
(:mod:`vggc.work`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

import torch

from vggc import work
from vggc.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from vggc.data import Preprocess, Split
    from vggc.evaluate import EvalResult
    from vggc.progress import Progress


def split_digest(split: "Split") -> str:
    """Return a short digest of a split's images and labels (which evaluation set it is)."""
    h = hashlib.sha256()
    h.update(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def pack_predictions(pred: torch.Tensor) -> str:
    """Return per-image class predictions packed as base64 of little-endian int16."""
    return base64.b64encode(pred.to(torch.int16).numpy().astype("<i2").tobytes()).decode("ascii")


def unpack_predictions(text: str, n: int) -> torch.Tensor | None:
    """Return the int64 predictions :func:`pack_predictions` packed, or ``None`` when ``text`` is
    not such a string of ``n`` predictions."""
    import numpy as np

    try:
        arr = np.frombuffer(base64.b64decode(text), dtype="<i2")
    except (ValueError, TypeError):
        return None
    return torch.from_numpy(arr.astype("int64")) if arr.size == n else None


def evaluate_source(model: torch.nn.Module, split: "Split", preprocess: "Preprocess", *,
                    progress: "Progress | None" = None) -> "EvalResult":
    """Evaluate the FP32 PyTorch ``model`` on ``split`` (inference mode, its current device);
    return the :class:`~vggc.evaluate.EvalResult`. Counted as one ``fp32_source_eval`` of this
    evaluation set (:mod:`vggc.work`)."""
    from vggc.evaluate import evaluate
    from vggc.progress import no_progress

    dev = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        res = evaluate(lambda x: model(x.to(dev)).cpu(), split, preprocess, progress=progress or no_progress)
    work.count("fp32_source_eval", key=split_digest(split))
    return res


def reference_doc(res: "EvalResult", split: "Split", *, eval_limit: int | None, seed: int) -> dict:
    """Return the reference record of an FP32 evaluation: ``top1``, ``n``, ``eval_limit``,
    ``seed``, ``digest`` (of ``split``) and ``predictions`` (packed)."""
    return {"top1": res.top1, "n": res.n, "eval_limit": eval_limit, "seed": seed,
            "digest": split_digest(split), "predictions": pack_predictions(res.predictions)}


def reference_result(reference: dict, split: "Split") -> tuple[float, torch.Tensor | None]:
    """Return ``(top1, predictions or None)`` of a reference record for ``split``.

    Raises :class:`InputError` when the record is of other images (its ``n`` or ``digest``
    differs from ``split``'s): its numbers would not be comparable."""
    if not isinstance(reference, dict) or not isinstance(reference.get("top1"), (int, float)):
        raise InputError("the FP32 reference has no top1")
    if reference.get("n") is not None and int(reference["n"]) != len(split):
        raise InputError(f"the FP32 reference is on {reference['n']} images, the evaluation set has {len(split)}")
    digest = reference.get("digest")
    if digest is not None and digest != split_digest(split):
        raise InputError("the FP32 reference was measured on other evaluation images")
    pred = reference.get("predictions")
    pred = unpack_predictions(pred, len(split)) if isinstance(pred, str) else None
    if reference.get("predictions") is not None and pred is None:
        raise InputError("the FP32 reference's predictions are unreadable")
    return float(reference["top1"]), pred
