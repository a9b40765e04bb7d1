"""Triton Inference Server model repositories for the exported models.

:func:`write_triton_repo` writes, for an ONNX file (and optionally a TensorRT engine)::

    DIR/<name>/config.pbtxt          platform "onnxruntime_onnx"
    DIR/<name>/config.pbtxt.json     vggc manifest (Triton ignores it)
    DIR/<name>/1/model.onnx
    DIR/<name>_trt/config.pbtxt      platform "tensorrt_plan"   (with an engine)
    DIR/<name>_trt/1/model.plan

Each config has ``max_batch_size``, input/output ``dims`` without the batch dimension,
``dynamic_batching`` (preferred batch sizes + ``max_queue_delay_microseconds``) and one
``instance_group`` (``KIND_GPU`` count 1, or ``KIND_CPU`` for the ONNX model; a TensorRT plan is
always ``KIND_GPU``, the only kind Triton runs it on). Field names follow Triton's
``ModelConfig`` protobuf (triton-inference-server/common, protobuf/model_config.proto: ``name``=1,
``platform``=2, ``max_batch_size``=4, ``input``=5, ``output``=6, ``instance_group``=7,
``dynamic_batching``=11; ``ModelDynamicBatching.preferred_batch_size``=1,
``max_queue_delay_microseconds``=2; ``Kind`` ``KIND_GPU``=1, ``KIND_CPU``=2).

Each model directory is assembled in a temporary directory beside it and swapped in, so a
failure never leaves a half-written model. :func:`parse_pbtxt` reads the protobuf text format
back with ``google.protobuf.text_format`` against Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``), so a config Triton would refuse is refused here too.

A ``tensorrt_plan`` model only loads in a Triton whose TensorRT version built the engine (the
same check ``vggc`` does at run time); see docs/gpu.md. A CPU model for Triton's python backend (an
OpenVINO IR or ONNX run by OpenVINO / ONNX Runtime inside Triton) is written by
:mod:`vggc.export.triton_python` (``vggc triton-add``); :mod:`vggc.serve` serves a repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vggc.artifacts import TMP_PREFIX, write_manifest
from vggc.errors import InputError, ModelFormatError, UnavailableError, VggcError, first_line

ONNX_PLATFORM = "onnxruntime_onnx"
TRT_PLATFORM = "tensorrt_plan"
MAX_QUEUE_DELAY_US = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# ONNX TensorProto element type / torch dtype name -> Triton DataType
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 3: "TYPE_INT8", 2: "TYPE_UINT8",
                   6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}
_TORCH_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
                    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


# ----------------------------------------------------------------------------- text format

class Enum_:
    """An enum value written bare (``TYPE_FP32``, ``KIND_GPU``), not quoted."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, Enum_):
        return v.name
    return json.dumps(str(v))


def to_pbtxt(msg: dict, indent: int = 0) -> str:
    """Write a dict as protobuf text format: scalars ``k: v``, dicts ``k { ... }``, lists of dicts
    ``k [ {...}, {...} ]``, lists of scalars ``k: [ a, b ]``."""
    pad = "  " * indent
    lines = []
    for k, v in msg.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k} {{\n{to_pbtxt(v, indent + 1)}{pad}}}")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            items = ",\n".join(f"{pad}  {{\n{to_pbtxt(x, indent + 2)}{pad}  }}" for x in v)
            lines.append(f"{pad}{k} [\n{items}\n{pad}]")
        elif isinstance(v, list):
            lines.append(f"{pad}{k}: [ {', '.join(_fmt_value(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{k}: {_fmt_value(v)}")
    return "".join(line + "\n" for line in lines)


TRITONCLIENT_MISSING = "tritonclient not installed (Triton's ModelConfig schema): pip install 'tritonclient[grpc]'"


