"""Run any model file on any backend: one registry shared by ``vggc eval`` and ``vggc bench``.

A :class:`Backend` says which file formats it runs, whether it can run here (and if not, why),
and how to open a file into a :class:`Runner` whose ``predict`` maps a normalised float batch
``(N, 3, S, S)`` to logits ``(N, classes)`` as a CPU float32 tensor.

Other modules add backends with :func:`register_backend` (ONNX Runtime, compiled PT2 programs,
TensorRT engines, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vggc.artifacts import read_manifest
from vggc.cpu import has_native_bf16
from vggc.data import Preprocess, resolve_preprocess
from vggc.errors import InputError, UnavailableError


@dataclass
class ModelFile:
    """What is known about a model file before running it.

    ``files``: every file the model needs (for size on disk). ``params`` / ``macs``: ``None``
    when unknown. ``preprocess``: from its manifest / sidecar. ``meta``: the manifest, if any.
    """

    path: Path
    format: str
    preprocess: Preprocess
    files: list[Path]
    params: int | None = None
    macs: int | None = None
    arch: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())


class Runner:
    """An opened model. ``predict(x)`` returns CPU float32 logits; ``compile_seconds`` is the
    one-off build/compile time spent at open or on first call (0 when none)."""

    compile_seconds: float = 0.0

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (sessions, CUDA memory)."""


@dataclass(frozen=True)
class Backend:
    """A way to run model files. ``available()`` returns ``None`` or why it cannot run here."""

    name: str
    precision: str
    formats: tuple[str, ...]
    device: str
    open: Callable[[ModelFile, dict], Runner]
    available: Callable[[], str | None] = lambda: None
    default: bool = True  # part of ``vggc bench``'s default backend set
    # a caveat shown next to this backend's results (e.g. bf16 emulated on this CPU), or None
    note: Callable[[], str | None] = lambda: None

    @property
    def key(self) -> str:
        return self.name if self.precision == FILE_PRECISION else f"{self.name}-{self.precision}"


# A backend whose precision is "file" runs each file at the precision stored in it (ONNX Runtime on
# an FP32, FP16 or QDQ-INT8 .onnx); its key is its bare name (``onnxruntime-cpu``).
FILE_PRECISION = "file"


def effective_precision(backend: "Backend", model: "ModelFile") -> str:
    """Return the precision a (backend, file) result runs at: the backend's own, or for a
    ``precision="file"`` backend the file's (``model.meta["precision"]``, default ``fp32``)."""
    if backend.precision == FILE_PRECISION:
        return str(model.meta.get("precision") or "fp32")
    return backend.precision


