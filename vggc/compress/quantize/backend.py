"""The interface every quantization backend module implements (one module per ``--backend``).

A backend is a :class:`vggc.formats.Format` record (``quantize`` = its ``--backend`` name, ``module``
= the module) and that module, which defines:

* ``reason() -> str | None``: why it cannot run here (a missing library), or ``None``;
* ``check(*, mode, calib_method, per_channel, preset) -> None``: one-line :class:`InputError` for the
  options it does not take (the shared ones are checked by
  :func:`vggc.compress.quantize.core.check_settings`);
* ``write(job, tmp, companions) -> (facts, fp32_size_bytes)``: quantize ``job`` (a :class:`QuantJob`)
  and write the file to ``tmp`` and its companion files (the record's ``companions``, e.g. an IR's
  ``.bin``) to the paths in ``companions``, all temporaries the caller renames on success; ``facts``
  become the manifest's ``quantization`` (``quantized_layers``, ``fp32_nodes``, ``budget``, ``opset``
  for ONNX graphs, ...);
* ``open_for_eval(path, companions, *, preprocess, batch_size, threads, which) -> (runner, backend)``:
  open the just-written file on ``which`` (one of the record's ``eval_backends``) or the fastest one
  available; return the runner (``predict``, ``close``) and the backend's name;
* ``manifest_extra(out, facts) -> dict``: the format's own manifest keys (``load``, ``fast_backend``,
  ``weights_file``, ...);
* ``settings_extra(job) -> dict`` and ``notes(job) -> list[str]``: its own manifest ``settings`` and
  ``notes`` (may return empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vggc.data import Preprocess
from vggc.formats import Format
from vggc.progress import Progress, no_progress


@dataclass
class QuantJob:
    """One quantization, as a backend's ``write`` receives it: the FP32 ``model`` (from ``weights``,
    architecture ``arch``), ``mode`` (static/dynamic), calibration ``method`` and ``batches``
    (normalised float tensors; empty in dynamic mode), an ``example`` input, the weight/activation
    settings, ``opset`` (ONNX graphs; ``None``: the default), ``fp32_onnx`` (an already checked FP32
    ONNX export of ``model`` to quantize instead of exporting), ``budget`` (the ``--max-drop`` search
    runner, :func:`vggc.compress.quantize.budget.budget_search`, or ``None``)."""

    fmt: Format
    model: torch.nn.Module
    weights: Path
    arch: str
    mode: str
    method: str
    batches: list
    example: torch.Tensor
    preprocess: Preprocess
    per_channel: bool = True
    reduce_range: bool = True
    percentile: float = 99.999
    opset: int | None = None
    threads: int | None = None
    preset: str = "performance"
    fast_bias_correction: bool = True
    fp32_onnx: str | None = None
    budget: Callable | None = None
    progress: Progress = no_progress


REQUIRED = ("reason", "check", "write", "open_for_eval", "manifest_extra", "settings_extra", "notes")