def model_config_class():
    """Return Triton's own ``ModelConfig`` protobuf class (``tritonclient.grpc.model_config_pb2``,
    generated from triton-inference-server/common protobuf/model_config.proto);
    :class:`UnavailableError` (one line) when tritonclient is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UnavailableError(TRITONCLIENT_MISSING) from None
    return model_config_pb2.ModelConfig


def _message_to_dict(msg) -> dict:
    """A parsed message as a dict of the fields that are set: nested messages as dicts, repeated
    fields as lists, enums by name, integers as ``int`` (``MessageToDict`` would make int64 strings)."""
    from google.protobuf.descriptor import FieldDescriptor

    def conv(fd, v):
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return _message_to_dict(v)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return fd.enum_type.values_by_number[v].name
        return v

    out: dict = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = {k: (_message_to_dict(v) if hasattr(v, "ListFields") else v) for k, v in value.items()}
        elif fd.label == FieldDescriptor.LABEL_REPEATED:
            out[fd.name] = [conv(fd, v) for v in value]
        else:
            out[fd.name] = conv(fd, value)
    return out


def parse_model_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` message (``google.protobuf.text_format``
    against the real schema: unknown fields, wrong types and bad enum names are refused). Raises
    ``ValueError`` (one line) on text Triton would not load, :class:`UnavailableError` without tritonclient."""
    from google.protobuf import text_format

    msg = model_config_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as err:
        raise ValueError(f"not a Triton ModelConfig: {first_line(err)}") from None
    return msg


def schema_check(text: str) -> str:
    """Check a config text we wrote against Triton's ``ModelConfig`` and return what checked it
    (``"tritonclient <version> model_config_pb2"``), or ``"not checked: ..."`` without tritonclient
    (recorded in the manifest, never silent). A refused text is a vggc bug: :class:`VggcError`."""
    try:
        parse_model_config(text)
    except UnavailableError as err:
        return f"not checked: {err}"
    except ValueError as err:
        raise VggcError(f"vggc wrote a config.pbtxt Triton would refuse ({err})") from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"tritonclient {version('tritonclient')} model_config_pb2"
    except PackageNotFoundError:
        return "tritonclient model_config_pb2"


def parse_pbtxt(text: str) -> dict:
    """Parse ``config.pbtxt`` text with Triton's ``ModelConfig`` schema (:func:`parse_model_config`) and
    return the fields that are set as a dict (nested messages as dicts, repeated fields as lists, enum
    values by name, integers as int). Raises ``ValueError`` on malformed input."""
    return _message_to_dict(parse_model_config(text))


# ----------------------------------------------------------------------------- configs

def model_config(name: str, platform: str, *, max_batch: int, input_name: str, input_type: str,
                 input_dims: list[int], output_name: str, output_type: str, output_dims: list[int],
                 preferred: list[int], max_queue_delay_us: int = MAX_QUEUE_DELAY_US, instance_kind: str = "gpu",
                 instance_count: int = 1) -> dict:
    """The ``ModelConfig`` of one model as a dict (see :func:`to_pbtxt`)."""
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": int(max_batch),
        "input": [{"name": input_name, "data_type": Enum_(input_type), "dims": [int(d) for d in input_dims]}],
        "output": [{"name": output_name, "data_type": Enum_(output_type), "dims": [int(d) for d in output_dims]}],
        "dynamic_batching": {"preferred_batch_size": [int(p) for p in preferred],
                             "max_queue_delay_microseconds": int(max_queue_delay_us)},
        "instance_group": [{"count": int(instance_count), "kind": Enum_(f"KIND_{instance_kind.upper()}")}],
    }


def _preferred(opt: int, max_batch: int) -> list[int]:
    return sorted({max(1, min(opt, max_batch)), max_batch})


