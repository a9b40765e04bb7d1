"""GPU formats and backends for :mod:`vggc.runtime` (``vggc eval`` / ``vggc bench``).

* format ``tensorrt-engine`` (``.engine`` / ``.plan``, written by ``vggc engine``), backend
  ``tensorrt``: deserialises the engine, checks its manifest's TensorRT version and GPU against
  this machine (one-line error when they differ), and runs it with ``execute_async_v3`` on CUDA
  buffers owned by torch tensors (``set_input_shape`` + ``set_tensor_address(name, t.data_ptr())``)
  on a dedicated CUDA stream. Batches above the profile's max are split; below its min, padded.
* format ``torch-tensorrt`` (``.ep`` with a ``vggc engine --builder torch-tensorrt`` manifest),
  backend ``torch-tensorrt``: ``torch_tensorrt.load(path).module()`` on CUDA.
* backend ``torch-cuda-fp16-compiled`` for state_dicts: FP16 eager model under ``torch.compile``
  (mode ``reduce-overhead``: Inductor + CUDA graphs; option ``compile_mode`` picks e.g.
  ``max-autotune``), FP32 in/out.

All import without tensorrt / torch_tensorrt / CUDA; ``Backend.available`` then says why
("tensorrt not installed: ...", "no CUDA device"). NOT RUN HERE: written without a GPU; the CUDA
execution paths are unverified (see docs/gpu.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vggc.errors import InputError, ModelFormatError, VggcError, first_line
from vggc.export.tensorrt import (
    ENGINE_KIND,
    ENGINE_SUFFIXES,
    TORCH_TRT_KIND,
    TORCH_TRT_SUFFIXES,
    current_environment,
    engine_compatibility,
    import_tensorrt,
    import_torch_tensorrt,
    require_cuda,
    tensorrt_reason,
    torch_tensorrt_reason,
)
from vggc.runtime import (
    FILE_PRECISION,
    Backend,
    ModelFile,
    Runner,
    TorchRunner,
    _cuda_reason,
    _loaded_module,
    preprocess_from_meta,
    read_manifest,
    register_backend,
    register_format,
)

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT8": torch.int8, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "BF16": torch.bfloat16}


# ----------------------------------------------------------------------------- TensorRT engines

def _is_engine(path: Path) -> bool:
    return path.suffix.lower() in ENGINE_SUFFIXES and path.is_file()


def _describe_built(path: Path, fmt: str, kind: str) -> ModelFile:
    meta = read_manifest(path)
    if meta.get("kind") != kind:
        meta = {}  # a stray <stem>.json is not this file's manifest
    doc = {**meta, "precision": meta.get("precision") or "unknown"}
    return ModelFile(path=path, format=fmt, preprocess=preprocess_from_meta(meta), files=[path],
                     params=meta.get("params"), macs=meta.get("macs"), arch=meta.get("arch") or "", meta=doc)


def describe_engine(path: Path) -> ModelFile:
    """A TensorRT engine file; facts (precision, preprocess, params, build GPU) from its manifest."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: file is empty")
    return _describe_built(path, "tensorrt-engine", ENGINE_KIND)


def _trt_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    if name not in _TORCH_DTYPES:
        raise ModelFormatError(f"engine tensor type {name} is not supported by the vggc runner")
    return _TORCH_DTYPES[name]


