"""The ``tritonserver`` bundled by the ``nvidia-pytriton`` wheel (``pip install -e '.[serve]'``).

The wheel ships ``pytriton/tritonserver/bin/tritonserver`` (Triton 2.51), its shared libraries in
``nvidia_pytriton.libs`` (found through ``LD_LIBRARY_PATH``), the python backend
(``backends/python/libtriton_python.so``) and one ``triton_python_backend_stub`` per Python version,
linked against the system's ``libpython3.X.so.1.0`` (Debian package ``libpython3.X``). No C++
onnxruntime/openvino/tensorrt backend and no GPU support come with it.

:func:`serve_reason` says in one line why the server cannot run here (naming the install command);
:func:`locate` returns the paths; :func:`assemble_backends` builds the ``--backend-directory`` a
server runs with (Triton refuses backend files that are symlinks out of it, so they are copied).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vggc.errors import UnavailableError

PY_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
LIBPYTHON = f"libpython{PY_VERSION}.so.1.0"
INSTALL_EXTRA = "pip install -e '.[serve]'"
INSTALL_APT = f"apt-get install -y libpython{PY_VERSION}"


@dataclass(frozen=True)
class Bundle:
    """Paths of the bundled server: ``binary``, ``libs`` (for LD_LIBRARY_PATH), ``python_backend`` (the
    directory holding ``libtriton_python.so``), ``stub`` (this Python version's backend stub), ``version``."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path
    version: str


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _wheel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-pytriton")
    except PackageNotFoundError:
        return "unknown"


def _stub_missing_libs(stub: Path, libs: Path) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``stub`` (with ``libs`` on the path)."""
    try:
        out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=20,
                             env={"LD_LIBRARY_PATH": str(libs), "PATH": "/usr/bin:/bin"}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return [] if ctypes.util.find_library(f"python{PY_VERSION}") else [LIBPYTHON]
    return [ln.split("=>")[0].strip() for ln in out.splitlines() if "not found" in ln]


def locate() -> Bundle:
    """Return the bundled server's paths; :class:`UnavailableError` (one line, naming the install command)
    when the ``serve`` extra or the system's ``libpython3.X`` is missing."""
    root = _pytriton_root()
    if root is None:
        raise UnavailableError(f"tritonserver not installed (the serve extra, nvidia-pytriton): {INSTALL_EXTRA}")
    dist = root / "tritonserver"
    binary, libs = dist / "bin" / "tritonserver", root.parent / "nvidia_pytriton.libs"
    backend = dist / "backends" / "python"
    stub = dist / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub"
    for p in (binary, libs, backend / "libtriton_python.so"):
        if not p.exists():
            raise UnavailableError(f"nvidia-pytriton install is incomplete ({p} missing): {INSTALL_EXTRA}")
    if not stub.is_file():
        raise UnavailableError(f"nvidia-pytriton {_wheel_version()} has no python backend stub for Python "
                               f"{PY_VERSION}")
    missing = _stub_missing_libs(stub, libs)
    if missing:
        raise UnavailableError(f"the bundled tritonserver's python backend needs {', '.join(missing)}: "
                               f"{INSTALL_APT}" if LIBPYTHON in missing else f"missing {', '.join(missing)}")
    return Bundle(binary=binary, libs=libs, python_backend=backend, stub=stub, version=_wheel_version())


def serve_reason() -> str | None:
    """Return why the bundled tritonserver cannot run here (one line), or ``None``."""
    try:
        locate()
    except UnavailableError as err:
        return str(err)
    return None


def assemble_backends(bundle: Bundle, dest: Path, extra: Path | None = None) -> Path:
    """Write ``dest`` as a Triton backend directory: ``python/`` (the bundled python backend with this Python's
    stub) plus a copy of each backend directory under ``extra`` (e.g. a Python-based backend
    ``extra/onnxruntime/model.py``, or a C++ backend from another Triton install). Returns ``dest``."""
    py = dest / "python"
    py.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(bundle.python_backend / f, py / f)
    shutil.copy2(bundle.stub, py / "triton_python_backend_stub")
    if extra is not None:
        for sub in sorted(Path(extra).iterdir()):
            if sub.is_dir() and sub.name != "python":
                shutil.copytree(sub, dest / sub.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
