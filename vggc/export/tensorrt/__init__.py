"""TensorRT engines (FP16 / INT8) from vggc's ONNX files and state_dicts, checked layer by layer.

The package re-exports the names the CLI, the pipeline, the GPU backends, the Triton writer and
the tests use, so ``from vggc.export.tensorrt import build_engine`` keeps working. Modules:

* :mod:`~vggc.export.tensorrt.probe` - availability, imports, GPU facts, version, logger;
* :mod:`~vggc.export.tensorrt.qdq` - source ONNX facts, source precision, TensorRT's Q/DQ rules;
* :mod:`~vggc.export.tensorrt.inspector` - engine inspector JSON and the layer-precision check;
* :mod:`~vggc.export.tensorrt.compat` - engine vs this machine's TensorRT / GPU;
* :mod:`~vggc.export.tensorrt.build` - ONNX -> engine with TensorRT (profile, timing cache);
* :mod:`~vggc.export.tensorrt.torch_trt` - state_dict -> exported program / engine with Torch-TensorRT.
"""

from vggc.export.tensorrt.build import (
    ENGINE_KIND,
    ENGINE_SUFFIXES,
    build_engine,
    check_batch_range,
    network_typing,
)
from vggc.export.tensorrt.compat import engine_compatibility
from vggc.export.tensorrt.inspector import (
    PrecisionCheck,
    check_layer_precision,
    inspect_engine,
    is_compute_layer,
    layer_precision,
    precision_from_text,
    summarize_layers,
    tensor_precision,
)
from vggc.export.tensorrt.probe import (
    INSTALL_HINT,
    NO_CUDA,
    TORCH_TRT_MISSING,
    TRT_MISSING,
    _make_logger,
    cuda_reason,
    current_environment,
    gpu_info,
    import_tensorrt,
    import_torch_tensorrt,
    require_cuda,
    tensorrt_reason,
    torch_tensorrt_reason,
    trt_major,
)
from vggc.export.tensorrt.qdq import PRECISIONS, check_qdq_for_tensorrt, check_source_precision, onnx_facts
from vggc.export.tensorrt.torch_trt import (
    TORCH_TRT_KIND,
    TORCH_TRT_SUFFIXES,
    build_torch_tensorrt,
    torch_tensorrt_typing_kwargs,
)

__all__ = [
    "ENGINE_KIND", "ENGINE_SUFFIXES", "INSTALL_HINT", "NO_CUDA", "PRECISIONS", "TORCH_TRT_KIND",
    "TORCH_TRT_MISSING", "TORCH_TRT_SUFFIXES", "TRT_MISSING", "PrecisionCheck", "_make_logger",
    "build_engine", "build_torch_tensorrt", "check_batch_range", "check_layer_precision",
    "check_qdq_for_tensorrt", "check_source_precision", "cuda_reason", "current_environment",
    "engine_compatibility", "gpu_info", "import_tensorrt", "import_torch_tensorrt", "inspect_engine",
    "is_compute_layer", "layer_precision", "network_typing", "onnx_facts", "precision_from_text",
    "require_cuda", "summarize_layers", "tensor_precision", "tensorrt_reason", "torch_tensorrt_reason",
    "torch_tensorrt_typing_kwargs", "trt_major",
]