def _onnx_io(onnx_path: Path) -> dict:
    """Input/output names, Triton types and per-sample dims of a single-input ONNX classifier."""
    from vggc.export.tensorrt import onnx_facts

    facts = onnx_facts(onnx_path)
    out_dims = facts["output_shape"][1:]
    if not out_dims or any(d is None for d in out_dims):  # symbolic output: ask ONNX Runtime once
        import numpy as np

        from vggc.export.ort_backend import open_onnx_cpu

        runner = open_onnx_cpu(onnx_path, threads=1)
        try:
            x = np.zeros([1, *facts["input_shape"][1:]], dtype=np.float32)
            import torch

            out_dims = list(runner.predict(torch.from_numpy(x)).shape[1:])
        finally:
            runner.close()
    for role in ("input", "output"):
        if facts[f"{role}_elem_type"] not in _ONNX_TO_TRITON:
            raise ModelFormatError(f"{onnx_path}: {role} element type {facts[f'{role}_elem_type']} has no Triton type")
    return {"input_name": facts["input_name"], "input_type": _ONNX_TO_TRITON[facts["input_elem_type"]],
            "input_dims": facts["input_shape"][1:], "output_name": facts["output_name"],
            "output_type": _ONNX_TO_TRITON[facts["output_elem_type"]], "output_dims": out_dims,
            "precision": facts["precision"]}


def _engine_io(engine: Path) -> dict:
    from vggc.export.tensorrt import ENGINE_KIND, ENGINE_SUFFIXES
    from vggc.runtime import read_manifest

    if engine.suffix not in ENGINE_SUFFIXES:
        raise InputError(f"--triton-engine {engine}: expected a .engine or .plan file from `vggc engine`")
    if not engine.is_file():
        raise InputError(f"--triton-engine {engine}: no such file")
    man = read_manifest(engine)
    if man.get("kind") != ENGINE_KIND:
        raise InputError(f"--triton-engine {engine}: no manifest {engine.name}.json from `vggc engine` beside it "
                         "(needed for its tensor names, shapes and batch range)")
    prof = man.get("profile") or {}
    lo, hi = (prof.get("min") or [None])[0], (prof.get("max") or [None])[0]
    if lo != 1:
        raise InputError(f"--triton-engine {engine}: its profile's min batch is {lo}; Triton sends batches from 1, "
                         "rebuild it with --min-batch 1")
    for k in ("input_dtype", "output_dtype"):
        if man.get(k) not in _TORCH_TO_TRITON:
            raise InputError(f"--triton-engine {engine}: manifest {k} {man.get(k)!r} has no Triton type")
    out_dims = list((man.get("output_shape") or [])[1:])
    if not out_dims or any(d is None or int(d) < 0 for d in out_dims):
        raise InputError(f"--triton-engine {engine}: manifest output_shape {man.get('output_shape')} lacks fixed "
                         "per-sample dims")
    return {"input_name": man["input_name"], "input_type": _TORCH_TO_TRITON[man["input_dtype"]],
            "input_dims": prof["max"][1:], "output_name": man["output_name"],
            "output_type": _TORCH_TO_TRITON[man["output_dtype"]], "output_dims": out_dims,
            "min_batch": lo, "max_batch": hi, "opt_batch": (prof.get("opt") or [hi])[0],
            "precision": man.get("precision"), "tensorrt": (man.get("build_environment") or {}).get("tensorrt"),
            "gpu": (man.get("build_environment") or {}).get("gpu")}


