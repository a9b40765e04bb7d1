"""KD training throughput of the two kinds of trained variant, before/after, in one run (a benchmark).

Times ``vggc.train.fit`` itself (the project's one training loop: augmentation, channels_last,
autocast, the KD loss with its teacher, SGD step) for
  * a pruned VGG16-BN target (the reference pruned in one shot to ``--target-macs``, uniform L1), and
  * the CIFAR MobileNetV2 student (``--width``),
each distilling from the unpruned reference, under three precision policies:
  * ``fp32``              everything fp32;
  * ``bf16-all``          bf16 autocast everywhere (vggc before the fp32 islands);
  * ``bf16+fp32-islands`` bf16 autocast with strided depthwise convolutions in fp32 (vggc's ``auto`` on a
                          CPU with native bf16: :func:`vggc.train.fp32_islands`).
Every round runs one short epoch (``--steps`` batches of 128 synthetic images: speed does not depend
on pixel values) of every (model, policy) pair, in reverse order every other round; the tables give
the median img/s over rounds, its p90 (90 % of the rounds ran at least this fast) and and each policy's ratio to ``bf16-all`` of the same model, so
the ratios come from the same minutes. On a CPU without native bf16 the bf16 rows are emulated
(slow) and vggc trains in fp32 (``--precision auto``).

    .venv/bin/python scripts/train_speed.py --weights ../shared/models/vgg16_bn_cifar10.pt --rounds 5 \
        [--teacher-model RUN/vgg16_bn_cifar10_int8_ov_static.xml] [--profile] --json speed.json

--profile then runs one more short epoch per model under vggc's own policy (``--precision auto``) inside
``torch.profiler`` and prints where the step's time goes: each op group's share of the self CPU time of the
PyTorch ops recorded (:data:`OP_GROUPS`; a PyTorch teacher's forward is in the total, an OpenVINO teacher's
inference is not a PyTorch op and is not), to show what bounds the training throughput.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import contextmanager

import torch

from vggc import cpu, train
from vggc.compress.distill import DistillLoss, KDConfig
from vggc.data import Split

POLICIES = ("fp32", "bf16-all", "bf16+fp32-islands")
# profile groups, first match wins: (group, substrings of the aten op name)
OP_GROUPS = (("convolution backward", ("convolution_backward",)),
             ("convolution forward", ("convolution",)),
             ("batch norm backward", ("batch_norm_backward",)),
             ("batch norm forward", ("batch_norm",)),
             ("activation backward", ("hardtanh_backward", "threshold_backward")),
             ("activation forward", ("clamp", "hardtanh", "relu")),
             ("copies and casts", ("copy_", "_to_copy")),
             ("linear", ("addmm", "::mm", "linear")))


@contextmanager
def _policy(name: str):
    """Set the precision policy for one fit: yields fit's ``precision`` setting."""
    rule = train.keeps_fp32_under_bf16
    if name == "bf16-all":
        train.keeps_fp32_under_bf16 = lambda m: False
    try:
        yield "fp32" if name == "fp32" else "bf16"
    finally:
        train.keeps_fp32_under_bf16 = rule


def _models(weights: str, target: float, width: float) -> dict:
    from vggc.compress.prune import PruneSpec
    from vggc.compress.prune.plan import prune_model
    from vggc.models import load_weights, mobilenet_v2_cifar

    pruned = load_weights(weights).model
    prune_model(pruned, PruneSpec(strategy="uniform", target_macs=target, round_to=8), 32)
    torch.manual_seed(0)
    return {f"vgg16_bn pruned {100 * target:g}% MACs": pruned.state_dict(),
            f"mobilenet_v2 x{width:g}": mobilenet_v2_cifar(width, 10).state_dict()}


def op_group(name: str) -> str:
    """Return the :data:`OP_GROUPS` group of a profiler event name (``"other"`` when none matches)."""
    return next((g for g, keys in OP_GROUPS if any(k in name for k in keys)), "other")


