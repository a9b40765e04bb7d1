"""PyTorch INT8 quantization (torchao), saved as a reloadable ``torch.export`` program (``.pt2``).

``torch.ao.quantization`` is deprecated in torch 2.14; both paths here use torchao:

* **static** (:func:`quantize_static_pt2e`): PT2E. ``torch.export.export(model).module()`` with a
  dynamic batch dimension, ``prepare_pt2e`` with :class:`X86InductorQuantizer` (conv-BN folded,
  activations uint8 per tensor, weights int8 per output channel), calibration on the given
  batches, ``convert_pt2e``, then ``torch.export.export`` again and ``torch.export.save``. The
  saved program is a graph of ``quantized_decomposed.quantize/dequantize`` ops around float
  conv/linear ("reference" Q/DQ form): run as is (eager) it *simulates* INT8 in float and is slower
  than FP32; ``torch.compile`` with Inductor *freezing* pattern-matches each Q/DQ/conv group into
  oneDNN ``qconv_pointwise`` / ``qlinear_pointwise`` kernels, the fast path
  (:mod:`vggc.export.pt2_backend`).
* **dynamic** (:func:`quantize_dynamic_torchao`): ``torchao.quantization.quantize_`` with
  :class:`Int8DynamicActivationInt8WeightConfig`, which only replaces ``nn.Linear`` weights (int8
  per row; activations quantized per token at run time). Convolutions stay FP32, so on a CIFAR VGG16
  (13 convs, a 512-wide head) it changes size and speed very little. The tensor-subclass weights are
  flattened into plain tensors with ``torchao.utils.unwrap_tensor_subclass`` before export, so the
  ``.pt2`` holds no pickled objects (see :func:`check_pt2_archive`).

``reduce_range``: on x86 CPUs without VNNI (this AVX2-only machine), oneDNN's u8 x s8 dot product
(``vpmaddubsw``) adds pairs of products in int16 and can saturate; the X86 quantizer documents
``reduce_range=True`` (7-bit activations) for such CPUs. Measured here on 1,000 test images: 87.6%
compiled without it vs 89.3% with it (FP32 89.3%).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.quantize.budget import Trials
from torch import nn

from vggc.compress.quantize.pt2_file import _require_torchao, save_pt2, torchao_reason
from vggc.compress.quantize.pt2e_fp32 import check_fp32_modules, pass_through_modules
from vggc.errors import InputError, UnavailableError, VggcError, first_line
from vggc.limits import MAX_BATCH

DEFAULT_PERCENTILE = 99.999


# ----------------------------------------------------------------------------- observers

def _percentile_observer_cls():
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        """Histogram of all calibration activations; range clipped at the ``percentile``-th value
        (and at ``100 - percentile`` on the negative side when the data has one)."""

        def __init__(self, *args, percentile: float = DEFAULT_PERCENTILE, **kwargs):
            super().__init__(*args, **kwargs)
            self.percentile = float(percentile)

        @torch.jit.export
        def calculate_qparams(self):
            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            hist = self.histogram.double()
            total = hist.sum()
            if total <= 0:
                return self._calculate_qparams(self.min_val, self.max_val)
            cdf = torch.cumsum(hist, 0) / total
            edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1, dtype=torch.float64)
            p = self.percentile / 100.0
            hi = int(torch.searchsorted(cdf, torch.tensor([p], dtype=torch.float64)).clamp(max=self.bins - 1))
            new_max = torch.tensor(float(edges[hi + 1]), dtype=torch.float32)
            new_min = self.min_val.detach().clone()
            if float(self.min_val) < 0:
                lo = int(torch.searchsorted(cdf, torch.tensor([1.0 - p], dtype=torch.float64)).clamp(max=self.bins - 1))
                new_min = torch.tensor(float(edges[lo]), dtype=torch.float32)
            return self._calculate_qparams(new_min, new_max)

    return PercentileObserver


def static_quantization_config(calib_method: str = "entropy", reduce_range: bool = True,
                               percentile: float = DEFAULT_PERCENTILE):
    """Return the X86 Inductor quantization config with the activation observer for ``calib_method``:
    ``minmax`` -> MinMaxObserver, ``entropy`` -> HistogramObserver (the X86 default: searches the
    histogram for the range with the least quantization error), ``percentile`` -> a histogram clipped
    at ``percentile``."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    cfg = get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    if calib_method == "minmax":
        ctr = MinMaxObserver.with_args(eps=2**-12)
    elif calib_method == "entropy":
        ctr = HistogramObserver.with_args(eps=2**-12)
    elif calib_method == "percentile":
        ctr = _percentile_observer_cls().with_args(eps=2**-12, percentile=percentile)
    else:
        raise ValueError(f"unknown calibration method {calib_method!r}")
    act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(cfg, input_activation=act, output_activation=act)


# ----------------------------------------------------------------------------- export helpers

