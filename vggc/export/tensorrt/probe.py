"""What TensorRT / Torch-TensorRT / CUDA this machine has: availability reasons (without importing
tensorrt), one-line imports, the GPU's name / compute capability / memory, the TensorRT version and
the logger every TensorRT object here is created with."""

from __future__ import annotations

import importlib
import importlib.util

from vggc.errors import UnavailableError, first_line

INSTALL_HINT = "pip install 'vggc[gpu]' on a CUDA machine"
TRT_MISSING = f"tensorrt not installed: {INSTALL_HINT}"
TORCH_TRT_MISSING = f"torch_tensorrt not installed: {INSTALL_HINT}"
NO_CUDA = "no CUDA device"


def tensorrt_reason() -> str | None:
    """Why TensorRT engines cannot be built/run here (``None`` when they can). Does not import tensorrt."""
    if importlib.util.find_spec("tensorrt") is None:
        return TRT_MISSING
    return cuda_reason()


def torch_tensorrt_reason() -> str | None:
    """Why Torch-TensorRT cannot run here (``None`` when it can)."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return TORCH_TRT_MISSING
    return cuda_reason()


def cuda_reason() -> str | None:
    import torch

    return None if torch.cuda.is_available() else NO_CUDA


def import_tensorrt():
    """Import and return the ``tensorrt`` module; :class:`UnavailableError` (one line) when absent."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise UnavailableError(TRT_MISSING) from None
    except Exception as err:  # noqa: BLE001 - e.g. OSError for a missing libnvinfer
        raise UnavailableError(f"tensorrt cannot be imported ({first_line(err)}): {INSTALL_HINT}") from None


def import_torch_tensorrt():
    """Import and return ``torch_tensorrt``; :class:`UnavailableError` (one line) when absent."""
    try:
        return importlib.import_module("torch_tensorrt")
    except ImportError:
        raise UnavailableError(TORCH_TRT_MISSING) from None
    except Exception as err:  # noqa: BLE001
        raise UnavailableError(f"torch_tensorrt cannot be imported ({first_line(err)}): {INSTALL_HINT}") from None


def require_cuda(what: str = "TensorRT") -> None:
    """Raise :class:`UnavailableError` when there is no CUDA device."""
    if cuda_reason():
        raise UnavailableError(f"{NO_CUDA}: {what} builds and runs engines on an NVIDIA GPU")


def gpu_info(device: int = 0) -> dict:
    """Name, compute capability and memory of CUDA device ``device``."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def current_environment(trt, device: int = 0) -> dict:
    """What an engine built or run here depends on: TensorRT version, GPU and compute capability."""
    return {"tensorrt": str(trt.__version__), **gpu_info(device)}


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0



def _make_logger(trt):
    """A TensorRT logger that keeps error messages (for one-line failures) and drops the rest."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(first_line(str(msg)) or "error")

    return _Logger()

