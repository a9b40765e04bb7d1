"""ONNX export (FP32 or FP16) with a real dynamic batch dimension, and a parity check against PyTorch.

:func:`export_onnx` uses the current exporter (``torch.onnx.export(..., dynamo=True)``) with an
example batch of 2 and a ``torch.export.Dim`` on axis 0, so the batch dimension stays symbolic
(an example batch of 1 is the classic way to get it specialised). The file is self-contained
(initializers inline, no ``.data`` side file), passes ``onnx.checker`` and is written atomically.
Input is named ``input`` (float32 ``N x 3 x S x S``, normalised), output ``logits`` (float32).

``fp16=True`` converts the graph to FP16 with ``onnxruntime.transformers.float16`` keeping FP32
inputs/outputs (a Cast at each end), so callers feed and read float32 either way.

:func:`export_with_parity` is what ``vggc export`` runs: export to a temporary file, compare it
with PyTorch on real test images (:func:`check_parity`), and only then move it into place and
write its manifest. Below the agreement bar nothing is left at the output path. Without test
images the check runs on :func:`synthetic_split` (a fixed-seed batch of random images at the
model's input size; ``parity.kind`` says which): it catches a broken graph, real images are the
stronger check.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from vggc import work
from vggc.artifacts import atomic_path, manifest_path, write_manifest_or_remove
from vggc.data import Preprocess, Split, iterate_batches
from vggc.errors import InputError, VggcError, first_line
from vggc.limits import MAX_BATCH
from vggc.progress import Progress, no_progress

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The dynamo exporter's torchlib implements opset 18 and up; lower versions go through a version
# converter that silently keeps 18 when it fails, so they are refused rather than half-honoured.
MIN_OPSET = 18
MAX_OPSET = 23
DEFAULT_OPSET = 18
# Minimum top-1 agreement between ONNX Runtime and PyTorch for an export to be kept.
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995}
METADATA_PREFIX = "vggc."
# parity without test images: this many fixed-seed random images at the model's input size
SYNTHETIC_PARITY_N = 512
SYNTHETIC = "synthetic"  # Split.name of synthetic_split(); parity["kind"] is "synthetic" or "real"


def check_opset(opset: int) -> int:
    """Return ``opset`` if the exporter supports it; raise :class:`InputError` otherwise."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset}: unsupported; the ONNX exporter supports opsets "
                         f"{MIN_OPSET}..{MAX_OPSET}")
    return opset