def profile_fit(model, split, pre, teacher) -> dict:
    """Run one short KD epoch of ``model`` under vggc's default precision inside ``torch.profiler``; return
    its img/s, the precision, and each op group's share of the recorded aten ops' self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    cfg = train.TrainConfig(epochs=1, batch_size=128, lr=0.01, precision="auto", seed=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = train.fit(model, split, pre, cfg, loss_fn=DistillLoss(teacher, KDConfig(), 0.1), checkpoint_minutes=None)
    groups: dict = {}
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            g = op_group(ev.key)
            groups[g] = groups.get(g, 0.0) + ev.self_cpu_time_total
    total = sum(groups.values()) or 1.0
    return {"precision": res.precision, "fp32_layers": len(res.fp32_layers),
            "images_per_s_profiled": res.history[-1]["images_per_s"],
            "share": {g: round(v / total, 4) for g, v in sorted(groups.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="../shared/models/vgg16_bn_cifar10.pt")
    ap.add_argument("--teacher-model", default=None, help="KD teacher file (e.g. the INT8 OpenVINO IR); "
                                                          "default: the reference in PyTorch under autocast")
    ap.add_argument("--target-macs", type=float, default=0.125)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=12, help="batches of 128 per timed epoch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="then profile one epoch per model (vggc's policy) "
                                                            "and print each op group's share of the time")
    args = ap.parse_args()

    from pathlib import Path

    from vggc.models import load_weights, model_from_state_dict
    from vggc.runtime import preprocess_from_meta, read_manifest

    pre = preprocess_from_meta(read_manifest(Path(args.weights)))
    teacher = load_weights(args.weights).model
    if args.teacher_model:
        from vggc.compress.teacher import open_teacher

        teacher = open_teacher(args.teacher_model, pre)
    g = torch.Generator().manual_seed(0)
    n = args.steps * 128
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g), tuple(str(i) for i in range(10)))
    states = _models(args.weights, args.target_macs, args.width)
    pairs = [(m, pol) for m in states for pol in POLICIES]
    rates: dict = {pair: [] for pair in pairs}
    for r in range(args.rounds):
        for model_name, pol in (pairs if r % 2 == 0 else pairs[::-1]):
            model, _, _ = model_from_state_dict(states[model_name])
            with _policy(pol) as precision:
                cfg = train.TrainConfig(epochs=1, batch_size=128, lr=0.01, precision=precision, seed=r)
                res = train.fit(model, split, pre, cfg, loss_fn=DistillLoss(teacher, KDConfig(), 0.1),
                                checkpoint_minutes=None)
            rates[(model_name, pol)].append(res.history[-1]["images_per_s"])
            print(f"round {r + 1}: {model_name:<28} {pol:<18} {rates[(model_name, pol)][-1]:7.1f} img/s",
                  file=sys.stderr, flush=True)

    def slow_tail(v):  # 90 % of the rounds ran at least this fast (the p90 of seconds per image)
        return sorted(v)[int(round(0.1 * (len(v) - 1)))]

    out = {"cpu": cpu.cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "native_bf16": cpu.has_native_bf16(), "threads": torch.get_num_threads(), "rounds": args.rounds,
           "steps_per_epoch": args.steps, "batch": 128,
           "teacher": args.teacher_model or "reference state_dict in PyTorch (autocast)", "rows": []}
    print(f"\n{out['cpu']} ({out['cpu_capability']}, native bf16: {out['native_bf16']}), "
          f"{out['threads']} threads, {args.rounds} interleaved rounds; teacher: {out['teacher']}")
    print(f"{'model':<28} {'policy':<18} {'p50 img/s':>10} {'p90 img/s':>10} {'vs bf16-all':>11}")
    for model_name in states:
        ref = statistics.median(rates[(model_name, "bf16-all")])
        for pol in POLICIES:
            v = rates[(model_name, pol)]
            row = {"model": model_name, "policy": pol, "p50": statistics.median(v), "p90": slow_tail(v),
                   "all": v, "ratio_vs_bf16_all": statistics.median(v) / ref}
            out["rows"].append(row)
            print(f"{model_name:<28} {pol:<18} {row['p50']:10.1f} {row['p90']:10.1f} {row['ratio_vs_bf16_all']:10.2f}x")
    if args.profile:
        out["profile"] = {}
        for model_name in states:
            model, _, _ = model_from_state_dict(states[model_name])
            prof = out["profile"][model_name] = profile_fit(model, split, pre, teacher)
            print(f"\nwhere {model_name}'s KD step spends its time ({prof['precision']}, "
                  f"{prof['images_per_s_profiled']:.1f} img/s under the profiler; share of aten self CPU time):")
            for g, v in prof["share"].items():
                print(f"  {g:<22} {100 * v:5.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
