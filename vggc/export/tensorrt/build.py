"""TensorRT engines (FP16 / INT8) from the exported ONNX files, checked layer by layer.

:func:`build_engine` turns an ONNX file into a serialized TensorRT engine (``.engine``/``.plan``)
with one optimisation profile over a batch range, an optional timing cache file, and a manifest
``<engine>.json`` (TensorRT version, GPU, compute capability, profile, precision, per-layer
precision summary, source ONNX SHA-256). :func:`build_torch_tensorrt` does the same from a
state_dict through Torch-TensorRT (``torch_tensorrt.compile(ir="dynamo")``).

Precision comes from the ONNX file, not from builder flags. TensorRT 11 removed
``BuilderFlag.FP16``/``INT8``: every network is strongly typed ("Migrating from TensorRT 10.x to
11.x: Strongly Typed Networks Are Now Required", docs.nvidia.com/deeplearning/tensorrt/latest/
api/migration/tensorrt-10x-to-11x-python-api-reference.html). So

* ``--precision fp16`` needs the FP16 ONNX of ``vggc export --fp16`` (FP16 graph, FP32 I/O);
* ``--precision int8`` needs a QDQ ONNX (``vggc quantize --backend onnxruntime --mode static``)
  with symmetric signed-int8 Q/DQ (TensorRT's explicit quantization).

The network is always strongly typed: created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
on TensorRT 10.x, with no flag on 11+ (where it is the only mode); TensorRT < 10 is refused. No
``BuilderFlag.FP16``/``INT8`` is ever set (11 removed them).

After building, the engine is deserialised and its layers are read with the engine inspector
(``ProfilingVerbosity.DETAILED`` + ``get_engine_information(LayerInformationFormat.JSON)``, with an
execution context whose input shape is set: without one, dynamic-shape engines report
"N/A due to dynamic shapes"). Every convolution / GEMM layer must run in the requested
precision: a silently FP32 engine (the classic trap of weak typing) is refused and nothing is
written (``allow_mixed`` keeps a partly-FP32 engine, flagged in its manifest).

API surface checked against the TensorRT Python bindings at NVIDIA/TensorRT@a892d22 (11.1,
python/src/infer/pyCore.cpp, python/src/parsers/pyOnnx.cpp) and the 10.x docs: ``Builder``,
``create_network(flags)``, ``OnnxParser.parse_from_file`` / ``num_errors`` / ``get_error(i).desc()``,
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``,
``create_optimization_profile`` + ``set_shape``, ``add_optimization_profile``,
``create_timing_cache(bytes)`` / ``set_timing_cache(cache, ignore_mismatch=False)`` /
``get_timing_cache().serialize()``, ``profiling_verbosity``, ``build_serialized_network``,
``Runtime.deserialize_cuda_engine``, ``create_engine_inspector`` (+ ``execution_context``),
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` /
``get_tensor_profile_shape``. The inspector JSON schema differs by version: 10.x puts the type in
``"Format/Datatype"`` ("Row major linear FP32 format", "Half", "Thirty-two wide channel vectorized
row major Int8 format"), 11.x may split it into ``"Format"`` and ``"DataType"``/``"Datatype"`` and
replaces ``"Bindings"`` with ``"I/O Tensors"`` (tensorrt-10x-to-11x-IEngineInspector.html); the
parser here reads all of them.

NOT RUN HERE: no machine this was written on has TensorRT or a GPU. The orchestration is tested
with a fake ``tensorrt`` module (tests/test_gpu_deploy.py); the real API calls are unverified.
"""


from __future__ import annotations

import time
from pathlib import Path

from vggc.artifacts import atomic_path, sha256_file, write_manifest_or_remove
from vggc.errors import InputError, UnavailableError, VggcError, first_line
from vggc.export.tensorrt.inspector import check_layer_precision, inspect_engine, summarize_layers
from vggc.export.tensorrt.probe import (
    INSTALL_HINT,
    _make_logger,
    current_environment,
    import_tensorrt,
    require_cuda,
    trt_major,
)
from vggc.export.tensorrt.qdq import PRECISIONS, check_source_precision, onnx_facts
from vggc.limits import MAX_BATCH

ENGINE_SUFFIXES = (".engine", ".plan")
ENGINE_KIND = "tensorrt-engine"