def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _export(model: nn.Module, example: torch.Tensor):
    try:
        return torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    except Exception as err:  # noqa: BLE001 - export raises many types; report one line
        first = first_line(err, 200)
        raise VggcError(f"torch.export failed: {first}") from None


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> int:
    """Delete parameters/buffers the graph no longer reads (``convert_pt2e`` leaves the FP32 weights
    behind beside their folded int8 copies, which would make the saved file 5x larger); return
    how many were removed."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    removed = 0
    for name in names:
        if name in used:
            continue
        mod, _, attr = name.rpartition(".")
        owner = gm.get_submodule(mod) if mod else gm
        with contextlib.suppress(AttributeError):
            delattr(owner, attr)
            removed += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return removed


def _count_quantized(gm: torch.fx.GraphModule) -> dict:
    """Count conv/linear nodes whose weight comes through a dequantize op (i.e. int8 weights)."""
    counts = {"conv": 0, "linear": 0}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = str(n.target)
        kind = "conv" if "conv" in name else "linear" if "linear" in name else None
        if kind and len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node) and "dequantize" in str(n.args[1].target):
            counts[kind] += 1
    return counts


def calibrate_convert(gm: torch.fx.GraphModule, batches: Iterable[torch.Tensor], *, calib_method: str,
                       reduce_range: bool, percentile: float, fp32_modules: Sequence[str] = ()):
    """Return ``(converted graph module, calibrated images)``: ``gm`` (an exported FP32 module) prepared
    with :class:`X86InductorQuantizer`, calibrated on ``batches`` and converted; the modules named in
    ``fp32_modules`` get no quantization config (``set_module_name_qconfig(name, None)``), and neither
    do the pooling/flatten modules feeding them (:func:`pass_through_modules`), so their ops keep FP32
    weights and FP32 inputs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    quantizer = X86InductorQuantizer().set_global(
        static_quantization_config(calib_method, reduce_range=reduce_range, percentile=percentile))
    for name in [*fp32_modules, *pass_through_modules(gm, fp32_modules)]:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(gm, quantizer)
    n_images = 0
    with torch.no_grad():
        for x in batches:
            prepared(x)
            n_images += int(x.shape[0])
    if n_images == 0:
        raise VggcError("static quantization needs at least one calibration batch")
    converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    return converted, n_images


