"""NNCF post-training INT8 quantization into OpenVINO IR (``vggc quantize --backend openvino``).

Path: the model's FP32 ONNX export (:func:`vggc.export.onnx.export_onnx`, the same graph and
symbolic batch as vggc's FP32 ONNX row and the ONNX Runtime path) -> ``openvino.Core.read_model``
-> ``nncf.quantize`` -> ``openvino.save_model`` (IR ``.xml`` + ``.bin``, int8 weights). ONNX
rather than PyTorch because (1) it is exactly the file a deployer reads with OpenVINO, so the
FP32 and INT8 OpenVINO rows share one graph, and (2) OpenVINO's PyTorch path
(``openvino.convert_model``) is its conversion tool, which sends telemetry; ``read_model`` does not.

NNCF settings (nncf 3.x): ``preset`` ``performance`` (symmetric weights and activations) or
``mixed`` (asymmetric activations); ``fast_bias_correction`` (True: NNCF's fast bias correction;
False: the full BiasCorrection algorithm, slower); ``subset_size`` = the number of calibration
images, fed one image per item (a class-balanced subset of the TRAIN split, the same subset code
as the other backends); ``target_device=CPU``; weights per channel unless ``per_channel=False``;
``overflow_fix``: ``enable`` (7-bit weights) when ``reduce_range`` is on (CPUs without VNNI),
else ``disable``. Dynamic mode is not offered: NNCF/OpenVINO PTQ is static only.

Telemetry: :func:`import_nncf` sets ``NNCF_CI=1`` (NNCF's own switch, ``nncf/definitions.py``:
set, NNCF replaces its telemetry with a stub) before NNCF is first imported; vggc never calls
OpenVINO's ``convert_model``/``ovc``. ``opt_in_out --opt_out`` turns OpenVINO telemetry off for
a whole machine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.quantize.budget import Trials

from vggc import formats
from vggc.errors import InputError, UnavailableError, VggcError, first_line

PRESETS = ("performance", "mixed")
# the OpenVINO ops of the layers static INT8 quantizes (an ONNX Conv / Gemm / MatMul); a depthwise conv
# (MobileNetV2's) is a GroupConvolution
LAYER_OPS = {"Convolution": "conv", "GroupConvolution": "conv", "MatMul": "linear"}
DYNAMIC_NOT_OFFERED = ("--mode dynamic: not offered by OpenVINO/NNCF for this model (NNCF post-training "
                       "quantization is static only); use --mode static --backend openvino, or --mode dynamic "
                       "--backend onnxruntime/torch")


def import_nncf():
    """Return the ``nncf`` module, imported with its telemetry off (see the module docstring)."""
    if "nncf" not in sys.modules:
        os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except Exception as err:  # noqa: BLE001
        raise UnavailableError(f"nncf not importable ({first_line(err, 120)})") from None
    return nncf


def nncf_reason() -> str | None:
    """Return why NNCF + OpenVINO quantization cannot run here, or ``None``."""
    from vggc.export.openvino_backend import ov_reason

    reason = ov_reason()
    if reason:
        return reason
    try:
        import_nncf()
    except UnavailableError as err:
        return str(err)
    return None


def check_ov_settings(*, mode: str, preset: str, calib_method: str | None) -> None:
    """One-line :class:`InputError` for the options ``--backend openvino`` does not take."""
    if mode == "dynamic":
        raise InputError(DYNAMIC_NOT_OFFERED)
    if preset not in PRESETS:
        raise InputError(f"--preset {preset}: choose performance or mixed")
    if calib_method:
        raise InputError("--calib-method applies to --backend onnxruntime/torch; NNCF chooses its own "
                         "activation range estimators (MinMax) and corrects biases (--fast-bias-correction)")


def ignored_op_names(ov_model, onnx_nodes: Sequence[str]) -> list[str]:
    """Return the OpenVINO op names that keep the ONNX nodes ``onnx_nodes`` (Conv / Gemm / MatMul of
    vggc's FP32 export) in FP32 under ``nncf.IgnoredScope(names=...)``: OpenVINO's ONNX reader names
    a biased node's Convolution / MatMul ``<node>/WithoutBiases`` (its bias Add keeps ``<node>``); a
    depthwise conv (MobileNetV2's) is a GroupConvolution.
    Raises :class:`VggcError` for a node the model has no such op for."""
    ops = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ops()}
    names = []
    for node in onnx_nodes:
        hit = [n for n in (f"{node}/WithoutBiases", node) if ops.get(n) in LAYER_OPS]
        if not hit:
            raise VggcError(f"cannot keep {node} in FP32: OpenVINO's graph has no "
                            f"{'/'.join(LAYER_OPS)} for that ONNX node")
        names.append(hit[0])
    return names


class NncfSettings:
    """The NNCF call of one ``vggc quantize --backend openvino`` (fixed across budget trials)."""

    def __init__(self, images: list[np.ndarray], *, preset: str, fast_bias_correction: bool, per_channel: bool,
                 reduce_range: bool):
        self.nncf = import_nncf()
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
            QuantizationParameters,
        )

        self.images, self.preset, self.fast_bias_correction = images, preset, fast_bias_correction
        self.overflow = OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE
        self.advanced = AdvancedQuantizationParameters(
            overflow_fix=self.overflow, weights_quantization_params=QuantizationParameters(per_channel=per_channel))

    def quantize(self, ov_model, fp32_nodes: Sequence[str] = (), tick=None):
        """Return ``ov_model`` quantized by NNCF with the ONNX nodes ``fp32_nodes`` kept FP32
        (``nncf.IgnoredScope``); ``tick`` is called per calibration item read."""
        nncf = self.nncf
        data = nncf.Dataset(self.images, (lambda x: (tick(), x)[1]) if tick else None)
        ignored = nncf.IgnoredScope(names=ignored_op_names(ov_model, fp32_nodes)) if fp32_nodes else None
        try:
            with _quiet(nncf):
                return nncf.quantize(ov_model, data, preset=nncf.QuantizationPreset(self.preset),
                                     target_device=nncf.TargetDevice.CPU, subset_size=len(self.images),
                                     fast_bias_correction=self.fast_bias_correction,
                                     advanced_parameters=self.advanced, ignored_scope=ignored)
        except VggcError:
            raise
        except Exception as err:  # noqa: BLE001
            raise VggcError(f"nncf.quantize failed: {first_line(err)}") from None


def quantize_ir(model: torch.nn.Module, xml: Path, weights: Path, *, batches: Sequence[torch.Tensor], preset: str,
                fast_bias_correction: bool, per_channel: bool, reduce_range: bool, preprocess, opset: int | None,
                progress, fp32_nodes: Sequence[str] = (), budget=None, threads: int | None = None,
                fp32_onnx: Path | None = None) -> tuple[dict, int]:
    """NNCF-quantize ``model`` and write its IR to ``xml`` and ``weights`` (the caller's atomic temp
    paths); return ``(facts, size of the FP32 ONNX in bytes)``. ``fp32_nodes``: ONNX node names of the
    FP32 export kept FP32; ``budget``: the :func:`vggc.compress.quantize.budget.budget_search` runner
    that chooses them instead (``facts["budget"]``). ``fp32_onnx``: an already checked FP32 ONNX export
    of ``model``, read instead of exporting again."""
    import openvino as ov

    from vggc.export.onnx import DEFAULT_OPSET, export_onnx
    from vggc.export.openvino_backend import ov_version, read_model

    images = [np.ascontiguousarray(b[i:i + 1].float().numpy()) for b in batches for i in range(len(b))]
    nncf_run = NncfSettings(images, preset=preset, fast_bias_correction=fast_bias_correction,
                            per_channel=per_channel, reduce_range=reduce_range)
    nncf = nncf_run.nncf
    with tempfile.TemporaryDirectory(prefix="vggc-nncf-") as d:
        fp32 = Path(fp32_onnx) if fp32_onnx else export_onnx(model, Path(d) / "fp32.onnx",
                                                             input_size=preprocess.input_size,
                                                             opset=opset or DEFAULT_OPSET, fp16=False,
                                                             preprocess=preprocess)
        fp32_size = fp32.stat().st_size
        ov_model = read_model(fp32)
        chosen = None
        if budget is not None:
            chosen = budget(ov_trials(fp32, ov_model, nncf_run, Path(d), threads, preprocess.input_size),
                            [b.float().numpy() for b in batches])
            fp32_nodes = chosen.excluded
        bar = iter(progress(range(len(images)), total=len(images), desc="calibrate"))
        # NNCF reads the items for statistics and again for bias correction; the bar shows the first pass
        q = nncf_run.quantize(ov_model.clone(), fp32_nodes, tick=lambda: next(bar, None))
        for _ in bar:  # close the progress bar
            pass
        facts = {"quantizer": "nncf.quantize (OpenVINO backend)", "nncf": nncf.__version__, "openvino": ov_version(),
                 "preset": preset, "fast_bias_correction": fast_bias_correction,
                 "bias_correction": "fast" if fast_bias_correction else "full (BiasCorrection)",
                 "subset_size": len(images), "target_device": "CPU", "overflow_fix": str(nncf_run.overflow.value),
                 "per_channel": per_channel, "source_graph": "vggc FP32 ONNX export",
                 "opset": opset or DEFAULT_OPSET, "quantized_layers": count_fake_quantized(q),
                 "fp32_nodes": list(fp32_nodes),
                 "ignored_scope": ignored_op_names(ov_model, fp32_nodes) if fp32_nodes else []}
        if chosen is not None:
            facts["budget"] = chosen.to_dict()
        q.set_rt_info("int8", ["vggc", "precision"])
        saved = Path(d) / "int8.xml"
        ov.save_model(q, str(saved), compress_to_fp16=False)
        shutil.copyfile(saved, xml)
        shutil.copyfile(saved.with_suffix(".bin"), weights)
    return facts, fp32_size


def ov_trials(fp32_onnx: Path, ov_model, nncf_run, workdir: Path, threads: int | None, input_size: int
              ) -> "Trials":
    """Return the NNCF :class:`Trials` of vggc's FP32 ONNX export ``fp32_onnx`` (read as ``ov_model``):
    layers are its ONNX node names; each trial runs ``nncf_run`` (a
    :class:`vggc.compress.quantize.backend_openvino.NncfSettings`) with them in ``nncf.IgnoredScope``, saves the IR
    in ``workdir`` and opens it on ``openvino-cpu``."""
    import openvino as ov

    from vggc.compress.quantize.budget import TRIAL_BACKENDS, Trials, quantizable_nodes
    from vggc.export.openvino_backend import open_openvino

    xml = Path(workdir) / "candidate.xml"

    def open_with(excluded: list[str]):
        ov.save_model(nncf_run.quantize(ov_model.clone(), excluded), str(xml), compress_to_fp16=False)
        return open_openvino(xml, threads=threads, input_size=input_size)

    return Trials(quantizable_nodes(fp32_onnx), open_with,
                  lambda: open_openvino(fp32_onnx, threads=threads, input_size=input_size), TRIAL_BACKENDS["openvino"])


@contextlib.contextmanager
def _quiet(nncf):
    """Silence NNCF's log and its rich progress bars (stdout) while it runs: the library never prints."""
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)


def _int8_weights(node, depth: int = 4) -> bool:
    """True if ``node`` (a weight input) is a FakeQuantize or decompresses an int8 constant."""
    import openvino as ov

    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0) in (ov.Type.i8, ov.Type.u8)
    return depth > 0 and kind in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose") and any(
        _int8_weights(node.input_value(i).get_node(), depth - 1) for i in range(node.get_input_size()))


