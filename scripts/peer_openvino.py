#!/usr/bin/env python3
"""The plain OpenVINO + NNCF script a deployment engineer would write (issue 16's peer), no vggc code.

It rebuilds the CIFAR VGG16-BN from its state_dict with torchvision's ``make_layers``, exports
it with ``torch.onnx.export`` (or reads ``--onnx``, e.g. vggc's FP32 export), reads the JPEGs with
torchvision and normalises them with the sidecar's mean/std, quantizes with
``nncf.quantize(model, nncf.Dataset(<--calib class-balanced TRAIN images>), preset=PERFORMANCE)``,
compiles both models for CPU with ``INFERENCE_NUM_THREADS=--threads`` and ``NUM_STREAMS=1`` and
measures top-1 on the test set, throughput at batch 64 and p50 latency at batch 1. OpenVINO's
default inference precision is kept (``--f32`` forces ``INFERENCE_PRECISION_HINT=f32``); the
precision each compiled model really used is printed with its numbers. Prints one JSON object.

    python scripts/peer_openvino.py --weights ../shared/models/vgg16_bn_cifar10.pt \
        --data ../shared/data/cifar10-jpeg [--onnx vggc.onnx] [--threads 2] [--time-s 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NNCF_CI", "1")  # NNCF telemetry off (must be set before nncf is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.io import ImageReadMode, decode_image  # noqa: E402
from torchvision.models.vgg import cfgs, make_layers  # noqa: E402


def build_model(weights: Path) -> nn.Module:
    model = nn.Sequential()
    model.features = make_layers(cfgs["D"], batch_norm=True)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten(1)
    model.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512),
                                     nn.ReLU(True), nn.Dropout(), nn.Linear(512, 10))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def read_split(root: Path, mean, std, per_class: int | None = None, seed: int = 0):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    rng = random.Random(seed)
    for c, name in enumerate(classes):
        paths = sorted((root / name).iterdir())
        if per_class is not None:
            paths = sorted(rng.sample(paths, per_class))
        files += paths
        labels += [c] * len(paths)
    images = torch.stack([decode_image(str(f), mode=ImageReadMode.RGB) for f in files]).float() / 255
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return ((images - m) / s).numpy(), np.array(labels)


def top1(compiled, images, labels, batch=64) -> float:
    request, correct = compiled.create_infer_request(), 0
    for i in range(0, len(images), batch):
        out = request.infer({0: images[i:i + batch]})[compiled.output(0)]
        correct += int((out.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def timed(compiled, x, seconds: float) -> float:
    """Median seconds per synchronous call over ``seconds`` of calls (after 3 warm-up calls)."""
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: x})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--onnx", type=Path, default=None, help="FP32 ONNX to read (default: export with torch.onnx)")
    ap.add_argument("--calib", type=int, default=1000, help="class-balanced training images for NNCF")
    ap.add_argument("--limit", type=int, default=None, help="test images per class (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-s", type=float, default=10.0, help="seconds of calls per timing")
    ap.add_argument("--f32", action="store_true", help="INFERENCE_PRECISION_HINT=f32 (default: OpenVINO's choice)")
    args = ap.parse_args()

    import nncf
    import openvino as ov

    side = json.loads(args.weights.with_suffix(".json").read_text())
    mean, std = side["mean"], side["std"]
    test_x, test_y = read_split(args.data / "test", mean, std, per_class=args.limit)
    calib_x, _ = read_split(args.data / "train", mean, std, per_class=args.calib // 10)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        onnx_path = args.onnx
        if onnx_path is None:
            onnx_path = Path(d) / "vgg16.onnx"
            batch = torch.export.Dim("batch", min=1, max=1024)
            with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines
                torch.onnx.export(build_model(args.weights), (torch.zeros(2, 3, 32, 32),), str(onnx_path),
                                  input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
                                  dynamo=True)
        fp32 = core.read_model(str(onnx_path))
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout carries the JSON
            int8 = nncf.quantize(fp32, nncf.Dataset(calib_x, lambda x: x[None]),
                                 preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib_x))
        config = {"INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1}
        if args.f32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        rows = {}
        for name, model in (("openvino_fp32", fp32), ("openvino_nncf_int8", int8)):
            compiled = core.compile_model(model, "CPU", config)
            t64 = timed(compiled, test_x[np.arange(64) % len(test_x)], args.time_s)
            t1 = timed(compiled, test_x[:1], args.time_s)
            rows[name] = {"top1": top1(compiled, test_x, test_y), "n": len(test_x),
                          "throughput_b64": round(64 / t64, 2), "latency_p50_ms_b1": round(1e3 * t1, 3),
                          "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                          "num_streams": compiled.get_property("NUM_STREAMS"),
                          "inference_num_threads": compiled.get_property("INFERENCE_NUM_THREADS")}
    json.dump({"script": "scripts/peer_openvino.py", "openvino": ov.get_version(), "nncf": nncf.__version__,
               "onnx": str(args.onnx) if args.onnx else "torch.onnx.export (dynamo, dynamic batch)",
               "calib_images": len(calib_x), "threads": args.threads, "time_s": args.time_s,
               "device": core.get_property("CPU", "FULL_DEVICE_NAME"), "rows": rows}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
