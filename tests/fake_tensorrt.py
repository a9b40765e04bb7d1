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
import sys
import types

HELPER_NAMES = {"calls"}  # module attributes that are test helpers, not TensorRT names


_RECORD: list = []  # (owner, name, n_positional or None, keyword names or None) of every public access


def _record(owner: str, name: str, nargs=None, kws=None) -> None:
    """Record an access made by the code under test (the fake's own accesses are not its usage)."""
    if sys._getframe(2).f_globals.get("__name__") == __name__:
        return
    if not name.startswith("_") or name == "__init__":
        _RECORD.append((owner, name, nargs, tuple(sorted(kws)) if kws is not None else None))


def recorded() -> list:
    """Every public TensorRT name the code under test touched on the fake (owner, name, n_positional,
    keywords); owner ``<module>`` for module attributes. Cleared by :func:`fake_tensorrt`."""
    return list(_RECORD)


class _Meta(type):
    """Records class-level accesses (``trt.ILogger.Severity``, enum members) and constructions."""

    def __getattribute__(cls, name):
        owner = type.__getattribute__(cls, "_fake_owner")
        if owner and name not in ("_fake_owner", "__name__", "__qualname__", "__mro__", "__dict__"):
            _record(owner, name)
        return type.__getattribute__(cls, name)

    def __call__(cls, *args, **kwargs):
        owner = type.__getattribute__(cls, "_fake_owner")
        if owner:
            _record(owner, "__init__", len(args), kwargs)
        return type.__call__(cls, *args, **kwargs)


class _Strict(metaclass=_Meta):
    """Instances accept only attributes their class declares (or private ``_x`` ones) and record
    every public attribute read and method call (with its argument shape)."""

    _fake_owner = None

    def __setattr__(self, name, value):
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(f"fake tensorrt: {type(self).__name__} has no attribute {name!r}")
        if not name.startswith("_"):
            _record(type(self)._fake_owner, name)
        object.__setattr__(self, name, value)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name.startswith("_"):
            return value
        owner = type(self)._fake_owner
        if callable(value):
            def call(*args, **kwargs):
                _record(owner, name, len(args), kwargs)
                return value(*args, **kwargs)
            return call
        _record(owner, name)
        return value


class _Members(metaclass=_Meta):
    """An enum stand-in: members are class attributes."""

    _fake_owner = None


def _enum(name: str, members: dict):
    """An enum class for the real enum ``name`` (``"ILogger.Severity"`` for a nested one)."""
    return type(name.split(".")[-1], (_Members,), {"_fake_owner": name, **members})


class _RecordingModule(types.ModuleType):
    def __getattribute__(self, name):
        if not name.startswith("_") and name not in HELPER_NAMES:
            _record("<module>", name)
        return super().__getattribute__(name)


def fake_tensorrt(version="10.8.0.43", strongly_typed=True, layers=None, parse_ok=True, cache_mode="ok"):
    """A fake ``tensorrt`` module. ``cache_mode``: ``ok``; ``corrupt`` (create_timing_cache logs an
    error and returns None for non-empty data, as TensorRT does for another version's or a damaged
    cache); ``mismatch`` (set_timing_cache returns False for a non-empty cache: another GPU)."""
    calls: dict = {"input_shapes": [], "caches_set": []}
    _RECORD.clear()
    trt = _RecordingModule("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class ILogger(metaclass=_Meta):  # subclassed by vggc (which adds attributes), like the real pybind11 class
        _fake_owner = "ILogger"
        Severity = _enum("ILogger.Severity", {m: i for i, m in enumerate(("INTERNAL_ERROR", "ERROR", "WARNING", "INFO",
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

    class ITimingCache(_Strict):  # made by IBuilderConfig.create_timing_cache only (no public constructor)
        _data = b""

        def serialize(self):
            return b"CACHE:" + self._data

    class IBuilderConfig(_Strict):
        profiling_verbosity = None
        _logger = None  # set by Builder.create_builder_config (no public constructor)
        _cache = None

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
            cache = ITimingCache()
            cache._data = data
            return cache

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
            config = IBuilderConfig()
            config._logger = self._logger
            calls["config"] = config
            return config

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
                ICudaEngine, Builder, OnnxParser, Runtime):
        cls._fake_owner = cls.__name__
        setattr(trt, cls.__name__, cls)
    return trt
