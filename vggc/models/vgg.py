"""VGG built from a plain config, and the config read back from any VGG state_dict's shapes.

The layout follows torchvision's ``vgg*`` / ``vgg*_bn``: ``features.<i>`` with the same indices
(conv[, bn], relu, ..., maxpool), an ``avgpool`` and ``classifier.<i>`` Linear layers at 0/3/6.
Per-layer conv widths are free, so channel-pruned models rebuild from their state_dict alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vggc.errors import ModelFormatError

VGG16_WIDTHS: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                       512, 512, 512, "M", 512, 512, 512, "M")


@dataclass
class VGGConfig:
    """Everything needed to build a VGG.

    ``widths``: conv output channels in order, with ``"M"`` for each 2x2 max-pool.
    ``classifier``: ``[in_features, hidden..., num_classes]`` of the Linear stack.
    ``classifier_indices``: ``classifier.<i>`` position of each Linear (torchvision: 0, 3, 6).
    ``pool_size``: side of the adaptive average pool before flattening (7 for torchvision's
    25088-input head; 1 for CIFAR heads, where at 32x32 input the pool is the identity).
    """

    widths: list = field(default_factory=lambda: list(VGG16_WIDTHS))
    batch_norm: bool = True
    classifier: list = field(default_factory=lambda: [512, 512, 512, 10])
    classifier_indices: list = field(default_factory=lambda: [0, 3, 6])
    pool_size: int = 1
    in_channels: int = 3

    @property
    def num_classes(self) -> int:
        return self.classifier[-1]

    @property
    def conv_widths(self) -> list[int]:
        return [w for w in self.widths if w != "M"]

    @property
    def name(self) -> str:
        depth = len(self.conv_widths) + len(self.classifier) - 1
        return f"vgg{depth}" + ("_bn" if self.batch_norm else "")

    def to_dict(self) -> dict:
        return asdict(self)


class VGG(nn.Module):
    """A VGG with torchvision's module names. ``forward`` returns logits ``(N, num_classes)``."""

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c = config.in_channels
        for w in config.widths:
            if w == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(c, int(w), kernel_size=3, padding=1))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(int(w)))
            layers.append(nn.ReLU(inplace=True))
            c = int(w)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((config.pool_size, config.pool_size))
        dims, idx = config.classifier, config.classifier_indices
        head: list[nn.Module] = []
        for k in range(len(dims) - 1):
            while len(head) < idx[k]:
                gap = idx[k] - len(head)
                head.append(nn.ReLU(inplace=True) if gap in (1, 2) and not _last_is_relu(head)
                            else nn.Dropout(0.5))
            head.append(nn.Linear(dims[k], dims[k + 1]))
        self.classifier = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming for convs, unit BN; Linear layers keep PyTorch's default init (torchvision's
        # N(0, 0.01) stalls training of narrow CIFAR heads for the first epochs).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _last_is_relu(head: list) -> bool:
    return bool(head) and isinstance(head[-1], nn.ReLU)


def build_vgg(config: VGGConfig) -> VGG:
    """Return a freshly initialised :class:`VGG` for ``config``."""
    return VGG(config)


def vgg16_cifar(num_classes: int = 10, batch_norm: bool = True) -> VGG:
    """Return the CIFAR VGG16(-BN) of the reference model: 13 convs, classifier 512-512-N."""
    return VGG(VGGConfig(batch_norm=batch_norm, classifier=[512, 512, 512, num_classes]))


def _indexed(sd: dict, prefix: str) -> dict[int, str]:
    """Map layer index -> key prefix for keys like ``<prefix><i>.weight``."""
    out = {}
    for k in sd:
        if k.startswith(prefix) and k.endswith(".weight"):
            mid = k[len(prefix):-len(".weight")]
            if mid.isdigit():
                out[int(mid)] = f"{prefix}{mid}"
    return out


def is_vgg_state_dict(sd: dict) -> bool:
    """True if ``sd`` has torchvision-VGG keys: ``features.<i>.weight`` convs and a classifier."""
    convs = [k for k, v in sd.items() if k.startswith("features.") and k.endswith(".weight")
             and getattr(v, "ndim", 0) == 4]
    return bool(convs) and any(k.startswith("classifier.") for k in sd)


def vgg_config_from_state_dict(sd: dict) -> VGGConfig:
    """Read a :class:`VGGConfig` from tensor shapes alone.

    Raises :class:`ModelFormatError` when the keys or shapes do not form a VGG.
    """
    layers = _indexed(sd, "features.")
    if not layers:
        raise ModelFormatError("no features.<i>.weight tensors")
    convs = sorted(i for i, p in layers.items() if sd[p + ".weight"].ndim == 4)
    bns = {i for i, p in layers.items() if f"{p}.running_mean" in sd}
    batch_norm = bool(bns)
    if batch_norm and any(i - 1 not in convs for i in bns):
        raise ModelFormatError("BatchNorm layers that do not follow a conv")
    step = 3 if batch_norm else 2  # conv[, bn], relu
    widths: list = []
    in_c = sd[f"features.{convs[0]}.weight"].shape[1]
    prev_out, expected = in_c, 0
    for i in convs:
        w = sd[f"features.{i}.weight"]
        if w.shape[2:] != (3, 3):
            raise ModelFormatError(f"features.{i} is a {tuple(w.shape[2:])} conv, VGG uses 3x3")
        if w.shape[1] != prev_out:
            raise ModelFormatError(f"features.{i} takes {w.shape[1]} channels but the previous "
                                   f"layer gives {prev_out}")
        gap = i - expected
        if gap < 0 or gap > 1:
            raise ModelFormatError(f"features.{i} is not where a VGG layer can be")
        if gap == 1:
            widths.append("M")
        if batch_norm and f"features.{i + 1}.running_mean" not in sd:
            raise ModelFormatError(f"features.{i} has no BatchNorm after it while others do")
        widths.append(int(w.shape[0]))
        prev_out = int(w.shape[0])
        expected = i + step
    widths.append("M")

    lin = _indexed(sd, "classifier.")
    if not lin:
        raise ModelFormatError("no classifier.<i>.weight tensors")
    idx = sorted(lin)
    dims = []
    for n, i in enumerate(idx):
        w = sd[f"classifier.{i}.weight"]
        if w.ndim != 2:
            raise ModelFormatError(f"classifier.{i} is not a Linear layer")
        if n == 0:
            dims.append(int(w.shape[1]))
        elif w.shape[1] != dims[-1]:
            raise ModelFormatError(f"classifier.{i} takes {w.shape[1]} features, "
                                   f"previous layer gives {dims[-1]}")
        dims.append(int(w.shape[0]))
    area, rem = divmod(dims[0], prev_out)
    side = int(math.isqrt(area)) if area > 0 else 0
    if rem or side * side != area:
        raise ModelFormatError(f"classifier input {dims[0]} is not {prev_out} x k x k")
    return VGGConfig(widths=widths, batch_norm=batch_norm, classifier=dims,
                     classifier_indices=idx, pool_size=side, in_channels=int(in_c))
