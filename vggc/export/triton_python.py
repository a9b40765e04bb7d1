"""A CPU model for Triton's python backend: an OpenVINO IR or ONNX file served by OpenVINO / ONNX Runtime.

Triton's C++ onnxruntime/openvino backends are not part of every Triton install (the PyPI wheel
``nvidia-pytriton`` bundles only the python backend), so :func:`write_python_model` adds a model
that runs the file inside Triton through a ``model.py`` (:mod:`vggc.serve.pymodels`)::

    DIR/<name>/config.pbtxt          backend "python", dynamic batching, KIND_CPU x instances
    DIR/<name>/config.pbtxt.json     vggc manifest
    DIR/<name>/1/model.py            the runtime's template (vggc/serve/pymodels)
    DIR/<name>/1/model.xml + .bin    (IR)   or   DIR/<name>/1/model.onnx

Config ``parameters``: ``model_file``, ``threads``, ``runtime`` and ``vggc_preprocess`` (the file's
mean/std/input size as JSON, so a client can preprocess images the way the file expects).
The config's input/output (name, data type, per-sample dims) are read from the file and checked
against it again on the assembled directory before it is swapped in (:func:`check_python_model`).
Timings of such a model are "Triton + python backend + OpenVINO CPU" (or "+ ORT CPU"), never
Triton's C++ backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vggc.errors import InputError, ModelFormatError
from vggc.export.triton import _NAME_RE, MAX_QUEUE_DELAY_US, _onnx_io, _write_model_dir, parse_pbtxt

PYTHON_BACKEND = "python"
RUNTIME_LABELS = {"openvino": "OpenVINO CPU", "onnxruntime": "ORT CPU"}
# file suffix -> runtimes that can serve it (first = default)
SUFFIX_RUNTIMES = {".xml": ("openvino",), ".onnx": ("onnxruntime", "openvino")}
_OV_TO_TRITON = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "i8": "TYPE_INT8", "u8": "TYPE_UINT8",
                 "i32": "TYPE_INT32", "i64": "TYPE_INT64", "boolean": "TYPE_BOOL"}
DEFAULT_TARGET = "cpu-throughput"


def served_label(runtime: str) -> str:
    """The label every timing of a python-backend model carries, e.g. ``Triton + python backend + OpenVINO CPU``."""
    return f"Triton + python backend + {RUNTIME_LABELS.get(runtime, runtime)}"


def cpu_instances(cores: int | None = None) -> tuple[int, int]:
    """Return ``(instance count, threads per instance)`` for ``cores`` CPU cores (default: physical cores):
    2 instances from 4 cores up (one runs while the other gathers its next batch), the cores split between
    them, so the instances together use each core once."""
    if cores is None:
        from vggc.cpu import physical_cores

        cores = physical_cores() or os.cpu_count() or 1
    cores = max(1, int(cores))
    count = 2 if cores >= 4 else 1
    return count, max(1, cores // count)


def resolve_served_file(path, target: str = DEFAULT_TARGET) -> Path:
    """Return the model file to serve: ``path`` itself, or for a pipeline ``answer.json`` its ``target``'s file
    (``targets.<target>.path``, else ``targets.<target>.model`` beside the answer). :class:`InputError` when
    there is none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() != ".json":
        return path
    try:
        doc = json.loads(path.read_text())
        entry = doc["targets"][target]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a pipeline answer.json with target {target!r}") from None
    for cand in (entry.get("path"), entry.get("model") and path.parent / entry["model"]):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise InputError(f"{path}: target {target}'s model {entry.get('path') or entry.get('model')} not found")


def _ir_io(xml: Path) -> dict:
    """Input/output names, Triton types and per-sample dims of a single-input OpenVINO IR classifier."""
    import openvino as ov

    from vggc.export.openvino_backend import read_model

    model = read_model(xml)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelFormatError(f"{xml}: expected one input and one output")
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
        raise ModelFormatError(f"{xml}: input shape {shape} needs static per-sample dims")
    in_dims = [d.get_length() for d in list(shape)[1:]]
    model.reshape({model.inputs[0]: ov.PartialShape([1, *in_dims])})
    types = [model.inputs[0].get_element_type().get_type_name(), model.outputs[0].get_element_type().get_type_name()]
    for role, t in zip(("input", "output"), types):
        if t not in _OV_TO_TRITON:
            raise ModelFormatError(f"{xml}: {role} element type {t} has no Triton type")
    out_shape = model.outputs[0].get_partial_shape()
    return {"input_name": model.inputs[0].get_any_name(), "input_type": _OV_TO_TRITON[types[0]],
            "input_dims": in_dims, "output_name": model.outputs[0].get_any_name(),
            "output_type": _OV_TO_TRITON[types[1]], "output_dims": [d.get_length() for d in list(out_shape)[1:]]}


def file_io(path: Path) -> dict:
    """The input/output facts (names, Triton types, per-sample dims) of an ``.xml`` IR or ``.onnx`` file."""
    return _ir_io(path) if path.suffix.lower() == ".xml" else _onnx_io(path)


def _io_of_config(cfg: dict) -> dict:
    i, o = cfg["input"][0], cfg["output"][0]
    return {"input_name": i["name"], "input_type": i["data_type"], "input_dims": list(i["dims"]),
            "output_name": o["name"], "output_type": o["data_type"], "output_dims": list(o["dims"])}


