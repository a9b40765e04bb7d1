"""What a result depends on besides its input files: the vggc source itself and the library
versions that compute it — and, for a timing, the machine and thread count it was measured on.

The one home for these fingerprints: pipeline step keys, the bench's accuracy cache and the
decision to reuse or re-measure a timing all build on :func:`result_environment` and
:func:`timing_environment`, so a cached number is reused only when all of it is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
from importlib import metadata
from pathlib import Path

from vggc import cpu

PACKAGE_DIR = Path(__file__).resolve().parent
# libraries whose version can change a number vggc reports (accuracy or speed)
LIBRARIES = ("torch", "torchvision", "torchao", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
             "torch-pruning", "numpy", "openvino", "nncf", "tensorrt", "torch-tensorrt")
# the libraries an artifact manifest's ``environment`` names besides torch (its keys are a contract)
MANIFEST_LIBRARIES = ("numpy", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "torchao", "openvino", "nncf")


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """Return the hex SHA-256 over every ``.py`` file of the vggc package (relative path + bytes):
    any edit to the code that produced a result changes it (``__version__`` alone never does)."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Return ``{distribution: version}`` for the installed ones among ``names`` (from package
    metadata; nothing is imported)."""
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
            out[name] = metadata.version(name)
    return out


def manifest_environment() -> dict:
    """Return what a manifest records as its ``environment``: ``python``, ``torch`` (the imported
    module's ``__version__``, which keeps the build tag, e.g. ``+cu130``, that package metadata
    drops), ``platform``, and :func:`library_versions` of :data:`MANIFEST_LIBRARIES` (``numpy``
    and the installed ones of the rest)."""
    import torch

    libs = library_versions(MANIFEST_LIBRARIES)
    head = {"python": platform.python_version(), "torch": torch.__version__}
    if "numpy" in libs:
        head["numpy"] = libs.pop("numpy")
    return {**head, "platform": platform.platform(), **libs}


def result_environment() -> dict:
    """Return what an accuracy (or any computed artifact) depends on beyond its inputs and settings:
    ``{"vggc_source": digest, "libraries": {...}}``."""
    return {"vggc_source": source_digest(), "libraries": library_versions()}


def timing_environment(threads: int | None) -> dict:
    """Return what a timing depends on: :func:`result_environment` plus the CPU (model, the ISA
    flags that select kernels, torch's capability) and the thread count."""
    return {**result_environment(), **cpu.fingerprint(), "threads": threads}
