"""Load a weights file into a ready model: unwrap, detect the architecture, rebuild, load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggc.artifacts import manifest_candidates, manifest_path, read_json_object, safe_torch_load
from vggc.errors import ModelFormatError
from vggc.models.registry import Architecture, detect

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass
class LoadedModel:
    """A model rebuilt from a state_dict.

    ``model`` is in eval mode on CPU; ``config`` is the architecture's config object;
    ``sidecar`` is the parsed ``<weights>.json`` (``{}`` when absent).
    """

    model: nn.Module
    arch: Architecture
    config: Any
    path: Path | None = None
    sidecar: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``obj``.

    Accepts a raw state_dict, one nested under ``state_dict`` / ``model_state_dict`` / ``model``,
    and strips ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    if isinstance(obj, nn.Module):
        raise ModelFormatError("got an nn.Module, expected a state_dict; pass module.state_dict()")
    if not isinstance(obj, dict):
        raise ModelFormatError(f"holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFormatError(f"holds a dict with no tensors (keys: {', '.join(map(str, list(obj)[:6]))})")
    out = {}
    for k, v in tensors.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def check_finite(sd: dict[str, torch.Tensor]) -> None:
    """Raise :class:`ModelFormatError` naming the first tensor (in file order) holding NaN or Inf
    values, with how many; a model with such weights would evaluate to chance without a word."""
    for k, v in sd.items():
        if not (v.is_floating_point() or v.is_complex()):
            continue
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            nan = int(torch.isnan(v).sum())
            inf = int(v.numel() - int(finite.sum()) - nan)
            what = " and ".join(f"{n} {name}" for n, name in ((nan, "NaN"), (inf, "Inf")) if n)
            raise ModelFormatError(f"tensor {k} holds {what} value{'s' if nan + inf > 1 else ''} "
                                   f"(of {v.numel()}); refusing to load non-finite weights")


def model_from_state_dict(sd: dict[str, torch.Tensor]) -> tuple[nn.Module, Architecture, Any]:
    """Rebuild and load the module described by ``sd``; return ``(model, arch, config)``."""
    arch, config = detect(sd)
    model = arch.build(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise ModelFormatError(
            f"{config.name} state_dict mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise ModelFormatError(f"{config.name}: {k} has shape {tuple(sd[k].shape)}, "
                               f"expected {tuple(expected[k].shape)}")
    model.load_state_dict(sd)
    return model.eval(), arch, config


def read_sidecar(weights: str | Path) -> dict:
    """Return the model's metadata: ``preprocess`` of a vggc manifest ``<file>.json`` when present,
    else the user's sidecar ``<stem>.json`` (keys ``mean``, ``std``, ``input_size``, ``classes``), else ``{}``.
    Either file existing but unreadable is a one-line :class:`ModelFormatError`."""
    for p in manifest_candidates(weights):
        if not p.is_file():
            continue
        is_manifest = p == manifest_path(weights)
        doc = read_json_object(p, "manifest JSON" if is_manifest else "sidecar JSON")
        if is_manifest:
            if isinstance(doc.get("preprocess"), dict):
                return dict(doc["preprocess"])
            continue
        return doc
    return {}


def load_weights(path: str | Path) -> LoadedModel:
    """Load a ``.pt`` state_dict file safely (``weights_only=True``) and rebuild its model.

    Returns a :class:`LoadedModel`. Raises :class:`ModelFormatError` (one line naming the file) for
    anything that is not a loadable state_dict, including NaN/Inf weights (:func:`check_finite`)."""
    path = Path(path)
    obj = safe_torch_load(path)
    try:
        sd = unwrap_state_dict(obj)
        check_finite(sd)
        model, arch, config = model_from_state_dict(sd)
    except ModelFormatError as err:
        raise ModelFormatError(f"{path}: {err}") from None
    return LoadedModel(model=model, arch=arch, config=config, path=path, sidecar=read_sidecar(path))
