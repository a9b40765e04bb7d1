"""Options and helpers shared by several commands."""

from __future__ import annotations

import json
import os

import click
import torch


def floats3(ctx, param, value):
    """Click callback: parse ``"a,b,c"`` into three floats (or ``None``)."""
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected three comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    if len(vals) != 3:
        raise click.BadParameter("expected three comma-separated numbers, e.g. 0.5,0.5,0.5")
    return vals


def data_option(required: bool = True):
    return click.option("--data", "data", type=click.Path(file_okay=False, path_type=str),
                        required=required, envvar="VGGC_DATA", show_envvar=True,
                        help="CIFAR-10 directory: torchvision's cifar-10-batches-py or an ImageFolder "
                             "tree train/<class>/*.jpg + test/<class>/*.jpg.")


def download_option(f):
    return click.option("--download", is_flag=True,
                        help="Download CIFAR-10 through torchvision into --data if it is not there "
                             "(needs internet; never done unless asked).")(f)


def preprocess_options(f):
    f = click.option("--input-size", type=click.IntRange(32, 512), default=None,
                     help="Resize test images to this side (e.g. 224 for ImageNet-size fine-tunes). "
                          "Default: the model's sidecar JSON, else 32.")(f)
    f = click.option("--std", callback=floats3, default=None, metavar="R,G,B",
                     help="Normalisation std. Default: the sidecar <weights>.json, else CIFAR-10's.")(f)
    f = click.option("--mean", callback=floats3, default=None, metavar="R,G,B",
                     help="Normalisation mean. Default: the sidecar <weights>.json, else CIFAR-10's.")(f)
    return f


def threads_option(f):
    return click.option("--threads", type=click.IntRange(1, 512), default=None,
                        help="CPU threads for PyTorch/ONNX Runtime (default: all cores).")(f)


def set_threads(n: int | None) -> int:
    """Fix torch's intra-op thread count (default: all cores); return it."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))




def teacher_model_options(f):
    """``--teacher-model FILE`` / ``--teacher-backend KEY``: the KD teacher's forward pass from a
    compiled model file (:func:`vggc.compress.teacher.open_teacher`)."""
    f = click.option("--teacher-backend", default=None, metavar="KEY",
                     help="With --teacher-model: the backend that runs it (e.g. openvino-cpu, onnxruntime-cpu; "
                          "default: the first that runs its format here). Refused, never replaced, when it "
                          "cannot run.")(f)
    f = click.option("--teacher-model", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
                     metavar="FILE",
                     help="Compute the teacher's logits with this model file of the SAME teacher instead of "
                          "its PyTorch module: e.g. its INT8 OpenVINO IR from `vggc quantize --backend openvino` "
                          "(~4x faster than bf16 PyTorch here). Its preprocessing must match; its top-1 and "
                          "agreement with the PyTorch teacher are measured and recorded in the manifest.")(f)
    return f
