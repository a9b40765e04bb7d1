"""A stand-in for the ``tensorrt`` module with the API surface vggc's engine builder uses.

Its classes carry the REAL class names (``IBuilderConfig``, ``ICudaEngine``, ...), its methods the
real parameter names, and its instances refuse attributes their class does not declare, so vggc
can only call and set what is declared here. tests/test_trt_api.py checks every declared name
against the real TensorRT 10.x and 11.x bindings (classes, methods and their parameters,
properties and whether they are writable, enum members), so this fake and the real API cannot
drift apart. ``calls`` (a dict) records what was called; it is the only helper name.
"""

from __future__ import annotations

import json
import types

HELPER_NAMES = {"calls"}  # module attributes that are test helpers, not TensorRT names


class _Strict:
    """Instances accept only attributes their class declares (or private ``_x`` ones)."""

    def __setattr__(self, name, value):
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(f"fake tensorrt: {type(self).__name__} has no attribute {name!r}")
        object.__setattr__(self, name, value)


class _Members:
    """An enum stand-in: members are class attributes whose value is their qualified name."""


def _enum(name: str, members: dict):
    return type(name, (_Members,), dict(members))


def fake_tensorrt(version="10.8.0.43", strongly_typed=True, layers=None, parse_ok=True, cache_mode="ok"):
    """A fake ``tensorrt`` module. ``cache_mode``: ``ok``; ``corrupt`` (create_timing_cache logs an
    error and returns None for non-empty data, as TensorRT does for another version's or a damaged
    cache); ``mismatch`` (set_timing_cache returns False for a non-empty cache: another GPU)."""
    calls: dict = {"input_shapes": [], "caches_set": []}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class ILogger:  # subclassed by vggc (which adds attributes), like the real pybind11 class
        Severity = _enum("Severity", {m: i for i, m in enumerate(("INTERNAL_ERROR", "ERROR", "WARNING", "INFO",
                                                                  "VERBOSE"))})

        def __init__(self):
            pass

        def log(self, severity, msg):
            pass

    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                              {"STRONGLY_TYPED": 1} if strongly_typed else {})
    trt.MemoryPoolType = _enum("MemoryPoolType", {"WORKSPACE": "WORKSPACE"})
    trt.ProfilingVerbosity = _enum("ProfilingVerbosity", {"DETAILED": "ProfilingVerbosity.DETAILED"})
    trt.TensorIOMode = _enum("TensorIOMode", {"INPUT": "INPUT", "OUTPUT": "OUTPUT"})
    trt.LayerInformationFormat = _enum("LayerInformationFormat", {"JSON": "JSON"})
    trt.DataType = _enum("DataType", {"FLOAT": "FLOAT"})
    fp16 = "Channel major FP16 format where channel % 8 == 0"
    default = [{"Name": n, "LayerType": t, "Inputs": [{"Name": f"{n}_in", "Format/Datatype": fp16}],
                "Outputs": [{"Name": f"{n}_out", "Format/Datatype": fp16}]}
               for n, t in (("conv", "CaskConvolution"), ("fc", "CaskGemmConvolution"))]
    info = json.dumps({"Layers": layers if layers is not None else default})

    class ParserError(_Strict):
        def desc(self):
            return "In node 3 (Conv): UNSUPPORTED_NODE: fake\nsecond line"

    class OnnxParser(_Strict):
        num_errors = 1

        def __init__(self, network, logger):
            calls["parser"] = True

        def parse_from_file(self, model):
            calls["parsed"] = model
            return parse_ok

        def get_error(self, index):
            return ParserError()

    class ITimingCache(_Strict):
        def __init__(self, data):
            self._data = data

        def serialize(self):
            return b"CACHE:" + self._data

    class IBuilderConfig(_Strict):
        profiling_verbosity = None

        def __init__(self, logger):
            self._logger = logger
            self._cache = None

        def set_memory_pool_limit(self, pool, pool_size):
            calls["workspace"] = (pool, pool_size)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile._shapes

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(serialized_timing_cache)
            calls.setdefault("cache_in", data)
            if data and cache_mode == "corrupt":
                self._logger.log(ILogger.Severity.ERROR, "Error Code 1: Serialization (Serialized timing cache "
                                 "version mismatch)\ndetails")
                return None
            return ITimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls["caches_set"].append((cache._data, ignore_mismatch))
            if cache._data and cache_mode == "mismatch":
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class IOptimizationProfile(_Strict):
        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's parameter names
            self._shapes = {"name": input, "min": min, "opt": opt, "max": max}

    class Builder(_Strict):
        def __init__(self, logger):
            self._logger = logger

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            calls["config"] = IBuilderConfig(self._logger)
            return calls["config"]

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            calls["verbosity"] = config.profiling_verbosity
            return b"FAKE-ENGINE"

    class IExecutionContext(_Strict):
        def set_input_shape(self, name, shape):
            calls["input_shapes"].append((name, shape))
            return True

    class EngineInspector(_Strict):
        execution_context = None

        def get_engine_information(self, format):  # noqa: A002
            calls["inspector_had_context"] = self.execution_context is not None
            return info

    class ICudaEngine(_Strict):
        num_io_tensors = 2
        num_layers = 2
        profiling_verbosity = "ProfilingVerbosity.DETAILED"
        _names = ["input", "logits"]

        def get_tensor_name(self, index):
            return self._names[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return types.SimpleNamespace(name="FLOAT")  # the real DataType member's .name

        def get_tensor_shape(self, name):
            return [-1, 3, 32, 32] if name == "input" else [-1, 10]

        def get_tensor_profile_shape(self, name, profile_index):
            p = calls["profile"]
            return [p["min"], p["opt"], p["max"]]

        def create_execution_context(self):
            return IExecutionContext()

        def create_engine_inspector(self):
            return EngineInspector()

    class Runtime(_Strict):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            calls["deserialized"] = bytes(serialized_engine)
            return ICudaEngine()

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    # classes vggc reaches through return values, exposed under their real names for the API check
    for cls in (ParserError, ITimingCache, IBuilderConfig, IOptimizationProfile, IExecutionContext, EngineInspector,
                ICudaEngine):
        setattr(trt, cls.__name__, cls)
    return trt