def _write_model_dir(repo: Path, name: str, config: dict, model_src: Path, model_file: str, settings: dict,
                     extra_files: dict | None = None, check=None) -> Path:
    """Assemble ``repo/name`` in a temporary directory, then swap it in; return the model directory.

    ``model_src`` is copied to ``1/<model_file>``, each ``extra_files`` entry (path in the model
    directory -> source file) beside it; ``check(tmp_dir)`` runs on the assembled directory before
    the swap (it raises to refuse it)."""
    final = repo / name
    if final.exists() and not final.is_dir():
        raise InputError(f"--triton {repo}: {final} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=repo))
    old = None
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(model_src, tmp / "1" / model_file)
        for rel, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / rel)
        cfg = tmp / "config.pbtxt"
        text = to_pbtxt(config)
        checked = schema_check(text)
        cfg.write_text(text)
        write_manifest(cfg, kind="triton-model", inputs={"model": model_src}, settings=settings,
                       extra={"model": name, "platform": config.get("platform") or f"backend {config['backend']}",
                              "model_file": f"1/{model_file}", "max_batch_size": config["max_batch_size"],
                              "schema_check": checked})
        if check is not None:
            check(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=repo))
            os.replace(final, old / name)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / name).exists() and not final.exists():
            os.replace(old / name, final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def check_triton_options(repo, *, name: str, engine=None, max_batch: int = 256, instance_kind: str = "gpu",
                         instance_count: int = 1, max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> None:
    """Validate repository options (before any export work); raise :class:`InputError`."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--triton {repo}: exists and is not a directory")
    if not _NAME_RE.match(name or ""):
        raise InputError(f"Triton model name {name!r}: use letters, digits, '_', '-', '.'")
    if isinstance(max_batch, bool) or not 1 <= int(max_batch) <= 65536:
        raise InputError(f"--triton-max-batch {max_batch}: must be 1..65536")
    if instance_kind not in ("gpu", "cpu"):
        raise InputError(f"--triton-instance {instance_kind}: choose gpu or cpu")
    if int(instance_count) < 1 or int(max_queue_delay_us) < 0:
        raise InputError("instance count must be >= 1 and max queue delay >= 0")
    if engine is not None:
        _engine_io(Path(engine))


def write_triton_repo(repo, onnx_path, *, name: str | None = None, engine=None, max_batch: int = 256,
                      opt_batch: int = 64, max_queue_delay_us: int = MAX_QUEUE_DELAY_US, instance_kind: str = "gpu",
                      instance_count: int = 1) -> dict:
    """Write (or replace) model ``name`` (default: the ONNX file's stem) in the Triton repository
    ``repo`` from ``onnx_path``, and ``<name>_trt`` from the TensorRT ``engine`` when given.

    The ONNX model gets ``max_batch_size = max_batch`` and preferred batch sizes
    ``{min(opt_batch, max_batch), max_batch}``; the engine model gets ``min(max_batch, engine's
    profile max)`` and its profile's opt/max as preferred sizes. Returns ``repo`` and ``models``
    (name, platform, dir, config, max_batch_size per model).
    """
    repo, onnx_path = Path(repo), Path(onnx_path)
    name = name or onnx_path.stem
    check_triton_options(repo, name=name, engine=engine, max_batch=max_batch, instance_kind=instance_kind,
                         instance_count=instance_count, max_queue_delay_us=max_queue_delay_us)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such file")
    io = _onnx_io(onnx_path)
    repo.mkdir(parents=True, exist_ok=True)
    models = []
    common = {"max_queue_delay_us": max_queue_delay_us, "instance_kind": instance_kind,
              "instance_count": instance_count}
    cfg = model_config(name, ONNX_PLATFORM, max_batch=max_batch, preferred=_preferred(opt_batch, max_batch),
                       **{k: io[k] for k in ("input_name", "input_type", "input_dims", "output_name", "output_type",
                                             "output_dims")}, **common)
    d = _write_model_dir(repo, name, cfg, onnx_path, "model.onnx", {"max_batch": max_batch, **common})
    models.append({"name": name, "platform": ONNX_PLATFORM, "dir": str(d), "config": str(d / "config.pbtxt"),
                   "max_batch_size": max_batch, "precision": io["precision"]})
    if engine is not None:
        engine = Path(engine)
        eio = _engine_io(engine)
        trt_max = min(int(max_batch), int(eio["max_batch"]))
        trt_name = f"{name}_trt"
        # a tensorrt_plan model runs on GPUs only: Triton refuses it on KIND_CPU, whatever the ONNX model uses
        trt_common = {**common, "instance_kind": "gpu"}
        cfg = model_config(trt_name, TRT_PLATFORM, max_batch=trt_max, preferred=_preferred(eio["opt_batch"], trt_max),
                           **{k: eio[k] for k in ("input_name", "input_type", "input_dims", "output_name",
                                                  "output_type", "output_dims")}, **trt_common)
        d = _write_model_dir(repo, trt_name, cfg, engine, "model.plan", {"max_batch": trt_max, **trt_common})
        models.append({"name": trt_name, "platform": TRT_PLATFORM, "dir": str(d), "config": str(d / "config.pbtxt"),
                       "max_batch_size": trt_max, "precision": eio["precision"], "tensorrt": eio["tensorrt"],
                       "gpu": eio["gpu"]})
    return {"repo": str(repo), "models": models}
