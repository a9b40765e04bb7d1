"""Safe, atomic file handling: hashing, atomic writes, manifests and safe ``torch.load``.

Every artifact vggc writes goes through :func:`atomic_path` (write to a temp file in the same
directory, then ``os.replace``), so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from vggc.errors import InputError, ModelFormatError, first_line

# digests of files already hashed in this process: (resolved path, size, mtime_ns, inode, ctime_ns) -> hex
_DIGESTS: dict[tuple, str] = {}
_DIGESTS_SIZE = 4096


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes.

    Remembered per (resolved path, size, mtime_ns, inode, ctime_ns): a file hashed again unchanged
    (the pipeline keys, markers and manifests name the same model files many times) is not read
    again; a rewritten or replaced file is."""
    p = Path(path)
    st = os.stat(p)
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    if len(_DIGESTS) >= _DIGESTS_SIZE:
        _DIGESTS.clear()
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def sha256_json(obj: Any) -> str:
    """Return the hex SHA-256 of ``obj`` serialised as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


TMP_PREFIX = ".tmp-"  # every temporary file of atomic_path starts with this


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. The temporary
    name keeps the final suffix (some writers, e.g. ONNX, look at it) and starts with
    :data:`TMP_PREFIX`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left under ``directory`` (recursively)
    when its process was killed before it could clean up; return their paths, sorted. Call it
    only where no other process can be writing (the pipeline holds a lock on its directory)."""
    stale = sorted(p for p in Path(directory).rglob(f"{TMP_PREFIX}*") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def save_state_dict(state_dict: dict, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` a plain state_dict (tensors only); return the path."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state_dict, tmp)
    return Path(path)


def manifest_path(artifact: str | os.PathLike) -> Path:
    """Return the manifest path that belongs to an artifact: ``<artifact>.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_json_object(path: str | os.PathLike, what: str = "JSON") -> dict:
    """Return the JSON object stored at ``path``. The one rule for every manifest, sidecar and
    settings file vggc reads: a file that exists but cannot be read, parsed, or is not a JSON
    object raises a one-line :class:`ModelFormatError` naming it (never a silent default)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path}: unreadable {what} ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{path}: unreadable {what} (a JSON {type(doc).__name__}, not an object)")
    return doc


def manifest_candidates(artifact: str | os.PathLike) -> list[Path]:
    """Return where an artifact's metadata may live, in order: the vggc manifest ``<file>.json``,
    then a user's sidecar ``<stem>.json``."""
    artifact = Path(artifact)
    return [c for c in (manifest_path(artifact), artifact.with_suffix(".json")) if c != artifact]


def read_manifest(artifact: str | os.PathLike) -> dict:
    """Return the first of :func:`manifest_candidates` that exists, parsed; ``{}`` when none does.
    One that exists but is unreadable raises :class:`ModelFormatError` (:func:`read_json_object`)."""
    for cand in manifest_candidates(artifact):
        if cand.is_file():
            return read_json_object(cand, "manifest JSON" if cand == manifest_path(artifact) else "sidecar JSON")
    return {}


def environment_info() -> dict:
    """Return the library versions and host facts recorded next to results (a manifest's
    ``environment``): :func:`vggc.provenance.manifest_environment`, the one home of library versions."""
    from vggc.provenance import manifest_environment

    return manifest_environment()


def write_manifest(artifact: str | os.PathLike, *, kind: str, inputs: dict, settings: dict,
                   metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``<artifact>.json`` describing how ``artifact`` was made; return its path.

    ``inputs`` maps a role (e.g. ``"source"``) to a file path; each is recorded with its SHA-256.
    The artifact's own hash is recorded too, so a manifest that does not match its file is stale.
    """
    artifact = Path(artifact)
    doc = {
        "artifact": artifact.name,
        "kind": kind,
        "sha256": sha256_file(artifact),
        "size_bytes": artifact.stat().st_size,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {role: {"path": str(p), "sha256": sha256_file(p)} for role, p in inputs.items()},
        "settings": settings,
        "metrics": metrics or {},
        "environment": environment_info(),
    }
    if extra:
        doc.update(extra)
    return write_json(manifest_path(artifact), doc)


def write_manifest_or_remove(artifact: str | os.PathLike, *, also: tuple = (), **kw) -> Path:
    """:func:`write_manifest`, but if it fails the artifact (and the companion files in ``also``,
    e.g. an OpenVINO IR's ``.bin``) are deleted before the error propagates, so no artifact is left
    without its manifest. Returns the manifest's path."""
    try:
        return write_manifest(artifact, **kw)
    except BaseException:
        for f in (Path(artifact), *map(Path, also)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        raise


def _describe_unpickling_error(err: Exception) -> str:
    msg = str(err)
    for marker in ("GLOBAL ", "Unsupported global: "):
        if marker in msg:
            name = msg.split(marker, 1)[1].split()[0].rstrip(".,")
            return name
    return ""


def _names_module(qualname: str) -> bool:
    """True if ``qualname`` names an ``nn.Module`` subclass (looked up only in already-imported modules)."""
    import sys

    from torch import nn

    modname, _, cls = qualname.rpartition(".")
    obj = getattr(sys.modules.get(modname), cls, None)
    if isinstance(obj, type):
        return issubclass(obj, nn.Module)
    return any(s in qualname for s in ("torch.nn.", "torchvision.models.", "timm.models."))


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors for the usual bad files.

    Raises :class:`ModelFormatError` for a missing, empty, truncated or non-torch file and for a
    pickled ``nn.Module`` (which ``weights_only`` refuses to unpickle).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a weights file")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = _describe_unpickling_error(err)
        if name:
            what = f"a pickled nn.Module ({name})" if _names_module(name) else f"a pickled object ({name})"
            raise ModelFormatError(
                f"{path}: holds {what}, not a state_dict; re-save it with "
                "torch.save(model.state_dict(), path)") from None
        raise ModelFormatError(f"{path}: not a readable torch file ({err})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = first_line(err)
        hint = "truncated or corrupt" if ("zip" in first.lower() or "eof" in first.lower()
                                          or "central directory" in first.lower()
                                          or isinstance(err, EOFError)) else "unreadable"
        raise ModelFormatError(f"{path}: {hint} torch file ({first[:160]})") from None
    except Exception as err:  # noqa: BLE001 - any other decoder failure: not a torch file
        raise ModelFormatError(f"{path}: not a torch state_dict file ({type(err).__name__}: "
                               f"{str(err)[:120]})") from None


def check_out_path(out: str, suffixes: tuple[str, ...]) -> None:
    """Raise :class:`InputError` when ``--out`` has the wrong suffix or is a directory."""
    if os.path.isdir(out):
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if suffixes and not out.endswith(suffixes):
        raise InputError(f"--out {out}: expected a file ending in {' or '.join(suffixes)}")
