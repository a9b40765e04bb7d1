"""Throughput of several model files at one batch size, timed in interleaved rounds.

Throughput only, without accuracy passes (`vggc bench` times the same way by default, with
latency and top-1 too). Every round times every file once (median of ``--calls`` calls; the
bench's :func:`vggc.bench.timing.measure_rounds`), and the report is each file's median over
rounds and its ratio to the first file, from the same rounds:

    python scripts/interleaved_speed.py BASE.pt PRUNED.pt PRUNED.onnx ... --rounds 8 > speed.json

Each file runs on its default backend (what `vggc eval` uses: torch-fp32 for .pt, ONNX Runtime
CPU for .onnx). Prints one JSON object: rows with p50/p90 over rounds (img/s) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from vggc.bench.timing import RoundsPolicy, Task, measure_rounds
from vggc.runtime import default_backend, describe, open_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runners = []
    for f in args.files:
        mf = describe(f)
        be = default_backend(mf.format)
        r = open_model(mf, be, {"threads": args.threads})
        x = torch.randn(args.batch, 3, mf.preprocess.input_size, mf.preprocess.input_size)
        runners.append((f, be.key, r, x))
    tasks = [Task(lambda r=r, x=x: r.predict(x), calls=args.calls, seconds=0.0) for _f, _k, r, x in runners]
    timings = measure_rounds(tasks, RoundsPolicy(rounds=args.rounds, warmup=2))
    for (f, _k, _r, _x), t in zip(runners, timings):
        if isinstance(t, BaseException):
            raise SystemExit(f"{f}: {t}")
    speeds = {f: [args.batch / m for m in t.round_medians] for (f, _k, _r, _x), t in zip(runners, timings)}
    base = statistics.median(speeds[args.files[0]])
    rows = []
    for f, key, _r, _x in runners:
        s = sorted(speeds[f])
        med = statistics.median(s)
        rows.append({"file": f, "backend": key, "img_per_s_p50": round(med, 1),
                     "img_per_s_p10": round(s[max(0, len(s) // 10)], 1), "ratio_vs_first": round(med / base, 2)})
    print(json.dumps({"batch": args.batch, "rounds": args.rounds, "calls": args.calls, "threads": args.threads,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
