"""vggc's TensorRT code against the REAL TensorRT Python API, without a GPU.

The session fixture installs the real pybind11 bindings of three releases (``tensorrt-cu12-bindings``
10.16, ``tensorrt-cu13-bindings`` 11.1 - what the ``[gpu]`` extra resolves to - and 11.4; ~1.3 MB
each) into a cache beside the virtual environment, with stand-in native libraries (empty
``libnvinfer.so.N`` / ``libnvinfer_plugin.so.N`` / ``libnvonnxparser.so.N`` built with ``cc``, defining the
nine entry points the bindings link against) so that the bindings import. A subprocess per release
dumps the module (tests/trt_api_dump.py: classes, methods with their pybind11 signatures, properties,
enum members). Then, for every release:

* the engine build runs on the fake ``tensorrt`` (tests/fake_tensorrt.py) at that release's version,
  so the version branches run as they would there, and every name it touched - module attributes,
  enum members, methods with the number of positional arguments and the keywords passed, properties
  - must exist in the real module and bind to a real signature;
* every class, method (with its parameter names), property and enum member the fake declares must
  exist in the real module, so the fake cannot drift from the real API;
* the runtime runner (vggc/export/gpu_backends.py, which needs CUDA to run) is checked through the
  names it uses, read from its source.

Torch-TensorRT 2.14 cannot be imported without CUDA (its extension links libtorch_cuda and
libcudart), so its ``compile`` / ``convert_method_to_trt_engine`` / ``save`` / ``Input`` keywords are
checked against the Python source in its wheel (parsed, not imported).

Skips (visibly) only when the package index cannot be reached.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RELEASES = [("tensorrt-cu12-bindings", "10.16.1.11"), ("tensorrt-cu13-bindings", "11.1.0.106"),
            ("tensorrt-cu13-bindings", "11.4.0.106")]
TORCH_TRT = ("torch-tensorrt", "2.14.0")
CACHE = Path(os.environ.get("VGGC_TEST_CACHE") or Path(sys.prefix) / "vggc-test-cache")
# the entry points tensorrt.so imports from libnvinfer / libnvinfer_plugin / libnvonnxparser (readelf -d / nm -D)
STUB_C = """
void *createInferBuilder_INTERNAL(void *l, int v) { return 0; }
void *createInferRefitter_INTERNAL(void *e, void *l, int v) { return 0; }
void *createInferRuntime_INTERNAL(void *l, int v) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *r, void *l, int v) { return 0; }
void *createNvOnnxParser_INTERNAL(void *n, void *l, int v) { return 0; }
void *getBuilderPluginRegistry(int a) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void *l, const char *ns) { return 0; }
"""


def _pip(*args: str, what: str) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip() and "WARNING: Location" not in ln]
        pytest.skip(f"cannot fetch {what} from the package index: {(lines or ['pip failed'])[-1][:200]}")


def _install_bindings(package: str, version: str) -> Path:
    """``pip install --no-deps --target`` the bindings wheel into the cache, add the stand-in libraries."""
    target = CACHE / "tensorrt-bindings" / f"{package}-{version}"
    so = target / "tensorrt_bindings" / "tensorrt.so"
    if not so.is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _pip("install", "--no-deps", "--no-compile", "--target", str(tmp), f"{package}=={version}",
             what=f"{package}=={version}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    major = version.split(".")[0]
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (cc) to build the stand-in TensorRT libraries"
    src = target / "stub.c"
    src.write_text(STUB_C)
    for lib in ("nvinfer", "nvinfer_plugin", "nvonnxparser"):
        out = so.parent / f"lib{lib}.so.{major}"  # tensorrt.so's RUNPATH/RPATH has $ORIGIN
        if not out.is_file():
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), f"-Wl,-soname,lib{lib}.so.{major}", str(src)],
                           check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture(scope="session")
def real_apis() -> dict:
    """``{version: dump}`` of the real bindings of every release in RELEASES."""
    dumps = {}
    for package, version in RELEASES:
        target = _install_bindings(package, version)
        res = subprocess.run([sys.executable, str(HERE / "trt_api_dump.py"), "tensorrt_bindings"],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(target)})
        assert res.returncode == 0, f"{package}=={version} does not import: {res.stderr.strip().splitlines()[-1:]}"
        dump = json.loads(res.stdout)
        assert dump["version"] == version
        dumps[version] = dump
    return dumps


# ----------------------------------------------------------------------------- matching against the real dump

def _real_member(api: dict, owner: str, name: str) -> dict | None:
    """The dump entry of ``owner.name`` (owner ``<module>``, a class, or ``Class.NestedEnum``)."""
    names = api["names"]
    if owner == "<module>":
        return names.get(name)
    path = owner.split(".")
    entry = names.get(path[0])
    for part in path[1:]:
        entry = (entry or {}).get("members", {}).get(part)
    if entry is None:
        return None
    if name in (entry.get("enum_members") or []):
        return {"kind": "member"}
    return entry.get("members", {}).get(name)


def _binds(signatures: list, nargs: int, kws: tuple) -> bool:
    """True when some overload takes ``nargs`` positional arguments plus keywords ``kws``."""
    for params in signatures:
        if nargs > len(params):
            continue
        rest = params[nargs:]
        names = {p["name"] for p in rest}
        if not set(kws) <= names:
            continue
        if all(p["default"] or p["name"] in kws for p in rest):
            return True
    return False


def _check_record(api: dict, owner: str, name: str, nargs, kws) -> str | None:
    entry = _real_member(api, owner, name)
    where = f"{owner}.{name}" if owner != "<module>" else name
    if entry is None:
        return f"{where}: not in TensorRT {api['version']}"
    if nargs is None:
        return None
    if entry["kind"] == "class":  # a construction recorded as <module>.Class(...)
        entry = entry["members"].get("__init__", {"kind": "method", "signatures": [[]]})
    if entry["kind"] not in ("method", "function"):
        return f"{where}: called, but it is a {entry['kind']} in TensorRT {api['version']}"
    if not _binds(entry["signatures"], nargs, kws or ()):
        sigs = ["(" + ", ".join(p["name"] for p in s) + ")" for s in entry["signatures"]]
        return (f"{where}: called with {nargs} positional argument(s) and keywords {list(kws or ())}; TensorRT "
                f"{api['version']} has {' or '.join(sigs)}")
    return None


def _fake_build_records(version: str, tmp_path: Path, monkeypatch) -> list:
    """Run vggc's engine build (and its inspector pass) on the fake tensorrt reporting ``version``;
    return every TensorRT name it touched."""
    import fake_tensorrt
    from conftest import make_tiny_vgg

    from vggc.artifacts import save_state_dict
    from vggc.export import tensorrt as vtrt
    from vggc.export.tensorrt import probe

    monkeypatch.setattr(probe, "cuda_reason", lambda: None)
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: {"gpu": "Fake GPU", "compute_capability": "9.0"})
    weights = tmp_path / "tiny.pt"
    save_state_dict(make_tiny_vgg().state_dict(), weights)
    onnx16 = tmp_path / "tiny16.onnx"
    from conftest import run_cli

    res = run_cli("export", weights, "--no-parity", "--fp16", "--out", onnx16)
    assert res.exit_code == 0, res.output
    trt = fake_tensorrt.fake_tensorrt(version=version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD")
    vtrt.build_engine(onnx16, tmp_path / "m.engine", precision="fp16", timing_cache=cache)
    return fake_tensorrt.recorded()


@pytest.mark.parametrize("release", [v for _, v in RELEASES])
def test_engine_build_uses_only_real_tensorrt_names(real_apis, release, tmp_path, monkeypatch):
    api = real_apis[release]
    records = _fake_build_records(release, tmp_path, monkeypatch)
    touched = {(o, n) for o, n, _, _ in records}
    assert ("IBuilderConfig", "set_timing_cache") in touched and ("EngineInspector", "execution_context") in touched
    major = int(release.split(".")[0])
    # the version branch: 10.x asks for STRONGLY_TYPED, 11.x passes no flag (and never a BuilderFlag)
    assert (("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") in touched) == (major == 10)
    assert not any(o == "<module>" and n == "BuilderFlag" for o, n in touched)
    problems = sorted({p for r in records if (p := _check_record(api, *r))})
    assert not problems, "\n".join(problems)


def _fake_declared() -> list[tuple[str, str, object]]:
    """(owner, name, value) for every TensorRT name the fake module declares."""
    import fake_tensorrt

    trt = fake_tensorrt.fake_tensorrt()
    out = []

    def walk_class(owner: str, cls):
        for name, value in vars(cls).items():
            if name.startswith("_") and name != "__init__":
                continue
            if isinstance(value, type) and issubclass(value, fake_tensorrt._Members):
                out.append((owner, name, "enum"))
                walk_class(f"{owner}.{name}", value)
            else:
                out.append((owner, name, value))

    for name in dir(trt):
        if name in fake_tensorrt.HELPER_NAMES or (name.startswith("_") and name != "__version__"):
            continue
        value = getattr(trt, name)
        out.append(("<module>", name, "enum" if isinstance(value, type) and issubclass(value, fake_tensorrt._Members)
                    else value))
        if isinstance(value, type):
            walk_class(name, value)
    return out


@pytest.mark.parametrize("release", [v for _, v in RELEASES])
def test_fake_tensorrt_matches_the_real_module(real_apis, release):
    api = real_apis[release]
    problems = []
    declared = _fake_declared()
    assert len(declared) > 40
    for owner, name, value in declared:
        entry = _real_member(api, owner, name)
        where = f"{owner}.{name}" if owner != "<module>" else name
        if entry is None:
            problems.append(f"fake declares {where}, which TensorRT {release} does not have")
            continue
        if inspect.isfunction(value):
            params = [p for p in inspect.signature(value).parameters if p != "self"]
            sigs = entry.get("signatures", [])
            # same parameter names in the same order; the fake may leave out trailing optional ones
            same = any([p["name"] for p in s[:len(params)]] == params and all(p["default"] for p in s[len(params):])
                       for s in sigs)
            if entry["kind"] != "method" or not same:
                problems.append(f"fake {where}{tuple(params)} vs TensorRT {release}: {entry['kind']} "
                                f"{[[p['name'] for p in s] for s in sigs]}")
        elif value == "enum":
            if entry["kind"] != "enum":
                problems.append(f"fake {where} is an enum, TensorRT {release} has a {entry['kind']}")
        elif isinstance(value, type):
            if entry["kind"] != "class":
                problems.append(f"fake {where} is a class, TensorRT {release} has a {entry['kind']}")
        elif owner != "<module>":
            kind = entry["kind"]
            if kind not in ("property", "member"):
                problems.append(f"fake {where} is a plain attribute, TensorRT {release} has a {kind}")
    assert not problems, "\n".join(problems)


def test_fake_declares_the_properties_vggc_writes_as_writable(real_apis):
    """vggc sets IBuilderConfig.profiling_verbosity and EngineInspector.execution_context: writable in every release."""
    for api in real_apis.values():
        for owner, name in (("IBuilderConfig", "profiling_verbosity"), ("EngineInspector", "execution_context")):
            assert _real_member(api, owner, name) == {"kind": "property", "writable": True}, (api["version"], name)
        log = _real_member(api, "ILogger", "log")  # vggc overrides log(severity, msg)
        assert [[p["name"] for p in s] for s in log["signatures"]] == [["severity", "msg"]]


# ----------------------------------------------------------------------------- the runtime runner (needs CUDA to run)

def _attribute_uses(path: Path, bases: set[str]) -> set[tuple[str, str]]:
    """(base, attribute) for every ``base.attr`` / ``self.base.attr`` in ``path`` whose base is in ``bases``."""
    uses = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if isinstance(v, ast.Name) and v.id in bases:
            uses.add((v.id, node.attr))
        elif isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "self" \
                and v.attr in bases:
            uses.add((v.attr, node.attr))
        elif isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id in bases:
            uses.add((v.value.id, f"{v.attr}.{node.attr}"))
    return uses


# what TensorRTRunner calls, with the positional argument counts it passes
RUNNER_CALLS = {("trt", "Runtime"): ("<module>", "Runtime", 1), ("_runtime", "deserialize_cuda_engine"):
                ("Runtime", "deserialize_cuda_engine", 1),
                ("engine", "create_execution_context"): ("ICudaEngine", "create_execution_context", 0),
                ("engine", "get_tensor_name"): ("ICudaEngine", "get_tensor_name", 1),
                ("engine", "num_io_tensors"): ("ICudaEngine", "num_io_tensors", None),
                ("engine", "get_tensor_mode"): ("ICudaEngine", "get_tensor_mode", 1),
                ("engine", "get_tensor_dtype"): ("ICudaEngine", "get_tensor_dtype", 1),
                ("engine", "get_tensor_profile_shape"): ("ICudaEngine", "get_tensor_profile_shape", 2),
                ("trt", "TensorIOMode.INPUT"): ("TensorIOMode", "INPUT", None),
                ("context", "set_input_shape"): ("IExecutionContext", "set_input_shape", 2),
                ("context", "get_tensor_shape"): ("IExecutionContext", "get_tensor_shape", 1),
                ("context", "set_tensor_address"): ("IExecutionContext", "set_tensor_address", 2),
                ("context", "execute_async_v3"): ("IExecutionContext", "execute_async_v3", 1),
                ("trt", "TensorIOMode"): ("<module>", "TensorIOMode", None)}


def test_runtime_runner_uses_only_real_tensorrt_names(real_apis):
    from vggc.export import gpu_backends

    src = Path(gpu_backends.__file__)
    uses = _attribute_uses(src, {"trt", "engine", "context", "_runtime"})
    assert uses - set(RUNNER_CALLS) == set(), "gpu_backends uses TensorRT names this test does not check"
    assert set(RUNNER_CALLS) <= uses  # and the table lists nothing the runner no longer uses
    for api in real_apis.values():
        problems = [p for owner, name, nargs in RUNNER_CALLS.values()
                    if (p := _check_record(api, owner, name, nargs, ()))]
        # the engine dtypes the runner maps to torch dtypes are real DataType members
        problems += [f"DataType.{d}: not in TensorRT {api['version']}" for d in gpu_backends._TORCH_DTYPES
                     if _real_member(api, "DataType", d) is None]
        assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- Torch-TensorRT (from its source)

def _function_params(tree: ast.Module, name: str) -> tuple[list[str], bool]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            a = node.args
            return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs], a.kwarg is not None
    raise AssertionError(f"no function {name}")


@pytest.fixture(scope="session")
def torch_trt_source() -> dict:
    """The Python sources of the Torch-TensorRT wheel (downloaded, read from the zip, never imported)."""
    d = CACHE / "torch-tensorrt"
    wheels = sorted(d.glob(f"torch_tensorrt-{TORCH_TRT[1]}-*.whl")) if d.is_dir() else []
    if not wheels:
        _pip("download", "--no-deps", "--dest", str(d), f"{TORCH_TRT[0]}=={TORCH_TRT[1]}",
             what=f"{TORCH_TRT[0]}=={TORCH_TRT[1]}")
        wheels = sorted(d.glob(f"torch_tensorrt-{TORCH_TRT[1]}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py") and n.startswith("torch_tensorrt/")}


def test_torch_tensorrt_keywords_exist_in_its_source(torch_trt_source):
    from vggc.export.tensorrt import torch_trt

    top = ast.parse(torch_trt_source["torch_tensorrt/_compile.py"])
    dyn = ast.parse(torch_trt_source["torch_tensorrt/dynamo/_compiler.py"])
    options = set(torch_trt.compile_options(4, Path("trt.cache")))
    # compile(module, ir=..., arg_inputs=..., **kwargs) forwards kwargs to dynamo.compile
    params, _ = _function_params(top, "compile")
    assert set(torch_trt.COMPILE_KEYWORDS) <= set(params)
    dparams, dkw = _function_params(dyn, "compile")
    assert options <= set(dparams), options - set(dparams)
    # use_explicit_typing was removed in 2.13 (always strongly typed): vggc passes it only where it exists
    assert "use_explicit_typing" not in dparams

    def fn():
        pass

    fn.__signature__ = inspect.Signature([inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in dparams])
    assert torch_trt.torch_tensorrt_typing_kwargs(None, fn) == {}
    # convert_method_to_trt_engine(module, method_name, ir=..., arg_inputs=..., **kwargs) -> dynamo converter
    params, _ = _function_params(top, "convert_method_to_trt_engine")
    assert params[:2] == ["module", "method_name"] and set(torch_trt.ENGINE_KEYWORDS) <= set(params)
    cparams, _ = _function_params(dyn, "convert_exported_program_to_serialized_trt_engine")
    assert options <= set(cparams), options - set(cparams)
    # save(module, file_path, output_format=..., arg_inputs=..., dynamic_shapes=..., retrace=...)
    sparams, _ = _function_params(top, "save")
    save_kw = torch_trt.save_options(sparams, None, 1, 8)
    assert set(save_kw) <= set(sparams) and {"dynamic_shapes", "retrace"} <= set(save_kw)
    # Input(min_shape=, opt_shape=, max_shape=, dtype=): keywords read from Input.__init__'s kwargs handling
    src = torch_trt_source["torch_tensorrt/_Input.py"]
    for kw in torch_trt.INPUT_KEYWORDS:
        assert f'"{kw}"' in src, kw