class TensorRTRunner(Runner):
    """One deserialised engine + execution context; ``predict`` takes any batch size."""

    def __init__(self, path: Path, device: int = 0):
        trt = import_tensorrt()
        require_cuda()
        from vggc.export.tensorrt import _make_logger

        t0 = time.perf_counter()
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            why = self._logger.errors[-1] if self._logger.errors else "deserialize_cuda_engine returned None"
            raise ModelFormatError(f"{path}: TensorRT cannot load this engine ({why[:160]})")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFormatError(f"{path}: expected one input and one output tensor, found {ins} and {outs}")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_dtype = _trt_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _trt_dtype(self.engine.get_tensor_dtype(self.output_name))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.stream = torch.cuda.Stream(device=self.device)
        self.compile_seconds = time.perf_counter() - t0

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # everything on self.stream: the copy in, the output allocation, the engine, so no cross-stream races
        with torch.cuda.stream(self.stream):
            xin = x.to(self.device, dtype=self.input_dtype, non_blocking=True).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(xin.shape)):
                raise VggcError(f"TensorRT rejected input shape {tuple(xin.shape)} "
                                f"(engine batch range {self.min_batch}..{self.max_batch})")
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                              device=self.device)
            self.context.set_tensor_address(self.input_name, xin.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise VggcError("TensorRT execute_async_v3 failed")
            result = out.float().cpu()  # synchronises with self.stream's work (blocking D2H copy)
        self.stream.synchronize()
        return result

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        parts = []
        for start in range(0, n, self.max_batch):
            chunk = x[start:start + self.max_batch]
            k = chunk.shape[0]
            if k < self.min_batch:  # below the profile: pad with copies of the first row, drop them after
                chunk = torch.cat([chunk, chunk[:1].expand(self.min_batch - k, *chunk.shape[1:])])
            parts.append(self._run(chunk)[:k])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None


def check_engine_here(model: ModelFile, device: int = 0) -> str | None:
    """Raise :class:`InputError` when ``model``'s manifest says it was built for another TensorRT/GPU;
    return a warning (same compute capability, different GPU model; or no manifest) or ``None``."""
    trt = import_tensorrt()
    require_cuda()
    error, warning = engine_compatibility(model.meta, current_environment(trt, device))
    if error:
        raise InputError(f"{model.path.name}: {error}")
    return warning


def _open_engine(model: ModelFile, options: dict) -> Runner:
    device = int(options.get("device_id", 0))
    warning = check_engine_here(model, device)
    runner = TensorRTRunner(model.path, device)
    runner.warning = warning
    return runner


# ----------------------------------------------------------------------------- Torch-TensorRT programs

def _is_torch_trt(path: Path) -> bool:
    return path.suffix.lower() in TORCH_TRT_SUFFIXES and path.is_file() and \
        read_manifest(path).get("kind") == TORCH_TRT_KIND


def describe_torch_trt(path: Path) -> ModelFile:
    return _describe_built(Path(path), "torch-tensorrt", TORCH_TRT_KIND)


class TorchTRTRunner(Runner):
    """A saved Torch-TensorRT ExportedProgram (FP32 in/out) on CUDA."""

    def __init__(self, path: Path, device: int = 0):
        tt = import_torch_tensorrt()
        require_cuda("Torch-TensorRT")
        t0 = time.perf_counter()
        self.device = torch.device("cuda", device)
        try:
            self.module = tt.load(str(path)).module()
        except Exception as err:  # noqa: BLE001
            first = first_line(err, 160)
            raise ModelFormatError(f"{path}: torch_tensorrt cannot load it ({first})") from None
        self.compile_seconds = time.perf_counter() - t0

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self.device, torch.float32).contiguous())
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().cpu()

    def close(self) -> None:
        self.module = None


# ----------------------------------------------------------------------------- torch.compile FP16 on CUDA

@dataclass(frozen=True)
class KeyedBackend(Backend):
    """A backend whose registry key is not ``<name>-<precision>`` (keeps ``precision`` a plain
    precision for result tables while the key reads ``torch-cuda-fp16-compiled``)."""

    key_name: str = ""

    @property
    def key(self) -> str:
        return self.key_name or Backend.key.fget(self)


COMPILE_MODE = "reduce-overhead"  # Inductor + CUDA graphs; "max-autotune" also autotunes kernels (slow compile)


def _open_compiled_fp16(model: ModelFile, options: dict) -> Runner:
    mode = options.get("compile_mode") or COMPILE_MODE
    if mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        raise InputError(f"compile_mode {mode!r}: choose default, reduce-overhead, max-autotune, "
                         "max-autotune-no-cudagraphs")
    return TorchRunner(_loaded_module(model), "cuda", torch.float16, None, compile_mode=mode)


register_format("tensorrt-engine", _is_engine, describe_engine)
register_backend(Backend("tensorrt", FILE_PRECISION, ("tensorrt-engine",), "cuda", _open_engine,
                         available=tensorrt_reason))
register_format("torch-tensorrt", _is_torch_trt, describe_torch_trt)
register_backend(Backend("torch-tensorrt", FILE_PRECISION, ("torch-tensorrt",), "cuda",
                         lambda m, o: TorchTRTRunner(m.path, int(o.get("device_id", 0))),
                         available=torch_tensorrt_reason))
register_backend(KeyedBackend("torch-cuda-compiled", "fp16", ("state_dict",), "cuda", _open_compiled_fp16,
                              available=_cuda_reason, key_name="torch-cuda-fp16-compiled"))
