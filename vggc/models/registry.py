"""Architecture registry: recognise a state_dict, rebuild its module from shapes alone.

Each architecture registers an :class:`Architecture` with three functions. The loader tries them
in order, so adding a model family (e.g. the MobileNetV2 student) is one ``register`` call and
no change to any command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from vggc.errors import ModelFormatError


@dataclass(frozen=True)
class Architecture:
    """How to recognise and rebuild one model family.

    ``matches(sd) -> bool``: cheap key test. ``config_from_state_dict(sd) -> config`` (raises
    :class:`ModelFormatError` when shapes are inconsistent). ``build(config) -> nn.Module``.
    ``config.to_dict()`` must give a JSON-able description and ``config.name`` a short name.
    """

    family: str
    matches: Callable[[dict], bool]
    config_from_state_dict: Callable[[dict], Any]
    build: Callable[[Any], nn.Module]


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry (later registrations are tried first); return it."""
    _REGISTRY[arch.family] = arch
    return arch


def architectures() -> list[Architecture]:
    """Return registered architectures, most recently registered first."""
    return list(reversed(_REGISTRY.values()))


def get(family: str) -> Architecture:
    """Return the architecture registered as ``family``."""
    try:
        return _REGISTRY[family]
    except KeyError:
        raise ModelFormatError(f"unknown model family {family!r}; known: "
                               f"{', '.join(sorted(_REGISTRY))}") from None


def describe_state_dict(sd: dict) -> str:
    """Return a short guess at what an unrecognised state_dict is, for error messages."""
    keys = list(sd)
    tops = sorted({k.split(".")[0] for k in keys})
    hints = [("layer1.", "a ResNet"), ("blocks.", "a ViT/timm-style model"),
             ("encoder.layer", "a transformer encoder"), ("features.0.0.", "a torchvision MobileNet/EfficientNet"),
             ("conv1.", "a ResNet-style CNN"), ("fc.", "a model with an 'fc' head")]
    guess = next((what for prefix, what in hints if any(k.startswith(prefix) for k in keys)),
                 "an unknown model")
    return (f"looks like {guess}: {len(keys)} tensors, top-level modules "
            f"{', '.join(tops[:6])}{', ...' if len(tops) > 6 else ''}")


def detect(sd: dict) -> tuple[Architecture, Any]:
    """Return ``(architecture, config)`` for a state_dict, or raise :class:`ModelFormatError`."""
    for arch in architectures():
        if arch.matches(sd):
            return arch, arch.config_from_state_dict(sd)
    families = ", ".join(sorted(_REGISTRY))
    raise ModelFormatError(f"not a supported state_dict ({families}); {describe_state_dict(sd)}")
