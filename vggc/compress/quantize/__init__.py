"""INT8 post-training quantization of a trained model: ONNX Runtime (``.onnx``), PyTorch (``.pt2``) or
OpenVINO/NNCF (IR ``.xml`` + ``.bin``).

:func:`quantize` is the one entry point (``vggc quantize`` and the pipeline call it):

==============  ================================  ===============================  ==========================
                ``onnxruntime`` -> ``.onnx``      ``torch`` -> ``.pt2``            ``openvino`` -> ``.xml``
==============  ================================  ===============================  ==========================
``static``      QDQ, S8S8 symmetric, per-channel  PT2E + X86InductorQuantizer (u8  NNCF PTQ of the FP32 ONNX
                weights, MinMax/Entropy/          act, s8 per-channel weights);    export (preset
                Percentile calibration; runs as   fast when compiled               performance/mixed, fast
                QLinearConv/QGemm; TensorRT input (``torch-int8-compiled``)        or full bias correction)
``dynamic``     Linear (MatMul/Gemm) layers only  torchao int8 dyn-act/int8-weight  not offered
==============  ================================  ===============================  ==========================

Calibration uses a class-balanced subset of the **training** split (``balanced_indices`` with
``seed``), never test images. Dynamic quantization touches only the Linear layers, so on a CIFAR
VGG16 (13 convs, 512-wide head: ~1.7% of the MACs) it barely changes size or speed; the manifest's
``notes`` say so.

Layout: :mod:`.core` (:func:`quantize`, the shared checks), :mod:`.calibration`, :mod:`.budget`
(the ``--max-drop`` search), :mod:`.pt2e_fp32` (which torch modules stay FP32), :mod:`.backend` (the
interface of a backend module) and one module per backend: :mod:`.backend_ort`, :mod:`.backend_torch`
(with :mod:`.pt2_file`, the ``.pt2`` file side), :mod:`.backend_openvino`. Which module a
``--backend`` is, and its facts, come from :mod:`vggc.formats`. This package re-exports the public names.
"""

from vggc.compress.quantize.budget import TRIAL_BACKENDS, BudgetNotMetError, BudgetResult
from vggc.compress.quantize.calibration import CALIB_BATCH, calibration_batches
from vggc.compress.quantize.core import (
    BACKENDS,
    DEFAULT_CALIB_METHOD,
    EVAL_BACKENDS,
    MODES,
    SUFFIXES,
    check_fp32_onnx,
    check_reference,
    check_settings,
    dynamic_note,
    quantize,
    resolve_reduce_range,
)
from vggc.limits import CALIB_METHODS

__all__ = ["BACKENDS", "CALIB_BATCH", "CALIB_METHODS", "DEFAULT_CALIB_METHOD", "EVAL_BACKENDS", "MODES", "SUFFIXES",
           "TRIAL_BACKENDS", "BudgetNotMetError", "BudgetResult", "calibration_batches", "check_fp32_onnx",
           "check_reference", "check_settings", "dynamic_note", "quantize", "resolve_reduce_range"]
