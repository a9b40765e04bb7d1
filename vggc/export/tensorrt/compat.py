"""Whether a serialized engine can run here: its manifest's build environment (TensorRT version,
GPU, compute capability) against this machine's."""

from __future__ import annotations


def _ver3(v: str) -> tuple:
    return tuple(str(v).split(".")[:3])


def engine_compatibility(manifest: dict, current: dict) -> tuple[str | None, str | None]:
    """Compare an engine manifest's build environment with ``current`` (:func:`current_environment`).

    Returns ``(error, warning)``. A serialized engine only deserialises with the TensorRT version
    that built it and only runs on GPUs of the compute capability it was built for (unless built
    version-/hardware-compatible, recorded in the manifest); a different GPU model of the same
    compute capability works but was tuned for the other GPU, which is a warning.
    """
    built = manifest.get("build_environment") or {}
    if not built:
        return None, "no engine manifest: cannot check it was built for this GPU and TensorRT version"
    problems = []
    b_trt, c_trt = built.get("tensorrt"), current.get("tensorrt")
    if b_trt and c_trt and _ver3(b_trt) != _ver3(c_trt) and not built.get("version_compatible"):
        problems.append("TensorRT")
    b_cc, c_cc = built.get("compute_capability"), current.get("compute_capability")
    if b_cc and c_cc and str(b_cc) != str(c_cc) and not built.get("hardware_compatible"):
        problems.append("GPU")
    b_gpu, c_gpu = built.get("gpu", "?"), current.get("gpu", "?")
    if problems:
        return (f"engine built with TensorRT {b_trt} for {b_gpu} (compute capability {b_cc}) but this machine has "
                f"TensorRT {c_trt} and {c_gpu} (compute capability {c_cc}); rebuild it here with `vggc engine`"), None
    if b_gpu != c_gpu:
        return None, (f"engine built on {b_gpu}, running on {c_gpu} (same compute capability {c_cc}): it runs, "
                      "but its kernels were timed on the other GPU; rebuild here for best speed")
    return None, None

