"""CIFAR MobileNetV2 (the distillation student), built from a plain config and read back from shapes.

The modules are torchvision's (``Conv2dNormActivation`` and ``InvertedResidual`` from
``torchvision.models.mobilenetv2``) with torchvision's names, so a state_dict has the same keys as
``torchvision.models.mobilenet_v2``: ``features.0`` stem, ``features.1..17`` inverted-residual
blocks, ``features.18`` 1x1 head conv, ``classifier.1`` Linear.

CIFAR adaptation (as in the CIFAR literature, e.g. kuangliu/pytorch-cifar): the stem conv and the
first downsampling stage (``t=6, c=24``) run at stride 1 instead of 2, so a 32x32 input reaches
the head at 4x4 instead of 1x1. That costs ~88 M MACs at width 1.0 (vs ~6 M with ImageNet strides
at 32x32, and ~300 M for ImageNet at 224x224).

Strides are not in a state_dict, so :func:`mobilenet_config_from_state_dict` rebuilds with the CIFAR
strides of the stage layout (``CIFAR_STAGE_STRIDES``). Per-block widths (expansion ``hidden`` and
``out``) come from the tensor shapes, so a channel-pruned student reloads; whether a block adds its
input back (residual) follows the stage layout (every block but the first of its stage), never
an accidental width match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from vggc.errors import InputError, ModelFormatError

# torchvision's MobileNetV2 setting: expansion t, channels c, repeats n, ImageNet stride s
TORCHVISION_SETTING: tuple = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
CIFAR_STEM_STRIDE = 1
CIFAR_STAGE_STRIDES: tuple = (1, 1, 2, 2, 1, 2, 1)  # stage 2 (c=24) at stride 1 for 32x32 inputs
STAGE_REPEATS: tuple = tuple(n for _, _, n, _ in TORCHVISION_SETTING)
NUM_BLOCKS = sum(STAGE_REPEATS)
WIDTH_CANDIDATES = (0.25, 0.35, 0.5, 0.75, 1.0, 1.25, 1.3, 1.4, 1.5, 2.0)


@dataclass
class MobileNetV2Config:
    """Everything needed to build a CIFAR MobileNetV2.

    ``width_mult``: the torchvision width multiplier the widths came from (``None`` when they fit
    no multiplier, e.g. after channel pruning). ``stem``: stem conv output channels.
    ``blocks``: one dict per inverted-residual block: ``hidden`` (expanded width), ``out``,
    ``stride``, ``expand`` (has a 1x1 expansion conv; torchvision omits it when ``t == 1``),
    ``residual`` (adds its input back). ``last_channel``: the 1x1 head conv width.
    """

    width_mult: float | None = 1.0
    num_classes: int = 10
    stem: int = 32
    stem_stride: int = CIFAR_STEM_STRIDE
    blocks: list = field(default_factory=list)
    last_channel: int = 1280
    dropout: float = 0.2
    in_channels: int = 3

    @property
    def name(self) -> str:
        return "mobilenet_v2_cifar"

    def to_dict(self) -> dict:
        return asdict(self)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never below 90% of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def mobilenet_v2_config(width_mult: float = 1.0, num_classes: int = 10, *,
                        stage_strides=CIFAR_STAGE_STRIDES, stem_stride: int = CIFAR_STEM_STRIDE,
                        dropout: float = 0.2) -> MobileNetV2Config:
    """Return the config of an unpruned MobileNetV2 at ``width_mult`` (CIFAR strides by default;
    pass ``stage_strides=(1, 2, 2, 2, 1, 2, 1), stem_stride=2`` for torchvision's ImageNet layout)."""
    if not width_mult > 0:
        raise InputError(f"--width-mult must be > 0, got {width_mult}")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if len(stage_strides) != len(TORCHVISION_SETTING):
        raise InputError(f"need {len(TORCHVISION_SETTING)} stage strides, got {len(stage_strides)}")
    stem = _make_divisible(32 * width_mult, 8)
    blocks, c_in = [], stem
    for (t, c, n, _), s in zip(TORCHVISION_SETTING, stage_strides, strict=True):
        out = _make_divisible(c * width_mult, 8)
        for i in range(n):
            blocks.append({"hidden": int(round(c_in * t)), "out": out, "stride": s if i == 0 else 1,
                           "expand": t != 1, "residual": i > 0})
            c_in = out
    last = _make_divisible(1280 * max(1.0, width_mult), 8)
    return MobileNetV2Config(width_mult=float(width_mult), num_classes=num_classes, stem=stem,
                             stem_stride=stem_stride, blocks=blocks, last_channel=last, dropout=dropout)


class CifarInvertedResidual(InvertedResidual):
    """torchvision's ``InvertedResidual`` with the expanded width given directly (so pruned
    blocks rebuild) and the residual decided by the layout; same submodule names."""

    def __init__(self, inp: int, hidden: int, oup: int, stride: int, expand: bool, residual: bool):
        nn.Module.__init__(self)
        if stride not in (1, 2):
            raise ModelFormatError(f"block stride must be 1 or 2, got {stride}")
        if residual and (stride != 1 or inp != oup):
            raise ModelFormatError(f"a residual block needs stride 1 and equal widths, got stride {stride}, "
                                   f"{inp} -> {oup} channels")
        if not expand and hidden != inp:
            raise ModelFormatError(f"a block without expansion conv must keep {inp} channels, got {hidden}")
        self.stride = stride
        self.use_res_connect = residual
        layers: list[nn.Module] = []
        if expand:
            layers.append(Conv2dNormActivation(inp, hidden, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                               activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden, norm_layer=nn.BatchNorm2d,
                                        activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with torchvision's module names; ``forward`` returns logits ``(N, num_classes)``."""

    def __init__(self, config: MobileNetV2Config):
        super().__init__()
        self.config = config
        if not config.blocks:
            raise ModelFormatError("MobileNetV2 config has no blocks")
        features: list[nn.Module] = [Conv2dNormActivation(config.in_channels, config.stem, stride=config.stem_stride,
                                                          norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)]
        c = config.stem
        for b in config.blocks:
            features.append(CifarInvertedResidual(c, int(b["hidden"]), int(b["out"]), int(b["stride"]),
                                                  bool(b["expand"]), bool(b["residual"])))
            c = int(b["out"])
        features.append(Conv2dNormActivation(c, config.last_channel, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        # a module (no parameters: the state_dict is torchvision's) rather than torchvision's functional call,
        # so PT2E can leave it unquantized by name when the Linear behind it stays FP32 (pt2e_fp32)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=config.dropout), nn.Linear(config.last_channel,
                                                                                config.num_classes))
        # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_mobilenet_v2(config: MobileNetV2Config) -> MobileNetV2Cifar:
    """Return a freshly initialised :class:`MobileNetV2Cifar` for ``config``."""
    return MobileNetV2Cifar(config)


def mobilenet_v2_cifar(width_mult: float = 1.0, num_classes: int = 10) -> MobileNetV2Cifar:
    """Return a CIFAR MobileNetV2 (stem and stage 2 at stride 1) at ``width_mult``."""
    return MobileNetV2Cifar(mobilenet_v2_config(width_mult, num_classes))


# ----------------------------------------------------------------------------- from a state_dict

def is_mobilenet_v2_state_dict(sd: dict) -> bool:
    """True for torchvision-MobileNetV2 keys: a ``features.0.0`` stem conv, inverted-residual
    ``features.<i>.conv.*`` blocks and a ``classifier.1`` Linear."""
    stem = sd.get("features.0.0.weight")
    return (getattr(stem, "ndim", 0) == 4 and "features.1.conv.0.0.weight" in sd
            and "classifier.1.weight" in sd)


def _shape(sd: dict, key: str, ndim: int) -> tuple:
    t = sd.get(key)
    if t is None:
        raise ModelFormatError(f"MobileNetV2 state_dict lacks {key}")
    if t.ndim != ndim:
        raise ModelFormatError(f"{key} has {t.ndim} dims, expected {ndim}")
    return tuple(int(s) for s in t.shape)


def _guess_width(cfg: MobileNetV2Config) -> float | None:
    for w in WIDTH_CANDIDATES:
        ref = mobilenet_v2_config(w, cfg.num_classes)
        if (ref.stem, ref.last_channel, ref.blocks) == (cfg.stem, cfg.last_channel, cfg.blocks):
            return w
    return None


def mobilenet_config_from_state_dict(sd: dict) -> MobileNetV2Config:
    """Read a :class:`MobileNetV2Config` from tensor shapes (CIFAR strides; see module doc).

    Raises :class:`ModelFormatError` when the keys or shapes do not form a MobileNetV2.
    """
    stem_out, in_c, kh, _ = _shape(sd, "features.0.0.weight", 4)
    if kh != 3:
        raise ModelFormatError(f"features.0.0 is a {kh}x{kh} conv, MobileNetV2's stem is 3x3")
    n_blocks = 0
    while f"features.{n_blocks + 1}.conv.0.0.weight" in sd:
        n_blocks += 1
    if n_blocks != NUM_BLOCKS:
        raise ModelFormatError(f"MobileNetV2 state_dict has {n_blocks} inverted-residual blocks, "
                               f"expected {NUM_BLOCKS}")
    strides = [s if i == 0 else 1 for n, s in zip(STAGE_REPEATS, CIFAR_STAGE_STRIDES, strict=True) for i in range(n)]
    firsts = {sum(STAGE_REPEATS[:k]) for k in range(len(STAGE_REPEATS))}
    blocks, c = [], stem_out
    for b in range(NUM_BLOCKS):
        p = f"features.{b + 1}.conv"
        expand = f"{p}.3.weight" in sd  # pw, dw, pw-linear conv, bn -> 4 entries
        if expand:
            hidden, cin, _, _ = _shape(sd, f"{p}.0.0.weight", 4)
            dw_out, dw_in, _, _ = _shape(sd, f"{p}.1.0.weight", 4)
            out, proj_in, _, _ = _shape(sd, f"{p}.2.weight", 4)
        else:
            hidden, dw_in, _, _ = _shape(sd, f"{p}.0.0.weight", 4)
            cin, dw_out = hidden, hidden
            out, proj_in, _, _ = _shape(sd, f"{p}.1.weight", 4)
        if cin != c:
            raise ModelFormatError(f"features.{b + 1} takes {cin} channels but the previous layer gives {c}")
        if dw_in != 1 or dw_out != hidden or proj_in != hidden:
            raise ModelFormatError(f"features.{b + 1} is not an inverted-residual block "
                                   f"(depthwise {dw_out}x{dw_in}, projection from {proj_in}, hidden {hidden})")
        residual = b not in firsts
        if residual and out != c:
            raise ModelFormatError(f"features.{b + 1} is a residual block but maps {c} -> {out} channels")
        blocks.append({"hidden": hidden, "out": out, "stride": strides[b], "expand": expand, "residual": residual})
        c = out
    head = f"features.{NUM_BLOCKS + 1}.0.weight"
    last, head_in, _, _ = _shape(sd, head, 4)
    if head_in != c:
        raise ModelFormatError(f"features.{NUM_BLOCKS + 1} takes {head_in} channels, last block gives {c}")
    classes, feat = _shape(sd, "classifier.1.weight", 2)
    if feat != last:
        raise ModelFormatError(f"classifier.1 takes {feat} features, the head conv gives {last}")
    cfg = MobileNetV2Config(width_mult=None, num_classes=classes, stem=stem_out, blocks=blocks,
                            last_channel=last, in_channels=in_c)
    cfg.width_mult = _guess_width(cfg)
    return cfg