_BACKENDS: dict[str, Backend] = {}
_FORMAT_PROBES: list[tuple[str, Callable[[Path], bool]]] = []
_DESCRIBERS: dict[str, Callable[[Path], ModelFile]] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` under ``backend.key`` (e.g. ``torch-fp32``); return it."""
    _BACKENDS[backend.key] = backend
    return backend


def register_format(fmt: str, probe: Callable[[Path], bool], describe: Callable[[Path], ModelFile]) -> None:
    """Teach the registry a file format: ``probe(path)`` recognises it, ``describe`` reads it."""
    _FORMAT_PROBES.append((fmt, probe))
    _DESCRIBERS[fmt] = describe


def backends() -> list[Backend]:
    """Return every registered backend, in registration order."""
    _load_plugins()
    return list(_BACKENDS.values())


def get_backend(key: str) -> Backend:
    """Return the backend registered as ``key``; raise :class:`InputError` if unknown."""
    _load_plugins()
    if key not in _BACKENDS:
        raise InputError(f"unknown backend {key!r}; known: {', '.join(_BACKENDS)}")
    return _BACKENDS[key]


def detect_format(path: Path) -> str:
    """Return the format name of a model file (e.g. ``state_dict``, ``onnx``)."""
    _load_plugins()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    for fmt, probe in reversed(_FORMAT_PROBES):
        if probe(path):
            return fmt
    known = ", ".join(fmt for fmt, _ in _FORMAT_PROBES)
    raise InputError(f"{path}: unrecognised model file (supported formats: {known})")


def describe(path: str | Path) -> ModelFile:
    """Return the :class:`ModelFile` for ``path`` (format detected from its contents/suffix)."""
    path = Path(path)
    return _DESCRIBERS[detect_format(path)](path)


def backends_for(fmt: str) -> list[Backend]:
    """Return the backends that can run files of format ``fmt``."""
    return [b for b in backends() if fmt in b.formats]


def open_model(model: ModelFile, backend: Backend, options: dict | None = None) -> Runner:
    """Open ``model`` on ``backend``; raise :class:`UnavailableError` if it cannot run here."""
    reason = backend.available()
    if reason:
        raise UnavailableError(f"{backend.key}: {reason}")
    if model.format not in backend.formats:
        raise InputError(f"{model.path.name}: backend {backend.key} does not run {model.format} files")
    return backend.open(model, options or {})


def default_backend(fmt: str) -> Backend:
    """Return the first available backend for ``fmt`` (what ``vggc eval`` uses by default)."""
    cands = backends_for(fmt)
    for b in cands:
        if b.available() is None:
            return b
    reasons = "; ".join(f"{b.key}: {b.available()}" for b in cands) or "none registered"
    raise UnavailableError(f"no backend can run {fmt} files here ({reasons})")


# ----------------------------------------------------------------------------- manifests

def preprocess_from_meta(meta: dict) -> Preprocess:
    """Return the preprocessing recorded in a manifest (``preprocess`` key) or sidecar."""
    return resolve_preprocess(meta.get("preprocess", meta))


# ----------------------------------------------------------------------------- torch state_dicts

def _is_state_dict_file(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin", ".ckpt") and path.is_file()


def _describe_state_dict(path: Path) -> ModelFile:
    from vggc.models import count_macs, count_params, load_weights

    lm = load_weights(path)
    meta = read_manifest(path)
    pre = preprocess_from_meta(meta)
    return ModelFile(path=path, format="state_dict", preprocess=pre, files=[path],
                     params=count_params(lm.model), macs=count_macs(lm.model, pre.input_size),
                     arch=lm.name, meta={**meta, "_loaded": lm})


class TorchRunner(Runner):
    """PyTorch eager (optionally ``torch.compile``) on CPU or CUDA, channels_last."""

    def __init__(self, model: torch.nn.Module, device: str, dtype: torch.dtype | None,
                 autocast: torch.dtype | None, compile_mode: str | None = None):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        if dtype is not None:
            self.model = self.model.to(dtype)
        self.dtype = dtype
        self.autocast = autocast
        if compile_mode:
            self.model = torch.compile(self.model, mode=compile_mode, dynamic=False)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.dtype is not None:
            x = x.to(self.dtype)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            out = self.model(x)
        return out.float().cpu()


def _loaded_module(model: ModelFile) -> torch.nn.Module:
    from vggc.models import load_weights

    lm = model.meta.get("_loaded") or load_weights(model.path)
    import copy

    return copy.deepcopy(lm.model)


def _cuda_reason() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device"


def _bf16_note() -> str | None:
    if has_native_bf16():
        return None
    return "bf16 emulated on this CPU (no AVX512-BF16/AMX): ~10x slower than fp32"


def _compiler_reason() -> str | None:
    import shutil

    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return None
    return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"


register_format("state_dict", _is_state_dict_file, _describe_state_dict)
register_backend(Backend("torch", "fp32", ("state_dict",), "cpu",
                         lambda m, o: TorchRunner(_loaded_module(m), "cpu", None, None)))
register_backend(Backend("torch", "bf16", ("state_dict",), "cpu",
                         lambda m, o: TorchRunner(_loaded_module(m), "cpu", None, torch.bfloat16),
                         note=_bf16_note, default=has_native_bf16()))
register_backend(Backend("torch-cuda", "fp32", ("state_dict",), "cuda",
                         lambda m, o: TorchRunner(_loaded_module(m), "cuda", None, None),
                         available=_cuda_reason))
register_backend(Backend("torch-cuda", "fp16", ("state_dict",), "cuda",
                         lambda m, o: TorchRunner(_loaded_module(m), "cuda", torch.float16, None),
                         available=_cuda_reason))
# torch.compile (Inductor) of the eager model: compiles on the first call of each input shape,
# which ``vggc bench`` reports as compile_s. Not in the default set (~30 s per shape on 2 cores).
register_backend(Backend("torch-compile", "fp32", ("state_dict",), "cpu",
                         lambda m, o: TorchRunner(_loaded_module(m), "cpu", None, None,
                                                  compile_mode=o.get("compile_mode", "default")),
                         available=_compiler_reason, default=False))

# Modules that register more formats/backends when imported. Each must import cleanly without
# its optional dependency (it reports unavailability through ``Backend.available``).
PLUGINS: list[str] = ["vggc.export.ort_backend", "vggc.export.gpu_backends", "vggc.export.pt2_backend",
                      "vggc.export.openvino_backend"]
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    for mod in PLUGINS:
        importlib.import_module(mod)


def info_dict(model: ModelFile) -> dict[str, Any]:
    """Return JSON-able facts about a model file (for ``info`` and bench rows)."""
    return {"model": model.path.name, "format": model.format, "arch": model.arch,
            "params": model.params, "macs": model.macs, "size_mb": round(model.size_bytes / 1e6, 3),
            "preprocess": model.preprocess.to_dict()}
