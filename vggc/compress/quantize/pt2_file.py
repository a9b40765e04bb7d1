"""The ``.pt2`` file side of the torch backend: importing torchao, saving a ``torch.export`` program,
and checking/loading one without unpickling anything (:func:`check_pt2_archive`). Used by the writer
(:mod:`vggc.compress.quantize.backend_torch`) and the runtime backends (:mod:`vggc.export.pt2_backend`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
import zipfile
from pathlib import Path

import torch

from vggc.errors import ModelFormatError, UnavailableError, VggcError, first_line


def import_torchao() -> None:
    """Import torchao (registers its ops and the ``quantized_decomposed`` ops) without the pytree
    deprecation warning it logs on import with torch 2.14."""
    lg = logging.getLogger("torch.utils._pytree")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
        import torchao.quantization.pt2e  # noqa: F401
    finally:
        lg.setLevel(level)


def torchao_reason() -> str | None:
    """Return why torchao's PT2E quantization cannot run here, or ``None``."""
    try:
        import_torchao()
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means unavailable
        return f"torchao not importable ({first_line(err, 120)})"
    return None


def _require_torchao() -> None:
    reason = torchao_reason()
    if reason:
        raise UnavailableError(f"torch quantization: {reason}; pip install torchao")


def register_inductor_int8_passes() -> None:
    """Import torchao's X86 quantizer module, which registers the Inductor passes that turn Q/DQ
    conv/linear groups into oneDNN int8 kernels. Without this import a loaded program compiles
    to float convolutions with separate quantize/dequantize kernels (slower than FP32)."""
    import_torchao()
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401

    # torch 2.14's int8 conv lowering calls torch.tensor(tensor) and warns once per compile; the
    # warning is about Inductor's own code, not the user's, so it is hidden (narrow filter)
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                            module=r"torch\._inductor\.mkldnn_lowerings")


def save_pt2(ep, path: str | Path) -> Path:
    """``torch.export.save`` to ``path`` (the caller makes it atomic); return ``path``."""
    try:
        torch.export.save(ep, str(path))
    except Exception as err:  # noqa: BLE001
        first = first_line(err, 200)
        raise VggcError(f"torch.export.save failed: {first}") from None
    return Path(path)


def check_pt2_archive(path: str | Path) -> None:
    """Refuse ``.pt2`` archives that ``torch.export.load`` would unpickle with ``weights_only=False``.

    ``torch.export.load`` reads tensors marked ``use_pickle`` (tensor subclasses), custom/opaque
    objects and a ``sample_inputs`` file that fails ``weights_only=True`` with full pickle, i.e.
    arbitrary code. vggc writes none of those; this check raises :class:`ModelFormatError` for a
    file that has them (or is not a PT2 archive) before anything is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: file is empty")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith("/archive_format") or n == "archive_format" for n in names):
                raise ModelFormatError(f"{path}: not a torch.export PT2 archive")
            for name in names:
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    cfg = json.loads(zf.read(name)).get("config", {})
                    for fqn, meta in cfg.items():
                        pname = str(meta.get("path_name", ""))
                        if meta.get("use_pickle") or pname.startswith(("custom_obj", "opaque_obj")):
                            raise ModelFormatError(
                                f"{path}: holds a pickled object ({fqn}); vggc loads only plain-tensor PT2 "
                                "programs (unpickling can run arbitrary code)")
                elif "/sample_inputs/" in name and name.endswith(".pt"):
                    try:
                        torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                    except Exception:  # noqa: BLE001
                        raise ModelFormatError(
                            f"{path}: its sample inputs need full unpickling; refusing to load it") from None
    except zipfile.BadZipFile:
        raise ModelFormatError(f"{path}: truncated or not a PT2 (zip) archive") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path}: unreadable PT2 archive ({err})") from None


def load_pt2(path: str | Path):
    """Return the ``ExportedProgram`` in ``path`` after :func:`check_pt2_archive` (imports torchao
    first so its custom ops resolve)."""
    check_pt2_archive(path)
    with contextlib.suppress(ImportError):
        import_torchao()  # registers torchao::* and quantized_decomposed::* ops used by the graphs
    try:
        return torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001
        first = first_line(err, 200)
        raise ModelFormatError(f"{path}: torch.export.load failed ({first})") from None


def pt2_graph_precision(path: str | Path) -> str:
    """``int8`` if the archive's serialized graph has quantize ops or ``_int_mm``, else ``fp32``
    (reads the graph JSON only; nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if "/models/" in name and name.endswith(".json"):
                    text = zf.read(name).decode("utf-8", "replace")
                    if any(k in text for k in ("quantize_per_tensor", "quantize_affine", "_int_mm",
                                               "dequantize_per_channel")):
                        return "int8"
    except (zipfile.BadZipFile, OSError):
        pass
    return "fp32"
