"""Training and eval throughput of the CIFAR VGG16-BN on this machine, fp32 vs bf16 autocast.

Usage: .venv/bin/python scripts/train_throughput.py [seconds_per_measurement]
Prints img/s for a training step (batch 128, SGD, channels_last) and for inference (batch 256),
each precision measured back to back in the same process, plus the bf16/fp32 ratio.
"""

from __future__ import annotations

import sys
import time

import torch

from vggc.cpu import has_native_bf16
from vggc.models import vgg16_cifar


def rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def main(seconds: float = 10.0) -> None:
    torch.manual_seed(0)
    model = vgg16_cifar().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    xe = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = {}
    for prec in ("fp32", "bf16"):
        ac = dict(device_type="cpu", dtype=torch.bfloat16, enabled=prec == "bf16")

        def train_step(ac=ac):
            model.train()
            with torch.autocast(**ac):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def eval_step(ac=ac):
            model.eval()
            with torch.inference_mode(), torch.autocast(**ac):
                model(xe)

        out[prec] = (rate(train_step, 128, seconds), rate(eval_step, 256, seconds))
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {has_native_bf16()}")
    for prec, (tr, ev) in out.items():
        print(f"{prec}: train {tr:7.1f} img/s   eval {ev:7.1f} img/s")
    print(f"bf16/fp32: train {out['bf16'][0] / out['fp32'][0]:.2f}x, eval {out['bf16'][1] / out['fp32'][1]:.2f}x")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