def check_python_model(model_dir) -> dict:
    """Check a python-backend model directory: its config parses with Triton's schema, names a ``model_file``
    that exists in ``1/`` beside ``model.py``, and its input/output match that file's. Returns the parsed
    config; :class:`ModelFormatError` (one line) on the first mismatch."""
    model_dir = Path(model_dir)
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    params = {k: v.get("string_value") for k, v in (cfg.get("parameters") or {}).items()}
    served = model_dir / "1" / (params.get("model_file") or "")
    if not params.get("model_file") or not served.is_file() or not (model_dir / "1" / "model.py").is_file():
        raise ModelFormatError(f"{model_dir}: config parameter model_file {params.get('model_file')!r} or 1/model.py "
                               "missing")
    want, have = file_io(served), _io_of_config(cfg)
    for k, v in have.items():
        if want[k] != v:
            raise ModelFormatError(f"{model_dir}: config {k} {v!r} does not match {served.name}'s {want[k]!r}")
    return cfg


def python_model_config(name: str, io: dict, *, runtime: str, model_file: str, max_batch: int, preferred: list[int],
                        instances: int, threads: int, max_queue_delay_us: int, preprocess: dict) -> dict:
    """The ``ModelConfig`` dict of a python-backend model (see :func:`vggc.export.triton.to_pbtxt`)."""
    from vggc.export.triton import Enum_

    params = {"model_file": model_file, "threads": str(threads), "runtime": runtime,
              "vggc_preprocess": json.dumps(preprocess, sort_keys=True)}
    return {
        "name": name, "backend": PYTHON_BACKEND, "max_batch_size": int(max_batch),
        "input": [{"name": io["input_name"], "data_type": Enum_(io["input_type"]), "dims": io["input_dims"]}],
        "output": [{"name": io["output_name"], "data_type": Enum_(io["output_type"]), "dims": io["output_dims"]}],
        "dynamic_batching": {"preferred_batch_size": preferred, "max_queue_delay_microseconds": int(max_queue_delay_us)},
        "instance_group": [{"count": int(instances), "kind": Enum_("KIND_CPU")}],
        "parameters": [{"key": k, "value": {"string_value": v}} for k, v in params.items()],
    }


def _check_options(path: Path, name: str, runtime: str | None, max_batch: int, instances, threads,
                   max_queue_delay_us: int) -> str:
    runtimes = SUFFIX_RUNTIMES.get(path.suffix.lower())
    if runtimes is None:
        raise InputError(f"{path}: serve an OpenVINO IR (.xml + .bin) or an .onnx file")
    runtime = runtime or runtimes[0]
    if runtime not in runtimes:
        raise InputError(f"--runtime {runtime}: {path.suffix} files run on {', '.join(runtimes)}")
    if not _NAME_RE.match(name or ""):
        raise InputError(f"Triton model name {name!r}: use letters, digits, '_', '-', '.'")
    if not 1 <= int(max_batch) <= 65536 or int(max_queue_delay_us) < 0:
        raise InputError("max batch must be 1..65536 and max queue delay >= 0")
    if any(v is not None and int(v) < 1 for v in (instances, threads)):
        raise InputError("instances and threads must be >= 1")
    return runtime


def write_python_model(repo, path, *, name: str | None = None, runtime: str | None = None, max_batch: int = 256,
                       opt_batch: int = 64, instances: int | None = None, threads: int | None = None,
                       max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> dict:
    """Write (or replace) model ``name`` (default ``<file stem>_py``) in the Triton repository ``repo``: the
    IR/ONNX file ``path`` served by ``runtime`` (default: openvino for .xml, onnxruntime for .onnx) on the
    python backend, ``instances`` x ``threads`` (default :func:`cpu_instances`). Returns ``name``, ``dir``,
    ``config``, ``backend``, ``runtime``, ``label``, ``instances``, ``threads``, ``max_batch_size``,
    ``precision``."""
    from vggc.runtime import describe
    from vggc.serve.pymodels import TEMPLATES

    repo, path = Path(repo), Path(path)
    name = name or f"{path.stem}_py"
    if repo.exists() and not repo.is_dir():
        raise InputError(f"{repo}: exists and is not a directory")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    runtime = _check_options(path, name, runtime, max_batch, instances, threads, max_queue_delay_us)
    auto_count, auto_threads = cpu_instances()
    instances = int(instances or auto_count)
    threads = int(threads or max(1, auto_count * auto_threads // instances))
    mf = describe(path)
    io = file_io(path)
    model_file = "model.xml" if path.suffix.lower() == ".xml" else "model.onnx"
    extra = {"1/model.py": TEMPLATES[runtime]}
    if model_file == "model.xml":
        extra["1/model.bin"] = path.with_suffix(".bin")
    preferred = sorted({max(1, min(opt_batch, max_batch)), int(max_batch)})
    cfg = python_model_config(name, io, runtime=runtime, model_file=model_file, max_batch=max_batch,
                              preferred=preferred, instances=instances, threads=threads,
                              max_queue_delay_us=max_queue_delay_us, preprocess=mf.preprocess.to_dict())
    repo.mkdir(parents=True, exist_ok=True)
    settings = {"runtime": runtime, "instances": instances, "threads": threads, "max_batch": max_batch,
                "max_queue_delay_us": max_queue_delay_us, "label": served_label(runtime)}
    d = _write_model_dir(repo, name, cfg, path, model_file, settings, extra_files=extra, check=check_python_model)
    return {"name": name, "dir": str(d), "config": str(d / "config.pbtxt"), "backend": PYTHON_BACKEND,
            "runtime": runtime, "label": served_label(runtime), "instances": instances, "threads": threads,
            "max_batch_size": int(max_batch), "precision": mf.meta.get("precision"), "source": str(path)}
