"""Which torch modules stay FP32 when PT2E static quantization keeps a layer in FP32
(``vggc quantize --backend torch --max-drop``).

A layer is a ``nn.Conv2d`` / ``nn.Linear`` module name (``features.0``, ``classifier.6``).
``X86InductorQuantizer.set_module_name_qconfig(name, None)`` (torchao 0.18) annotates that module's
ops as "not quantized": its weight stays a float parameter and it adds no input quantization. But the
quantizer runs pooling/flatten ops int8-in/int8-out whenever *their* input is quantized, so a conv
behind a max-pool would still read a quantize/dequantize-rounded input; :func:`pass_through_modules`
names those modules so they are left unconfigured too. Checked by counting Q/DQ ops in the converted
graph (tests/test_quantize_budget_backends.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vggc.errors import VggcError


def quantizable_modules(model: nn.Module) -> list[str]:
    """Return the names of the modules static PT2E quantizes (``nn.Conv2d``, ``nn.Linear``), in order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ops the X86 quantizer runs int8-in/int8-out once their input is quantized: between a quantized layer
# and an FP32 one they would still round the FP32 layer's input
PASS_THROUGH_OPS = ("max_pool2d", "adaptive_avg_pool2d", "avg_pool2d", "flatten", "view", "reshape", "dropout",
                    "clone")


def _owner(node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else ""


def pass_through_modules(gm: torch.fx.GraphModule, fp32_modules: Sequence[str]) -> list[str]:
    """Return the names of the modules whose pass-through ops (:data:`PASS_THROUGH_OPS`) lie between a
    module of ``fp32_modules`` and the layer before it (e.g. the max-pool in front of a conv): with
    only the conv unconfigured, X86InductorQuantizer still quantizes the pool's output (measured with
    torchao 0.18), so the conv's input would stay int8. Root-level ops (``torch.flatten`` in
    ``forward``) have no module of their own and follow their producer."""
    out: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or _owner(node) not in fp32_modules or not node.args:
            continue
        src = node.args[0]
        while (isinstance(src, torch.fx.Node) and src.op == "call_function"
               and getattr(src.target, "_opname", None) in PASS_THROUGH_OPS):
            if _owner(src) and _owner(src) not in (*fp32_modules, *out):
                out.append(_owner(src))
            src = src.args[0]
    return out


def check_fp32_modules(model: nn.Module, fp32_modules: Sequence[str]) -> list[str]:
    """Return ``fp32_modules`` as a list; :class:`VggcError` for a name that is not a conv/linear module
    of ``model`` (the quantizer would silently ignore it)."""
    known = quantizable_modules(model)
    unknown = [n for n in fp32_modules if n not in known]
    if unknown:
        raise VggcError(f"cannot keep {', '.join(unknown)} in FP32: not a conv/linear module of this model "
                        f"(known: {', '.join(known)})")
    return list(fp32_modules)
