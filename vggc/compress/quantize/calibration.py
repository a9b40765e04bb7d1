"""Calibration images for static INT8: a class-balanced subset of the TRAIN split, never test images."""

from __future__ import annotations

import hashlib

import torch

from vggc.errors import InputError
from vggc.progress import Progress, no_progress

CALIB_BATCH = 50


def calibration_batches(data, preprocess, calib_size: int, seed: int, progress: Progress = no_progress,
                        batch_size: int = CALIB_BATCH) -> tuple[list[torch.Tensor], dict]:
    """Return normalised float batches of a class-balanced ``calib_size`` subset of the TRAIN split
    (drawn with ``seed``) and facts about it (size, seed, indices' SHA-256)."""
    from vggc.data import balanced_indices, load_split

    train = load_split(data, "train", progress=progress)
    if calib_size > len(train):
        raise InputError(f"--calib-size {calib_size} is larger than the training split ({len(train)} images)")
    idx = balanced_indices(train.labels, calib_size, seed)
    images = train.images[idx]
    batches = [preprocess(images[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    per_class = torch.bincount(train.labels[idx], minlength=len(train.classes)).tolist()
    facts = {"split": "train", "size": int(len(idx)), "seed": seed, "per_class": per_class,
             "indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()}
    return batches, facts