def check_batch_range(min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """Return the range if ``1 <= min <= opt <= max <= 65536``; raise :class:`InputError` otherwise."""
    vals = (min_batch, opt_batch, max_batch)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise InputError(f"batch sizes must be integers (got min {min_batch}, opt {opt_batch}, max {max_batch})")
    if not 1 <= min_batch <= opt_batch <= max_batch <= MAX_BATCH:
        raise InputError(f"--min-batch {min_batch} --opt-batch {opt_batch} --max-batch {max_batch}: need "
                         f"1 <= min <= opt <= max <= {MAX_BATCH}")
    return vals



def network_typing(trt) -> int:
    """Return the ``create_network`` flags of a strongly typed network (precision from the ONNX file):
    0 on TensorRT 11+, where every network is strongly typed (its ``STRONGLY_TYPED`` flag is
    deprecated); ``1 << STRONGLY_TYPED`` on 10.x. There is no weakly typed branch: TensorRT 11 removed
    ``BuilderFlag.FP16``/``INT8``, and an older TensorRT without ``STRONGLY_TYPED`` is refused
    (:class:`UnavailableError`)."""
    if trt_major(trt) >= 11:
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if trt_major(trt) < 10 or flag is None:
        raise UnavailableError(f"TensorRT {trt.__version__}: vggc builds strongly typed networks and needs "
                               f"TensorRT >= 10: {INSTALL_HINT}")
    return 1 << int(flag)


def attach_timing_cache(config, logger, data: bytes) -> tuple[object, str | None]:
    """Attach a timing cache made from ``data`` to ``config``; return ``(cache, why_rejected)``.

    A cache from another TensorRT version or a corrupt file is refused inside
    ``create_timing_cache`` (TensorRT logs an error and may return None or raise) or by
    ``set_timing_cache`` (False, e.g. another GPU). Either way the build goes on with a new, empty
    cache, ``why_rejected`` says why (TensorRT's logged error), and those errors are taken back out
    of ``logger.errors`` so they are not mistaken for a build failure."""
    mark = len(logger.errors)
    why = None
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as err:  # noqa: BLE001 - pybind raises RuntimeError/TypeError
            why = first_line(err)
        if why is None and (cache is None or len(logger.errors) > mark):
            why = logger.errors[mark] if len(logger.errors) > mark else "create_timing_cache returned None"
        if why is None and not config.set_timing_cache(cache, ignore_mismatch=False):
            why = logger.errors[mark] if len(logger.errors) > mark else "set_timing_cache refused it"
        del logger.errors[mark:]
        if why is None:
            return cache, None
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise VggcError("TensorRT refused a new, empty timing cache")
    return cache, why


def _check_out(out: Path, suffixes: tuple[str, ...], source: Path) -> None:
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if out.suffix not in suffixes:
        raise InputError(f"--out {out}: expected a file ending in {' or '.join(suffixes)}")
    if source.exists() and out.exists() and out.resolve() == source.resolve():
        raise InputError(f"--out {out}: would overwrite the input")


def _check_timing_cache(timing_cache) -> Path | None:
    if timing_cache is None:
        return None
    tc = Path(timing_cache)
    if tc.is_dir():
        raise InputError(f"--timing-cache {tc}: is a directory, expected a file")
    return tc


def _read_timing_cache(tc: Path | None) -> bytes:
    if tc is None or not tc.is_file():
        return b""
    return tc.read_bytes()


def _write_timing_cache(config, tc: Path | None) -> bool:
    if tc is None:
        return False
    cache = config.get_timing_cache()
    if cache is None:
        return False
    data = bytes(memoryview(cache.serialize()))
    with atomic_path(tc) as tmp:
        tmp.write_bytes(data)
    return True


def _finish_engine(trt, engine_bytes: bytes, out: Path, *, precision: str, builder: str, allow_mixed: bool,
                   require_verified: bool, env: dict, inputs: dict, settings: dict, extra: dict,
                   build_seconds: float) -> dict:
    """Inspect ``engine_bytes``, enforce the precision check, write engine + manifest atomically."""
    ins = inspect_engine(trt, engine_bytes)
    check = check_layer_precision(ins["info"], precision)
    summary = summarize_layers(ins["info"])
    if not check.ok:
        # never kept: no conv/GEMM layer in the requested precision. Kept only with allow_mixed: some layers
        # in another precision, or (for builders that demand verification) layers whose type is unknown.
        fatal = check.none_matching or (bool(check.offending) and not allow_mixed) or \
            (not check.verified and require_verified and not allow_mixed)
        if fatal:
            hint = "" if check.none_matching else "; pass --allow-mixed to keep it (flagged in its manifest)"
            raise VggcError(f"{precision.upper()} engine check failed: {check.message()}{hint}; {out} not written")
    with atomic_path(out) as tmp:
        tmp.write_bytes(engine_bytes)
    inp = ins["inputs"][0] if ins["inputs"] else {}
    outp = ins["outputs"][0] if ins["outputs"] else {}
    doc = {"precision": precision, "builder": builder, "build_environment": env,
           "profile": {"input": inp.get("name"), **inp.get("profile", {})},
           "input_name": inp.get("name"), "output_name": outp.get("name"),
           "input_dtype": inp.get("dtype"), "output_dtype": outp.get("dtype"),
           "output_shape": outp.get("shape"), "min_batch": settings.get("min_batch"),
           "opt_batch": settings.get("opt_batch"), "max_batch": settings.get("max_batch"),
           "layer_precision": {k: v for k, v in summary.items() if k != "compute"},
           "precision_check": check.to_dict(), "num_layers": ins["num_layers"], **extra}
    write_manifest_or_remove(out, kind=ENGINE_KIND, inputs=inputs, settings=settings,
                             metrics={"build_seconds": round(build_seconds, 2)}, extra=doc)
    return {"path": str(out), "manifest": str(out.with_name(out.name + ".json")), "precision": precision,
            "builder": builder, "size_bytes": out.stat().st_size, "build_seconds": round(build_seconds, 2),
            "precision_check": check.to_dict(), "layer_precision": doc["layer_precision"], **env,
            "profile": doc["profile"], **{k: v for k, v in extra.items() if k.startswith("timing_cache_")}}


def build_engine(onnx_path, out, *, precision: str, min_batch: int = 1, opt_batch: int = 64, max_batch: int = 256,
                 workspace_gib: float = 4, timing_cache=None, allow_mixed: bool = False, device: int = 0) -> dict:
    """Build a TensorRT engine from an FP16 or QDQ-INT8 ONNX file; return the facts ``vggc engine`` prints.

    Checks (before anything is built): ``out`` ends in .engine/.plan, the ONNX precision
    (manifest, else embedded metadata, else graph) equals ``precision``, an INT8 file is symmetric
    int8 QDQ, the batch range is sane. Then: strongly typed network (TensorRT 10/11), one
    optimisation profile ``min/opt/max x C x H x W``, ``workspace_gib`` workspace pool, DETAILED
    profiling verbosity, the timing cache ``timing_cache`` (read if it exists, written back; one
    TensorRT rejects - other version, other GPU, corrupt - is reported in ``timing_cache_rejected_why``
    and the build goes on without it),
    engine-inspector precision check, engine + ``<out>.json`` written atomically.

    Raises :class:`InputError` (bad input), :class:`UnavailableError` (no tensorrt / CUDA),
    :class:`VggcError` (parse/build failure, precision check failed).
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such file")
    _check_out(out, ENGINE_SUFFIXES, onnx_path)
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    check_batch_range(min_batch, opt_batch, max_batch)
    if not 0 < float(workspace_gib) <= 1024:
        raise InputError(f"--workspace {workspace_gib}: must be in (0, 1024] GiB")
    tc = _check_timing_cache(timing_cache)
    facts = onnx_facts(onnx_path)
    check_source_precision(facts, precision, onnx_path)
    _, c, h, w = facts["input_shape"]

    trt = import_tensorrt()
    require_cuda()
    env = current_environment(trt, device)
    logger = _make_logger(trt)
    flags = network_typing(trt)
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = [parser.get_error(i).desc() for i in range(parser.num_errors)] or logger.errors or ["unknown error"]
            raise VggcError(f"TensorRT cannot parse {onnx_path}: {first_line(str(errs[0]))}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(float(workspace_gib) * 2**30))
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profile = builder.create_optimization_profile()
        profile.set_shape(facts["input_name"], (min_batch, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
        # a cache from another GPU/TensorRT version or a corrupt one: reported, built without it, overwritten
        _cache, cache_rejected = attach_timing_cache(config, logger, _read_timing_cache(tc))
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - t0
        if serialized is None:
            why = logger.errors[-1] if logger.errors else "build_serialized_network returned None"
            raise VggcError(f"TensorRT engine build failed: {why[:200]}")
        engine_bytes = bytes(memoryview(serialized))
        cache_written = _write_timing_cache(config, tc)
    except VggcError:
        raise
    except Exception as err:  # noqa: BLE001 - pybind raises TypeError/RuntimeError/... : one line
        raise VggcError(f"TensorRT engine build failed: {first_line(err)}") from None

    mf = facts["model"]
    settings = {"precision": precision, "min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
                "workspace_gib": workspace_gib, "timing_cache": str(tc) if tc else None, "typing": "strong",
                "allow_mixed": allow_mixed, "device": device}
    extra = {"typing": "strong", "preprocess": mf.preprocess.to_dict(), "params": mf.params, "macs": mf.macs,
             "arch": mf.arch, "timing_cache_written": cache_written, "timing_cache_rejected": cache_rejected is not None,
             "timing_cache_rejected_why": cache_rejected,
             "source_onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path),
                             "precision": facts["precision"], "precision_source": facts["precision_source"]}}
    return _finish_engine(trt, engine_bytes, out, precision=precision, builder="tensorrt", allow_mixed=allow_mixed,
                          require_verified=True, env=env, inputs={"onnx": onnx_path}, settings=settings,
                          extra=extra, build_seconds=build_s)

