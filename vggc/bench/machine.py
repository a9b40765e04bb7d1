"""Facts about the machine a bench ran on: CPU model and SIMD flags, cores, GPU, library versions."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform

from vggc import cpu, provenance


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

    model, flags = cpu.cpu_model(), cpu.kernel_flags()
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": model,
        "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "physical_cores": cpu.physical_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "native_bf16": cpu.has_native_bf16(),
        "gpus": gpu_info(),
        "cuda_available": bool(torch.cuda.is_available()),
        "libraries": provenance.library_versions(),
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
