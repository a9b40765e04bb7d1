"""Model statistics: parameter count, multiply-accumulates, per-layer widths."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Return the number of parameters (BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int = 32, in_channels: int = 3) -> int:
    """Return multiply-accumulates of one forward pass on a ``1 x C x S x S`` input.

    Counts Conv2d (``out_elems * in/groups * kh * kw``) and Linear (``in * out``); BatchNorm,
    activations and pooling are not counted, as is customary for VGG MAC figures. This is
    exactly half the FLOPs ``torch.utils.flop_counter.FlopCounterMode`` reports (it counts only
    convolutions and matrix products, at two FLOPs per MAC); tests/test_models.py checks that for
    every architecture vggc builds.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def lin_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[-1] * m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def layer_table(model: nn.Module) -> list[dict]:
    """Return one row per Conv2d/Linear: ``name``, ``type``, ``in``, ``out``, ``params``."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            rows.append({"name": name, "type": "conv", "in": m.in_channels, "out": m.out_channels,
                         "groups": m.groups, "params": sum(p.numel() for p in m.parameters())})
        elif isinstance(m, nn.Linear):
            rows.append({"name": name, "type": "linear", "in": m.in_features, "out": m.out_features,
                         "groups": 1, "params": sum(p.numel() for p in m.parameters())})
    return rows
