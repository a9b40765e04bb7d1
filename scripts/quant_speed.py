"""INT8 vs FP32 speed on this CPU, measured back to back (interleaved rounds, medians, ratios).

Other processes load the machine, so absolute numbers drift between runs; the ratios come from
rows timed in the same rounds (the bench's :func:`vggc.bench.timing.measure_rounds`: every round
times every row, in reverse order every other round). Files are the ones `vggc quantize` /
`vggc export` write:

    D=../shared/data/cifar10-jpeg; REF=../shared/models/vgg16_bn_cifar10.pt; O=artifacts/quant
    vggc quantize $REF --mode static  --backend onnxruntime --data $D --out $O/vgg16_int8_ort_static.onnx
    vggc quantize $REF --mode static  --backend torch       --data $D --out $O/vgg16_int8_torch_static.pt2
    vggc quantize $REF --mode dynamic --backend onnxruntime --data $D --out $O/vgg16_int8_ort_dynamic.onnx
    vggc quantize $REF --mode dynamic --backend torch       --data $D --out $O/vgg16_int8_torch_dynamic.pt2
    vggc export   $REF --no-parity --out $O/vgg16_fp32.onnx
    python scripts/quant_speed.py --dir $O --ref $REF --threads 2 --rounds 8 > speed.json

Rows: ONNX Runtime FP32 / INT8 static / INT8 dynamic (onnxruntime-cpu), torch FP32 eager
(torch-fp32), torch.compile FP32 without (torch-compile-fp32) and with Inductor freezing (the same
compiler settings as the int8 path: the fair compiled baseline), torch INT8 static compiled
(torch-int8-compiled) and eager (torch-int8-eager), torch INT8 dynamic compiled. Batch 64
throughput (median of 2 calls per round) and batch-1 latency p50 (10 calls per round).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from vggc.bench.timing import RoundsPolicy, Task, measure_rounds


def _frozen_fp32(path: str):
    import torch._inductor.config as inductor_config

    from vggc.models import load_weights

    compiled = torch.compile(load_weights(path).model.eval())

    class Runner:
        compile_seconds = 0.0

        @torch.no_grad()
        def predict(self, x):
            with inductor_config.patch(freezing=True):
                return compiled(x)

    return Runner()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="artifacts/quant")
    ap.add_argument("--ref", default="../shared/models/vgg16_bn_cifar10.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--only", default=None, help="comma-separated row labels")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from vggc import runtime

    d = a.dir
    rows = [("ort-fp32", f"{d}/vgg16_fp32.onnx", "onnxruntime-cpu"),
            ("ort-int8-static", f"{d}/vgg16_int8_ort_static.onnx", "onnxruntime-cpu"),
            ("ort-int8-dynamic", f"{d}/vgg16_int8_ort_dynamic.onnx", "onnxruntime-cpu"),
            ("torch-fp32-eager", a.ref, "torch-fp32"),
            ("torch-fp32-compiled", a.ref, "torch-compile-fp32"),
            ("torch-fp32-compiled-frozen", a.ref, "frozen"),
            ("torch-int8-static-compiled", f"{d}/vgg16_int8_torch_static.pt2", "torch-int8-compiled"),
            ("torch-int8-static-eager", f"{d}/vgg16_int8_torch_static.pt2", "torch-int8-eager"),
            ("torch-int8-dynamic-compiled", f"{d}/vgg16_int8_torch_dynamic.pt2", "torch-int8-compiled")]
    only = set(a.only.split(",")) if a.only else None
    x64 = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x1 = x64[:1].clone()
    runners = {}
    for label, path, key in rows:
        if (only and label not in only) or not os.path.exists(path):
            continue
        t0 = time.perf_counter()
        if key == "frozen":
            r = _frozen_fp32(path)
        else:
            r = runtime.open_model(runtime.describe(path), runtime.get_backend(key), {"threads": a.threads, "batch": 64})
        for x in (x64, x1, x64, x1):  # warm-up (compiles where the backend compiles lazily)
            r.predict(x)
        runners[label] = r
        print(f"opened {label}: {time.perf_counter() - t0:.1f} s (compile_seconds "
              f"{getattr(r, 'compile_seconds', 0.0):.1f})", file=sys.stderr, flush=True)
    labels = list(runners)
    tasks = []
    for label in labels:
        r = runners[label]
        b64_calls = 1 if label.endswith("int8-static-eager") else 2
        tasks.append(Task(lambda r=r: r.predict(x64), calls=b64_calls, seconds=0.0))
        tasks.append(Task(lambda r=r: r.predict(x1), calls=10, seconds=0.0))
    t_start, load0 = time.time(), os.getloadavg()
    timings = measure_rounds(tasks, RoundsPolicy(rounds=a.rounds, warmup=0))  # warmed up above
    out = {}
    for i, label in enumerate(labels):
        b64, b1 = timings[2 * i], timings[2 * i + 1]
        if isinstance(b64, BaseException) or isinstance(b1, BaseException):
            out[label] = {"error": str(b64 if isinstance(b64, BaseException) else b1)}
            continue
        out[label] = {"b64_s": b64.p50, "throughput_img_s": 64 / b64.p50, "b1_p50_ms": 1000 * b1.p50,
                      "b64_round_spread": round(b64.spread, 3)}

    def ratio(fast, base):
        if "b64_s" in out.get(fast, {}) and "b64_s" in out.get(base, {}):
            return {"throughput_x": out[fast]["throughput_img_s"] / out[base]["throughput_img_s"],
                    "b1_latency_x": out[base]["b1_p50_ms"] / out[fast]["b1_p50_ms"]}
        return None

    ratios = {"ort int8 static / ort fp32": ratio("ort-int8-static", "ort-fp32"),
              "ort int8 dynamic / ort fp32": ratio("ort-int8-dynamic", "ort-fp32"),
              "torch int8 compiled / torch fp32 eager": ratio("torch-int8-static-compiled", "torch-fp32-eager"),
              "torch int8 compiled / torch fp32 compiled": ratio("torch-int8-static-compiled", "torch-fp32-compiled"),
              "torch int8 compiled / torch fp32 compiled+freezing": ratio("torch-int8-static-compiled",
                                                                         "torch-fp32-compiled-frozen"),
              "torch int8 eager / torch fp32 eager": ratio("torch-int8-static-eager", "torch-fp32-eager"),
              "torch int8 dynamic compiled / torch fp32 eager": ratio("torch-int8-dynamic-compiled",
                                                                     "torch-fp32-eager")}
    print(json.dumps({"rows": out, "ratios": {k: v for k, v in ratios.items() if v}, "rounds": a.rounds,
                      "threads": a.threads, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                      "seconds": round(time.time() - t_start, 1),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}, indent=1))


if __name__ == "__main__":
    main()
