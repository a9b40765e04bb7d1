"""Facts about this machine's CPU, read once: model name, the ISA flags that select kernels,
physical cores, and what they imply (native int8 dot products, native bf16).

The one home for ``/proc/cpuinfo`` parsing: quantization's ``reduce_range`` default, training's
``--precision auto``, the bench's machine report and the cache keys of timings all read it here.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# flag prefixes that decide which kernels run (and whether bf16 / int8 are native or emulated)
KERNEL_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def _parse(text: str) -> tuple[str, tuple[str, ...], int | None]:
    model, flags, pairs = "", (), set()
    phys = core = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = val.strip()
        elif key in ("flags", "Features") and not flags:
            flags = tuple(val.split())
        elif key == "physical id":
            phys = val.strip()
        elif key == "core id":
            core = val.strip()
        elif not key and phys is not None and core is not None:
            pairs.add((phys, core))
            phys = core = None
    if phys is not None and core is not None:
        pairs.add((phys, core))
    return model, flags, (len(pairs) or None)


def _cpuinfo() -> tuple[str, tuple[str, ...], int | None]:
    with contextlib.suppress(OSError):
        return _parse(CPUINFO.read_text())
    return "", (), None


def cpu_model() -> str:
    """Return the CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Return every ISA flag the kernel reports for CPU 0 (empty when unknown)."""
    return list(_cpuinfo()[1])


def kernel_flags() -> list[str]:
    """Return the sorted ISA flags that select kernels (AVX*, AMX*, FMA, F16C, SSE4*)."""
    return sorted({f for f in _cpuinfo()[1] if f.startswith(KERNEL_FLAG_PREFIXES)})


def physical_cores() -> int | None:
    """Return the number of distinct (socket, core) pairs, or ``None`` when unknown."""
    return _cpuinfo()[2]


def has_vnni() -> bool:
    """True when the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap or "VNNI" in cap or bool(VNNI_FLAGS & set(cpu_flags()))


def has_native_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); bf16 is emulated otherwise."""
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap or "BF16" in cap or bool(BF16_FLAGS & set(cpu_flags()))


def fingerprint() -> dict:
    """Return what identifies this CPU for reusing a timing: model, kernel flags, torch's capability."""
    return {"cpu": cpu_model(), "cpu_flags": kernel_flags(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
