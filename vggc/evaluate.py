"""Accuracy of any runner on a split: top-1, per-class accuracy, optionally the logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vggc.data import Preprocess, Split, iterate_batches
from vggc.progress import Progress, no_progress


@dataclass
class EvalResult:
    """``top1`` is a fraction in 0..1 over ``n`` images; ``per_class`` maps class -> fraction."""

    top1: float
    n: int
    correct: int
    per_class: dict[str, float]
    predictions: torch.Tensor = field(repr=False, default=None)  # (n,) int64
    logits: torch.Tensor | None = field(repr=False, default=None)  # (n, classes) when kept

    def to_dict(self) -> dict:
        return {"top1": self.top1, "n": self.n, "correct": self.correct, "per_class": self.per_class}


def evaluate(predict, split: Split, preprocess: Preprocess, *, batch_size: int = 256,
             keep_logits: bool = False, progress: Progress = no_progress) -> EvalResult:
    """Run ``predict`` (normalised float batch -> logits) over ``split``; return an :class:`EvalResult`."""
    preds, all_logits = [], []
    nb = (len(split) + batch_size - 1) // batch_size
    for images, _ in progress(iterate_batches(split, batch_size), total=nb, desc="eval"):
        logits = predict(preprocess(images))
        logits = torch.as_tensor(logits).float()
        preds.append(logits.argmax(1))
        if keep_logits:
            all_logits.append(logits)
    pred = torch.cat(preds)
    hit = pred == split.labels
    per_class = {}
    for ci, name in enumerate(split.classes):
        mask = split.labels == ci
        if mask.any():
            per_class[name] = round(float(hit[mask].float().mean()), 6)
    correct = int(hit.sum())
    return EvalResult(top1=correct / len(split), n=len(split), correct=correct, per_class=per_class,
                      predictions=pred, logits=torch.cat(all_logits) if keep_logits else None)


def model_top1(split: Split, preprocess: Preprocess, *, progress: Progress = no_progress):
    """Return ``top1(model) -> float``: the top-1 (a fraction) of a ``torch.nn.Module`` on ``split``,
    run on the device its parameters are on (a model mid-training may be on CUDA), in inference mode."""

    def top1(model: torch.nn.Module) -> float:
        dev = next(model.parameters()).device
        with torch.inference_mode():
            return evaluate(lambda x: model(x.to(dev)).cpu(), split, preprocess, progress=progress).top1

    return top1


def epoch_curve(top1, n_eval: int):
    """Return a learning curve's ``evaluate_epoch(model) -> {"top1", "n_eval"}`` for
    :func:`vggc.train.fit` from ``top1(model)`` (e.g. :func:`model_top1`) on ``n_eval`` images."""
    return lambda model: {"top1": top1(model), "n_eval": n_eval}
