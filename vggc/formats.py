"""One table of the model formats vggc writes, with the backend facts that follow from each.

As Ultralytics drives its exporter, benchmark and loader from ``export_formats()``, every fact
about a format lives in its :class:`Format` record here, and the code that needs one derives it:
``vggc quantize --backend`` / ``--eval-backend`` choices, :func:`vggc.compress.quantize.quantize`
(output suffix, companion files, evaluation backend, default calibration, manifest ``format``, the
module that writes it), the accuracy-aware budget search (the backend its trials run on), and the
row the pipeline adds to the bench for a variant it could not build (:meth:`Format.unavailable_row`).

A quantization backend is one record (``quantize`` = its ``--backend`` name, ``module`` = the
module that implements it) plus that module, which provides the interface of
:mod:`vggc.compress.quantize.backend`: ``reason()``, ``check(...)``, ``write(job, tmp, companions)``,
``open_for_eval(...)`` and ``manifest_extra(out, facts)``. :func:`register` adds one; nothing else
needs editing (tests/test_formats.py adds a dummy backend that way).

This module imports no backend: modules are imported by name when a record is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vggc.errors import InputError


@dataclass(frozen=True)
class Format:
    """One model format: ``name`` (the manifest's ``kind``/``format`` and :mod:`vggc.runtime`'s format
    name), its file ``suffixes`` (the first is what vggc writes), ``companions`` (suffixes of files
    written beside it, e.g. an IR's ``.bin``), ``eval_backends`` (the runtime backends ``vggc quantize``
    evaluates it on, preferred first), ``report_backend`` (the backend a bench row names for a file of
    this format that could not be built), ``device`` (``cpu``/``cuda``).

    For a format ``vggc quantize`` writes: ``quantize`` (its ``--backend`` name), ``module`` (the module
    implementing it), ``trial_backend`` (what the ``--max-drop`` search's trials run on; ``None``: no
    budget search), ``default_calib`` (the ``--calib-method`` default), ``reduce_range_of`` (what
    ``--reduce-range`` makes 7-bit, for the manifest's note), ``takes_opset`` (honours ``--opset``),
    ``reads_fp32_onnx`` (quantizes an FP32 ONNX export, so ``--fp32-onnx`` applies), ``label`` (a short
    description for step labels)."""

    name: str
    suffixes: tuple[str, ...]
    companions: tuple[str, ...] = ()
    eval_backends: tuple[str, ...] = ()
    report_backend: str = "-"
    device: str = "cpu"
    quantize: str | None = None
    module: str | None = None
    trial_backend: str | None = None
    default_calib: str | None = None
    reduce_range_of: str = "weights"
    takes_opset: bool = False
    reads_fp32_onnx: bool = False
    label: str = ""

    @property
    def suffix(self) -> str:
        """Return the suffix vggc writes."""
        return self.suffixes[0]

    def impl(self) -> ModuleType:
        """Return the module that implements this format's quantization (imported on first use)."""
        if not self.module:
            raise InputError(f"format {self.name}: vggc does not write it by quantization")
        return importlib.import_module(self.module)

    def reason(self) -> str | None:
        """Return why this format cannot be written here (its module's ``reason()``), or ``None``."""
        return self.impl().reason() if self.module else None

    def companion_paths(self, path: str | Path) -> list[Path]:
        """Return the companion files of the file ``path`` (``model.xml`` -> ``[model.bin]``)."""
        return [Path(path).with_suffix(s) for s in self.companions]

    def unavailable_row(self) -> dict:
        """Return the ``format`` and ``backend`` of a bench row for a file of this format that could
        not be built."""
        return {"format": self.name, "backend": self.report_backend}


_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add (or replace) a format record; return it. A record with ``quantize`` needs ``module``."""
    if fmt.quantize and not fmt.module:
        raise ValueError(f"format {fmt.name}: a quantize backend needs its module")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove the record ``name`` (tests that add one take it away again)."""
    _FORMATS.pop(name, None)


def formats() -> list[Format]:
    """Return every record, in registration order."""
    return list(_FORMATS.values())


def get(name: str) -> Format:
    """Return the record of format ``name``; :class:`KeyError` for an unknown one."""
    return _FORMATS[name]


def by_suffix(path_or_suffix: str | Path) -> Format | None:
    """Return the record whose ``suffixes`` hold the suffix of ``path_or_suffix`` (a path or ``.xml``)."""
    s = str(path_or_suffix)
    suffix = (s if s.startswith(".") and "/" not in s else Path(s).suffix).lower()
    return next((f for f in _FORMATS.values() if suffix in f.suffixes), None)


def quantize_backends() -> list[str]:
    """Return the ``vggc quantize --backend`` names, in registration order."""
    return [f.quantize for f in _FORMATS.values() if f.quantize]


def choose_text(items: Sequence[str]) -> str:
    """Return ``a, b or c`` for an error message."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def quantize_format(backend: str) -> Format:
    """Return the record of the ``vggc quantize --backend`` name ``backend``; one-line
    :class:`InputError` for an unknown one."""
    for f in _FORMATS.values():
        if f.quantize == backend:
            return f
    raise InputError(f"--backend {backend}: choose {choose_text(quantize_backends())}")


def quantize_eval_backends() -> list[str]:
    """Return every backend ``vggc quantize --eval-backend`` may name (each quantize format's), in order."""
    out: list[str] = []
    for f in _FORMATS.values():
        if f.quantize:
            out.extend(b for b in f.eval_backends if b not in out)
    return out


class QuantizeView(Mapping):
    """A live ``{--backend name: record attribute}`` mapping over the quantize records (``attr``), so
    what derives from it sees records registered later. ``skip_none`` leaves out backends whose
    attribute is ``None`` (``TRIAL_BACKENDS``: only backends with a budget search)."""

    def __init__(self, attr: str, skip_none: bool = False):
        self.attr, self.skip_none = attr, skip_none

    def _items(self) -> dict:
        d = {f.quantize: getattr(f, self.attr) for f in _FORMATS.values() if f.quantize}
        return {k: v for k, v in d.items() if v is not None} if self.skip_none else d

    def __getitem__(self, key):
        return self._items()[key]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


register(Format("state_dict", (".pt", ".pth")))
register(Format("onnx", (".onnx",), eval_backends=("onnxruntime-cpu",), quantize="onnxruntime",
                module="vggc.compress.quantize.backend_ort", trial_backend="onnxruntime-cpu", default_calib="minmax",
                takes_opset=True, reads_fp32_onnx=True, label="onnxruntime"))
register(Format("pt2", (".pt2",), eval_backends=("torch-int8-compiled", "torch-int8-eager"), quantize="torch",
                module="vggc.compress.quantize.backend_torch", trial_backend="torch-int8-eager",
                default_calib="entropy", reduce_range_of="activations", label="torch"))
register(Format("openvino-ir", (".xml",), companions=(".bin",), eval_backends=("openvino-cpu",),
                report_backend="openvino-cpu", quantize="openvino", module="vggc.compress.quantize.backend_openvino",
                trial_backend="openvino-cpu", default_calib="nncf", reads_fp32_onnx=True,
                label="NNCF, OpenVINO IR"))
register(Format("tensorrt-engine", (".engine", ".plan"), eval_backends=("tensorrt",), report_backend="tensorrt",
                device="cuda"))
