"""BatchNorm re-estimation: new running statistics for a model whose channels changed (after
pruning), from forward passes over a few hundred training images — no weight is updated.

Pruning removes filters from every layer at once, so the activations that reach each later
BatchNorm no longer have the mean and variance its running statistics remember; re-estimating
them recovers much of the accuracy lost before any fine-tune (Li et al. 2017 fine-tune; the
statistics part alone is what e.g. NNCF's and Torch-Pruning's examples do after pruning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vggc.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from vggc.data import Preprocess, Split

DEFAULT_IMAGES = 500  # class-balanced training images: 50 per CIFAR-10 class
DEFAULT_BATCH = 100


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Return the model's BatchNorm layers that keep running statistics, in model order."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: "Split", preprocess: "Preprocess", *, images: int = DEFAULT_IMAGES,
                   batch: int = DEFAULT_BATCH, seed: int = 0) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``split``; return the images used.

    Uses a class-balanced subset of ``images`` images of ``split`` (which must not be the test
    split), in near-equal batches of at most ``batch``: each BatchNorm runs in train mode with a
    cumulative average (``momentum=None``), everything else in eval mode (dropout off), under
    ``no_grad`` so no weight changes. The model comes back in eval mode with each BatchNorm's momentum as before.
    A model without BatchNorm is left as it is (returns 0).
    """
    from vggc.data import limit_split

    if images < 1 or batch < 1:
        raise InputError(f"BatchNorm re-estimation needs at least one image and batch size (got {images}, {batch})")
    if getattr(split, "name", "") == "test":
        raise InputError("BatchNorm statistics must be re-estimated on training images, not the test split")
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    subset = limit_split(split, images, seed)
    if len(subset) == 0:
        raise InputError("BatchNorm re-estimation: no training images")
    device = next(model.parameters()).device
    momenta = [m.momentum for m in bns]
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over all batches
            m.train()
        n_batches = -(-len(subset) // batch)  # near-equal batches: no trailing batch of one image
        for chunk in torch.tensor_split(subset.images, n_batches):
            model(preprocess(chunk).to(device))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()
    return len(subset)
