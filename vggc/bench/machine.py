"""Facts about the machine a bench ran on: CPU model and SIMD flags, cores, GPU, library versions."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from importlib import metadata
from pathlib import Path

# CPU flags that decide which kernels run (and whether bf16/int8 are native or emulated)
_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")
_LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "torchao",
              "tensorrt", "torch-tensorrt", "torch-pruning", "numpy")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = val.split()
    wanted = sorted({f for f in flags if f.startswith(_FLAG_PREFIXES)})
    return model, wanted


def _physical_cores() -> int | None:
    with contextlib.suppress(OSError):
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = val.strip()
            elif key == "core id":
                core = val.strip()
            elif not key and phys is not None and core is not None:
                pairs.add((phys, core))
                phys = core = None
        if phys is not None and core is not None:
            pairs.add((phys, core))
        return len(pairs) or None
    return None


def library_versions() -> dict[str, str]:
    """Return installed versions (from package metadata, nothing imported) of the libraries that matter."""
    out = {}
    for name in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def gpu_info() -> list[dict]:
    """Return one dict per visible CUDA device (empty without CUDA)."""
    import torch

    gpus = []
    with contextlib.suppress(Exception):
        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}"})
    return gpus


def machine_info(threads: int | None = None) -> dict:
    """Return JSON-able facts about this machine for the bench report."""
    import torch

    model, flags = _cpuinfo()
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": model,
        "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "native_bf16": any(f in flags for f in ("avx512_bf16", "amx_bf16")),
        "gpus": gpu_info(),
        "cuda_available": bool(torch.cuda.is_available()),
        "libraries": library_versions(),
    }
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        info["onnxruntime_providers"] = list(ort.get_available_providers())
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def describe_flags(flags: list[str]) -> str:
    """One line: the SIMD flags present, and which of AVX-512 / AMX are absent."""
    text = " ".join(flags) or "unknown"
    missing = [name for name, pre in (("AVX-512", "avx512"), ("AMX", "amx")) if not any(f.startswith(pre) for f in flags)]
    if flags and missing:
        text += f" (no {', no '.join(missing)})"
    return text
