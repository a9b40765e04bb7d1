"""The in-process reference a served throughput is compared with: the same file, batch 64, vggc's own runner.

:func:`reference_throughput` opens the file on the vggc backend of the runtime that serves it
(``openvino`` -> ``openvino-cpu``, ``onnxruntime`` -> ``onnxruntime-cpu``; the settings of a bench
row: one stream, all cores unless ``threads``) and times batch-``batch`` calls with the bench's
stop-when-stable rule (:func:`vggc.bench.timing.measure`, median of at most ``max_time`` seconds).
:func:`vggc.serve.loadtest.run_loadtest` runs it just before and just after the load levels
("in the same minutes") and reports served / in-process.
"""

from __future__ import annotations

import torch

from vggc.errors import InputError

RUNTIME_BACKENDS = {"openvino": "openvino-cpu", "onnxruntime": "onnxruntime-cpu"}


def reference_throughput(path, runtime_name: str | None = None, *, batch: int = 64, threads: int | None = None,
                         max_time: float = 10.0, seed: int = 0) -> dict:
    """Time ``path`` in-process at ``batch`` images per call; return ``file``, ``backend``, ``threads``,
    ``batch``, ``median_ms``, ``throughput_ips`` (batch / median), ``reps``, ``stable``."""
    from vggc import runtime
    from vggc.bench.timing import TimingPolicy, measure

    mf = runtime.describe(path)
    key = RUNTIME_BACKENDS.get(runtime_name or "") or runtime.default_backend(mf.format).key
    if key not in RUNTIME_BACKENDS.values():
        raise InputError(f"--reference {path}: backend {key} is not a CPU runtime Triton's python backend serves")
    threads = int(threads or torch.get_num_threads())
    runner = runtime.open_model(mf, runtime.get_backend(key), {"threads": threads})
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, mf.preprocess.input_size, mf.preprocess.input_size, generator=g)
        t = measure(lambda: runner.predict(x), TimingPolicy(warmup=3, min_reps=10, min_time=2.0, max_time=max_time))
    finally:
        runner.close()
    med = float(t.p50)
    return {"file": str(path), "backend": key, "threads": threads, "batch": batch, "median_ms": round(med * 1e3, 4),
            "throughput_ips": round(batch / med, 2), "reps": t.reps, "stable": t.stable}