def count_fake_quantized(model) -> dict:
    """Count convolutions (depthwise ones included) and MatMuls with int8 (quantized) weights in an
    NNCF-quantized model; return ``{"conv": n, "linear": n}``."""
    counts = {"conv": 0, "linear": 0}
    for op in model.get_ops():
        kind = LAYER_OPS.get(op.get_type_name())
        if kind and op.get_input_size() > 1 and _int8_weights(op.input_value(1).get_node()):
            counts[kind] += 1
    return counts


# ----------------------------------------------------------------------------- the backend interface
# (vggc.compress.quantize.backend; the format record is vggc.formats' "openvino-ir")

def reason() -> str | None:
    """Return why NNCF + OpenVINO quantization cannot run here, or ``None``."""
    return nncf_reason()


def check(*, mode: str, calib_method: str | None, per_channel: bool, preset: str) -> None:
    """One-line :class:`InputError` for the options ``--backend openvino`` does not take."""
    check_ov_settings(mode=mode, preset=preset, calib_method=calib_method)


def write(job, tmp: Path, companions: list[Path]) -> tuple[dict, int]:
    """Write the IR of ``job`` to ``tmp`` (``.xml``) and ``companions[0]`` (its ``.bin``); return
    ``(facts, FP32 ONNX size in bytes)``."""
    return quantize_ir(job.model, tmp, companions[0], batches=job.batches, preset=job.preset,
                       fast_bias_correction=job.fast_bias_correction, per_channel=job.per_channel,
                       reduce_range=job.reduce_range, preprocess=job.preprocess, opset=job.opset,
                       progress=job.progress, budget=job.budget, threads=job.threads, fp32_onnx=job.fp32_onnx)


