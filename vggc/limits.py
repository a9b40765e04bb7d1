"""Limits and fixed choices shared by several stages (one definition each).

``MAX_BATCH``: the largest batch a symbolic-batch export (ONNX, ``torch.export``) or a TensorRT
optimisation profile accepts. ``CALIB_METHODS``: the activation-calibration methods every static
INT8 backend offers.
"""

MAX_BATCH = 65536
CALIB_METHODS = ("minmax", "entropy", "percentile")