def export_module(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Return ``torch.export.export(model).module()`` (dynamic batch): the graph PT2E prepares."""
    _require_torchao()
    return _export(model.eval().float().cpu(), example[:2].clone().contiguous()).module()


def quantize_static_pt2e(model: nn.Module, batches: Iterable[torch.Tensor], example: torch.Tensor, *,
                         calib_method: str = "entropy", reduce_range: bool = True,
                         percentile: float = DEFAULT_PERCENTILE, fp32_modules: Sequence[str] = ()):
    """Return ``(exported_program, facts)``: ``model`` statically quantized with PT2E + X86InductorQuantizer,
    calibrated on ``batches`` (normalised float tensors), re-exported with a dynamic batch. The conv/linear
    modules named in ``fp32_modules`` (e.g. ``features.0``) stay FP32 (``facts["fp32_nodes"]``), with the
    pooling modules feeding them (``facts["fp32_pass_through"]``, :mod:`vggc.compress.quantize.pt2e_fp32`)."""
    _require_torchao()
    model = model.eval().float().cpu()
    fp32_modules = check_fp32_modules(model, fp32_modules)
    example = example[:2].clone().contiguous()
    gm = _export(model, example).module()
    also = pass_through_modules(gm, fp32_modules)
    converted, n_images = calibrate_convert(gm, batches, calib_method=calib_method, reduce_range=reduce_range,
                                            percentile=percentile, fp32_modules=fp32_modules)
    counts = _count_quantized(converted)
    ep = _export(converted, example)
    return ep, {"quantized_layers": counts, "calibrated_images": n_images, "fp32_nodes": fp32_modules,
                "fp32_pass_through": also}


def torch_trials(model, batches: Sequence[torch.Tensor], example: torch.Tensor, *, calib_method: str,
                 reduce_range: bool, percentile: float) -> "Trials":
    """Return the PT2E :class:`Trials` of ``model``: layers are torch module names (``features.0``);
    each trial calibrates a copy of one FP32 export with those modules kept FP32 and runs the converted
    program eagerly (``torch-int8-eager``: no compile per trial)."""
    import copy

    from vggc.compress.quantize.budget import TRIAL_BACKENDS, Trials, _EagerRunner
    from vggc.compress.quantize.pt2e_fp32 import check_fp32_modules, quantizable_modules

    model = model.eval().float().cpu()
    gm = export_module(model, example)

    def open_with(excluded: list[str]) -> _EagerRunner:
        converted, _ = calibrate_convert(copy.deepcopy(gm), batches, calib_method=calib_method,
                                            reduce_range=reduce_range, percentile=percentile,
                                            fp32_modules=check_fp32_modules(model, excluded))
        return _EagerRunner(converted)

    return Trials(quantizable_modules(model), open_with, lambda: _EagerRunner(model), TRIAL_BACKENDS["torch"])


def quantize_to_file(model: nn.Module, tmp: Path, *, mode, batches, method, reduce_range, percentile, example,
                     weights: Path, progress, budget=None) -> tuple[dict, int]:
    """Quantize a copy of ``model`` (``mode`` static/dynamic) and save the ``.pt2`` program to ``tmp``;
    return ``(facts, size of the FP32 weights file)``. ``budget`` (static only): the
    :func:`vggc.compress.quantize.budget.budget_search` runner that picks the modules kept FP32."""
    import copy

    model = copy.deepcopy(model)
    if mode == "static":
        chosen = None
        if budget is not None:
            chosen = budget(torch_trials(model, batches, example, calib_method=method, reduce_range=reduce_range,
                                         percentile=percentile), [b.numpy() for b in batches])
        ep, facts = quantize_static_pt2e(model, progress(batches, total=len(batches), desc="calibrate"),
                                         example, calib_method=method, reduce_range=reduce_range,
                                         percentile=percentile, fp32_modules=chosen.excluded if chosen else ())
        if chosen is not None:
            facts["budget"] = chosen.to_dict()
    else:
        ep, facts = quantize_dynamic_torchao(model, example)
    save_pt2(ep, tmp)
    facts["quantizer"] = "X86InductorQuantizer (PT2E)" if mode == "static" else \
        "torchao quantize_(Int8DynamicActivationInt8WeightConfig)"
    return facts, Path(weights).stat().st_size


def quantize_dynamic_torchao(model: nn.Module, example: torch.Tensor):
    """Return ``(exported_program, facts)``: ``model`` with int8 dynamic-activation / int8-weight
    ``nn.Linear`` layers (torchao ``quantize_``); convolutions untouched."""
    _require_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.utils import unwrap_tensor_subclass

    model = model.eval().float().cpu()
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # set_inductor_config=False: quantize_ would otherwise change global Inductor settings in this process
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    unwrap_tensor_subclass(model)
    ep = _export(model, example[:2].clone().contiguous())
    return ep, {"quantized_layers": {"conv": 0, "linear": n_linear}, "float_layers": {"conv": n_conv}}


# ----------------------------------------------------------------------------- the backend interface
# (vggc.compress.quantize.backend; the format record is vggc.formats' "pt2")

def reason() -> str | None:
    """Return why torch (torchao PT2E) quantization cannot run here, or ``None``."""
    return torchao_reason()


def check(*, mode: str, calib_method: str | None, per_channel: bool, preset: str) -> None:
    """One-line :class:`InputError` for the options ``--backend torch`` does not take."""
    if mode == "static" and not per_channel:
        raise InputError("--per-tensor: the torch backend's X86 Inductor int8 lowering handles per-channel "
                         "weights only (per-tensor weights would run as float convolutions); use "
                         "--per-channel or --backend onnxruntime")


def write(job, tmp: Path, companions: list[Path]) -> tuple[dict, int]:
    """Write the ``.pt2`` program of ``job`` to ``tmp``; return ``(facts, size of the FP32 weights file)``."""
    return quantize_to_file(job.model, tmp, mode=job.mode, batches=job.batches, method=job.method,
                            reduce_range=job.reduce_range, percentile=job.percentile, example=job.example,
                            weights=job.weights, progress=job.progress, budget=job.budget)


def open_for_eval(path: Path, companions: list[Path], *, preprocess, batch_size: int, threads: int | None,
                  which: str | None = None):
    """Return ``(runner, backend)``: the just-written ``.pt2`` on ``which``, or compiled where a C++
    compiler exists and eager otherwise (``which`` None/``auto``)."""
    from vggc.export.pt2_backend import _compiled_reason, open_pt2

    if which == "torch-int8-compiled":
        why = _compiled_reason()
        if why:
            raise UnavailableError(f"torch-int8-compiled: {why}")
    compiled = which == "torch-int8-compiled" or (which in (None, "auto") and _compiled_reason() is None)
    runner = open_pt2(path, compiled=compiled, input_size=preprocess.input_size, warmup_batches=(batch_size,))
    return runner, "torch-int8-compiled" if compiled else "torch-int8-eager"


def manifest_extra(out: Path, facts: dict) -> dict:
    """Return the ``.pt2`` manifest's own keys."""
    return {"dynamic_batch": True, "load": "import torchao; torch.export.load(path).module()",
            "fast_backend": "torch-int8-compiled"}


def settings_extra(job) -> dict:
    """The torch backend adds no settings of its own."""
    return {}


def notes(job) -> list[str]:
    """The torch backend adds no notes of its own."""
    return []
