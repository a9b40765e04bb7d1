"""The ``pt2`` model format (``torch.export`` programs from ``vggc quantize --backend torch``) and its
backends for :mod:`vggc.runtime`.

Format ``pt2`` (``*.pt2``): preprocessing, params, MACs, arch and precision from the manifest
``<file>.pt2.json``; without one, CIFAR-10 preprocessing and a precision read from the serialized
graph. Files are checked before loading (:func:`vggc.compress.quantize.pt2_file.check_pt2_archive`):
nothing in them is unpickled.

Backends (``precision="file"``: a row reports the file's precision, ``int8`` for vggc's files):

* ``torch-int8-compiled``: ``torch.compile`` (Inductor) of the loaded program with *freezing*
  (``torch._inductor.config.freezing``, patched around every call). For a PT2E static program,
  Inductor's int8 passes (registered by importing torchao's X86 quantizer) rewrite every Q/DQ ->
  conv/linear group into oneDNN ``qconv_pointwise`` / ``qlinear_pointwise`` kernels: the fast path.
  Compilation happens in ``open`` (warm-up at batch 1 and at ``options["batch"]``) and is reported as
  ``Runner.compile_seconds``. Freezing specialises each batch size; a batch smaller than an already
  compiled one is zero-padded up to it (rows are independent in eval mode), a larger one compiles
  once more (~15-60 s here), so evaluation's ragged last batch costs no extra compile.
* ``torch-int8-eager``: the program's ``.module()`` run as is. For a static program that is the
  reference Q/DQ graph (int8 *simulated* in float: accurate but slower than FP32); useful as the
  accuracy reference of the compiled path and where no C++ compiler is available.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vggc import formats
from vggc.runtime import (
    FILE_PRECISION,
    Backend,
    ModelFile,
    Runner,
    preprocess_from_meta,
    read_manifest,
    register_backend,
    register_format,
)

FORMAT = "pt2"


def _is_pt2(path: Path) -> bool:
    return path.suffix.lower() in formats.get(FORMAT).suffixes and path.is_file()


def describe_pt2(path: Path) -> ModelFile:
    """Return the :class:`ModelFile` of a ``.pt2`` program (see the module docstring)."""
    from vggc.compress.quantize.pt2_file import check_pt2_archive, pt2_graph_precision

    path = Path(path)
    check_pt2_archive(path)
    meta = read_manifest(path)
    if meta.get("kind") not in (None, FORMAT) and "preprocess" not in meta:
        meta = {}
    pre = preprocess_from_meta({"preprocess": meta.get("preprocess") or {}})
    precision = meta.get("precision") or pt2_graph_precision(path)
    return ModelFile(path=path, format=FORMAT, preprocess=pre, files=[path], params=meta.get("params"),
                     macs=meta.get("macs"), arch=meta.get("arch") or "", meta={**meta, "precision": precision})


class Pt2Runner(Runner):
    """A loaded ``torch.export`` program, eager or ``torch.compile``-d with Inductor freezing."""

    def __init__(self, path: Path, *, compiled: bool, input_size: int = 32, warmup_batches: tuple[int, ...] = (1,),
                 in_channels: int = 3):
        from vggc.compress.quantize.pt2_file import load_pt2, register_inductor_int8_passes

        self.module = load_pt2(path).module()
        self.compiled = compiled
        self.input_size = input_size
        self.in_channels = in_channels
        self._sizes: set[int] = set()
        self.fn = self.module
        t0 = time.perf_counter()
        if compiled:
            register_inductor_int8_passes()
            self.fn = torch.compile(self.module)
            # through predict() with ordinary (non-inference) tensors, like callers' inputs: Dynamo guards
            # on tensor inference-ness, so a warm-up on inference tensors would compile again on first use
            for b in sorted({int(b) for b in warmup_batches if b and int(b) > 0}):
                self.predict(torch.zeros(b, in_channels, input_size, input_size))
            self.compile_seconds = time.perf_counter() - t0

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self.fn(x)
        import torch._inductor.config as inductor_config

        n = int(x.shape[0])
        pad_to = None
        if n not in self._sizes:
            bigger = [s for s in self._sizes if s > n]
            if bigger:
                pad_to = min(bigger)
        if pad_to is not None:
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        new_shape = pad_to is None and n not in self._sizes
        with inductor_config.patch(freezing=True):
            out = self.fn(x)
        if new_shape:
            self._sizes.add(n)
        return out[:n]

    @torch.no_grad()  # not inference_mode: inference tensors would fail Dynamo's guards -> recompiles
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        return self._call(x).float().cpu()

    def close(self) -> None:
        self.fn = self.module = None


def _reason() -> str | None:
    from vggc.compress.quantize.pt2_file import torchao_reason

    return torchao_reason()


def _compiled_reason() -> str | None:
    from vggc.runtime import _compiler_reason

    return _reason() or _compiler_reason()


def _open(model: ModelFile, options: dict, compiled: bool) -> Runner:
    batches = (1, int(options.get("batch") or 0)) if compiled else ()
    return Pt2Runner(model.path, compiled=compiled, input_size=model.preprocess.input_size, warmup_batches=batches)


def open_pt2(path: str | Path, *, compiled: bool, input_size: int = 32,
             warmup_batches: tuple[int, ...] = (1,)) -> Pt2Runner:
    """Open a ``.pt2`` file outside the registry (e.g. a file not yet renamed into place); a compiled
    runner is warmed up (compiled) at ``warmup_batches``."""
    return Pt2Runner(Path(path), compiled=compiled, input_size=input_size,
                     warmup_batches=warmup_batches if compiled else ())


register_format(FORMAT, _is_pt2, describe_pt2)
# registration order = default-backend order for `vggc eval`: the compiled (fast) path first
register_backend(Backend("torch-int8-compiled", FILE_PRECISION, (FORMAT,), "cpu",
                         lambda m, o: _open(m, o, True), available=_compiled_reason))
register_backend(Backend("torch-int8-eager", FILE_PRECISION, (FORMAT,), "cpu",
                         lambda m, o: _open(m, o, False), available=_reason, default=False))