def open_for_eval(path: Path, companions: list[Path], *, preprocess, batch_size: int, threads: int | None,
                  which: str | None = None):
    """Return ``(runner, "openvino-cpu")`` for the just-written IR (``companions[0]``: its ``.bin``)."""
    from vggc.export.openvino_backend import open_openvino

    return (open_openvino(path, weights=companions[0], threads=threads, input_size=preprocess.input_size),
            "openvino-cpu")


def manifest_extra(out: Path, facts: dict) -> dict:
    """Return the IR manifest's own keys: its ``.bin`` (name, SHA-256, size), how to load it."""
    from vggc.artifacts import sha256_file

    bin_path = formats.get("openvino-ir").companion_paths(out)[0]
    return {"dynamic_batch": True, "weights_file": {"name": bin_path.name, "sha256": sha256_file(bin_path),
                                                    "size_bytes": bin_path.stat().st_size},
            "load": "openvino.Core().read_model(path)", "fast_backend": "openvino-cpu"}


def settings_extra(job) -> dict:
    """Return the NNCF settings recorded in the manifest."""
    return {"preset": job.preset, "fast_bias_correction": job.fast_bias_correction}


def notes(job) -> list[str]:
    """The OpenVINO backend adds no notes of its own."""
    return []


__all__ = ["DYNAMIC_NOT_OFFERED", "PRESETS", "NncfSettings", "check_ov_settings", "count_fake_quantized",
           "ignored_op_names", "import_nncf", "nncf_reason", "quantize_ir"]