def _to_fp16(proto):
    """Return an FP16 copy of ``proto`` with FP32 graph inputs/outputs, topologically sorted."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as err:  # pragma: no cover - onnxruntime is a hard dependency
        raise VggcError(f"FP16 conversion needs onnxruntime.transformers ({first_line(err)})") from None
    import onnxscript.ir as ir

    half = convert_float_to_float16(proto, keep_io_types=True)
    # The converter appends its input/output Casts at the end of the node list; ONNX requires
    # topological order, so sort (the checker and some runtimes refuse unsorted graphs).
    model = ir.serde.deserialize_model(half)
    model.graph.sort()
    return ir.serde.serialize_model(model)


def _batch_is_dynamic(proto) -> bool:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_param") and not dims[0].HasField("dim_value")


def _set_metadata(proto, values: dict) -> None:
    keep = [p for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in values.items():
        entry = proto.metadata_props.add()
        entry.key = METADATA_PREFIX + k
        entry.value = v if isinstance(v, str) else json.dumps(v)


def export_onnx(model: nn.Module, out: str | os.PathLike, *, input_size: int = 32, opset: int = DEFAULT_OPSET,
                fp16: bool = False, in_channels: int = 3, preprocess: Preprocess | None = None) -> Path:
    """Export ``model`` (logits from a normalised ``N x C x S x S`` batch) to one ``.onnx`` file.

    The batch dimension is dynamic (checked on the exported graph). ``fp16`` gives an FP16 graph
    with float32 input/output. ``preprocess`` is recorded in the file's metadata (``vggc.*``
    keys) so the file describes itself without its manifest. The caller's model is not modified.
    Returns ``out``. Raises :class:`InputError` for a bad opset/size and :class:`VggcError` when
    the exporter fails.
    """
    import onnx

    check_opset(opset)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise InputError(f"input size {input_size!r} must be a positive integer")
    out = Path(out)
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.randn(2, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    sink = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sink):
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=opset,
                                        dynamic_shapes=({0: batch},), optimize=True, verbose=False)
        proto = program.model_proto
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; report one line
        raise VggcError(f"ONNX export failed: {first_line(err)}") from None
    work.count("fp16_export" if fp16 else "fp32_export")  # what pipeline.json counts per step
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise VggcError(f"ONNX export produced opset {got}, not the requested {opset}")
    if not _batch_is_dynamic(proto):
        raise VggcError("ONNX export specialised the batch dimension; the model's forward must not "
                        "depend on the batch size")
    if fp16:
        proto = _to_fp16(proto)
    meta = {"precision": "fp16" if fp16 else "fp32", "input_size": str(input_size)}
    if preprocess is not None:
        meta["preprocess"] = preprocess.to_dict()
    _set_metadata(proto, meta)
    proto.producer_name = "vggc"
    with atomic_path(out) as tmp:
        try:
            onnx.save(proto, str(tmp), save_as_external_data=False)
        except ValueError as err:  # protobuf's 2 GiB limit for one message
            raise VggcError(f"{out}: cannot write a single-file ONNX model ({first_line(err)})") from None
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as err:
            raise VggcError(f"exported ONNX model fails onnx.checker: {first_line(err)}") from None
    return out


# ----------------------------------------------------------------------------- parity

def synthetic_split(n: int = SYNTHETIC_PARITY_N, input_size: int = 32, *, seed: int = 0, channels: int = 3) -> Split:
    """Return ``n`` fixed-seed random uint8 images ``(n, channels, S, S)`` for a parity check
    without test images: half uniform noise, half smooth (4x4-pixel noise upsampled) so both
    high- and low-frequency inputs are covered. Labels are ``-1`` (there is no ground truth);
    the split is named :data:`SYNTHETIC`."""
    if n < 1:
        raise InputError(f"synthetic parity needs at least one image, got {n}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, input_size, input_size), generator=g, dtype=torch.uint8)
    half = n // 2
    if half:
        small = torch.rand(half, channels, 4, 4, generator=g) * 255.0
        smooth = torch.nn.functional.interpolate(small, size=(input_size, input_size), mode="bilinear",
                                                 align_corners=False)
        images[:half] = smooth.round().clamp_(0, 255).to(torch.uint8)
    return Split(images, torch.full((n,), -1, dtype=torch.int64), (), SYNTHETIC)


@torch.no_grad()
def check_parity(onnx_path: str | os.PathLike, model: nn.Module, split: Split, preprocess: Preprocess, *,
                 batch_size: int = 256, threads: int | None = None, progress: Progress = no_progress) -> dict:
    """Compare ONNX Runtime (CPU) on ``onnx_path`` with PyTorch ``model`` on every image of ``split``.

    Returns ``kind`` (``"real"``, or ``"synthetic"`` for a :func:`synthetic_split`), ``n``,
    ``max_abs_logit_diff``, ``mean_abs_logit_diff``, ``top1_agreement`` (fraction of images where
    both predict the same class), ``agreements``, ``torch_top1`` and ``onnx_top1`` (fractions 0..1;
    ``None`` on synthetic images, which have no labels).
    """
    from vggc.export.ort_backend import OrtRunner

    if len(split) == 0:
        raise InputError("parity check needs at least one image")
    runner = OrtRunner(Path(onnx_path), providers=["CPUExecutionProvider"], threads=threads)
    if model.training or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu().eval()  # never change the caller's module
    n = agree = torch_hits = onnx_hits = 0
    max_diff = 0.0
    sum_diff = 0.0
    nb = (len(split) + batch_size - 1) // batch_size
    try:
        for images, labels in progress(iterate_batches(split, batch_size), total=nb, desc="parity"):
            x = preprocess(images)
            ref = model(x).float()
            got = runner.predict(x)
            if got.shape != ref.shape:
                raise VggcError(f"ONNX output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
            diff = (got - ref).abs()
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.mean()) * diff.shape[0]
            p_ref, p_got = ref.argmax(1), got.argmax(1)
            agree += int((p_ref == p_got).sum())
            torch_hits += int((p_ref == labels).sum())
            onnx_hits += int((p_got == labels).sum())
            n += int(labels.numel())
    finally:
        runner.close()
    labelled = split.name != SYNTHETIC
    return {"kind": "real" if labelled else SYNTHETIC, "n": n, "max_abs_logit_diff": max_diff,
            "mean_abs_logit_diff": sum_diff / n, "top1_agreement": agree / n, "agreements": agree,
            "torch_top1": torch_hits / n if labelled else None, "onnx_top1": onnx_hits / n if labelled else None}


def export_with_parity(model: nn.Module, out: str | os.PathLike, *, preprocess: Preprocess,
                       split: Split | None = None, opset: int = DEFAULT_OPSET, fp16: bool = False,
                       min_agreement: float | None = None, batch_size: int = 256, threads: int | None = None,
                       source: str | os.PathLike | None = None, arch: str = "", settings: dict | None = None,
                       extra: dict | None = None, progress: Progress = no_progress) -> dict:
    """Export ``model`` to ``out``, check it against PyTorch on ``split``, write the manifest.

    The file is exported to a temporary path beside ``out`` and moved into place only after the
    parity check passes (agreement ``>= min_agreement``, default 99.9% FP32 / 99.5% FP16); on a
    failure nothing is left at ``out`` and :class:`VggcError` is raised. ``split=None`` skips the
    check. Returns the manifest's facts: ``path``, ``precision``, ``opset``, ``size_bytes``,
    ``params``, ``macs``, ``parity`` (the :func:`check_parity` dict or ``None``).
    """
    from vggc.models import count_macs, count_params

    check_opset(opset)
    out = Path(out)
    precision = "fp16" if fp16 else "fp32"
    bar = MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    parity = None
    with atomic_path(out) as tmp:
        export_onnx(model, tmp, input_size=preprocess.input_size, opset=opset, fp16=fp16, preprocess=preprocess)
        if split is not None:
            parity = check_parity(tmp, model, split, preprocess, batch_size=batch_size, threads=threads,
                                  progress=progress)
            parity["min_agreement"] = bar
            if parity["top1_agreement"] < bar:
                raise VggcError(
                    f"ONNX/PyTorch parity too low: top-1 agreement {100 * parity['top1_agreement']:.2f}% "
                    f"< {100 * bar:.2f}% on {parity['n']} {parity['kind']} images (max |dlogit| "
                    f"{parity['max_abs_logit_diff']:.3g}); {out} not written")
    params = count_params(model)
    macs = count_macs(model, preprocess.input_size)
    doc_extra = {"precision": precision, "preprocess": preprocess.to_dict(), "params": params, "macs": macs,
                 "arch": arch, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "opset": opset,
                 "dynamic_batch": True, "parity": parity}
    if source is not None:
        doc_extra["source"] = {"path": str(source), "name": Path(source).name}
    doc_extra.update(extra or {})
    write_manifest_or_remove(out, kind="onnx", inputs={"source": source} if source is not None else {},
                             settings={"opset": opset, "fp16": fp16, "input_size": preprocess.input_size,
                                       "parity_images": parity["n"] if parity else 0,
                                       "parity_kind": parity["kind"] if parity else None,
                                       "min_agreement": bar, **(settings or {})},
                             metrics={"parity": parity} if parity else {}, extra=doc_extra)
    return {"path": str(out), "precision": precision, "opset": opset, "size_bytes": out.stat().st_size,
            "params": params, "macs": macs, "parity": parity, "manifest": str(manifest_path(out))}

