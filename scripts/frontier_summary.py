"""Summarise a finished `vggc pipeline` run (or its published copy under docs/) against a peer, for a README.

    python scripts/frontier_summary.py DIR [--peer peer_openvino.json] [--json checks.json]

DIR holds pipeline.json and the bench's results.json and answer.json (a run's --out has them under bench/;
scripts/publish_run.py puts them beside pipeline.json). --peer defaults to DIR/peer_openvino.json when it
exists (scripts/peer_openvino.py's output, run in the same minutes as the bench).

Prints markdown: per trained variant (each pruned target, the student) the epochs its pilot and final run got,
why, and its FP32 top-1; the baseline row, then each model on its best backend (the report's
:func:`vggc.bench.report.best_per_model`: a file and its exports are one model); the peer's rows; then the checks
below, each with its numbers and "yes"/"NO". --json writes the same checks as JSON. The thresholds default to
those of the issue that asked for the training budget (a recommended CPU variant >= 6x the peer's INT8 at batch
64, >= 50x PyTorch eager FP32, batch-1 p50 <= 0.3 ms; the student >= 86.5 % with INT8 rows; the full preset's
training and steps within its time budget). Exit status 0 whatever the checks say, 2 for a DIR it cannot read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from vggc.bench.baseline import settled
from vggc.bench.report import best_per_model


def _load(d: Path, name: str) -> dict | list:
    for p in (d / name, d / "bench" / name):
        if p.is_file():
            return json.loads(p.read_text())
    raise FileNotFoundError(f"{d}: no {name} (nor bench/{name})")


def trained_variants(pipeline: dict) -> list[dict]:
    """Return one dict per trained step of ``pipeline`` (``prune<T>``, ``distill``): step, model file,
    top1, pilot_epochs, epochs, why, seconds, spent (the step's cost, cached runs included)."""
    out = []
    for s in pipeline.get("steps", []):
        m = s.get("metrics") or {}
        if not (s["name"] == "distill" or re.fullmatch(r"prune[0-9_]+", s["name"])):
            continue
        alloc = m.get("allocation") or {}
        model = next((o for o in s.get("outputs", []) if o.endswith(".pt") and not o.endswith("_pilot.pt")), None)
        out.append({"step": s["name"], "status": s["status"], "model": model, "top1": m.get("top1"),
                    "pilot_epochs": alloc.get("pilot_epochs"), "epochs": alloc.get("epochs"), "why": alloc.get("why"),
                    "seconds": s.get("seconds"), "spent": s.get("spent")})
    return out


def checks(pipeline: dict, rows: list[dict], answer: dict, peer: dict | None, *, min_vs_peer: float,
           min_vs_eager: float, max_p50_ms: float, min_student_top1: float) -> list[dict]:
    """Return the acceptance checks: each {name, value, bar, ok} (ok None when the run lacks what it needs)."""
    pick = (answer.get("targets") or {}).get("cpu-throughput") or {}
    peer_int8 = ((peer or {}).get("rows") or {}).get("openvino_nncf_int8") or {}
    floor = answer.get("baseline", {}).get("top1")
    out = []

    def add(name, value, bar, ok):
        out.append({"name": name, "value": value, "bar": bar, "ok": ok})

    tp, peer_tp = pick.get("throughput"), peer_int8.get("throughput_b64")
    add("answer vs peer INT8 @batch", round(tp / peer_tp, 2) if tp and peer_tp else None, f">= {min_vs_peer}",
        (tp / peer_tp >= min_vs_peer) if tp and peer_tp else None)
    sp = pick.get("speedup")
    add("answer vs eager FP32 @batch", sp, f">= {min_vs_eager}", sp >= min_vs_eager if sp is not None else None)
    p50 = pick.get("latency_p50_ms")
    row = next((r for r in rows if (r.get("model"), r.get("backend")) == (pick.get("model"), pick.get("backend"))), {})
    if p50 is not None and not settled(row, "latency_p50_ms"):  # a number that did not settle meets no bar
        add("answer p50 ms @1 (batch-1 timing did not settle)", p50, f"<= {max_p50_ms}", False)
    else:
        add("answer p50 ms @1", p50, f"<= {max_p50_ms}", p50 <= max_p50_ms if p50 is not None else None)
    budget = answer.get("max_drop_pt")
    top1 = pick.get("top1")
    if floor is not None and budget is not None and top1 is not None:
        add("answer top-1 within the budget", top1, f">= {round(floor - budget / 100, 4)}",
            bool(pick.get("within_budget", True)) and top1 >= round(floor - budget / 100, 4))
    else:
        add("answer top-1 within the budget", top1, "the bench's budget", None)
    student = next((v for v in trained_variants(pipeline) if v["step"] == "distill"), None)
    s_top1 = student and student["top1"]
    add("student FP32 top-1", s_top1, f">= {min_student_top1}", s_top1 >= min_student_top1 if s_top1 else None)
    stem = student and student["model"] and student["model"][: -len(".pt")]
    int8 = sorted({r["model"] for r in rows if stem and r["model"].startswith(stem + "_int8") and r["status"] == "ok"})
    add("student INT8 rows", len(int8), ">= 1", len(int8) >= 1 if student else None)
    tb = pipeline.get("time_budget") or {}
    spent = tb.get("spent_seconds")
    add("full preset spent within its budget (s)", spent, f"<= {tb.get('seconds')}",
        spent <= tb["seconds"] if spent is not None and tb.get("seconds") else None)
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def render(pipeline: dict, rows: list[dict], answer: dict, peer: dict | None, found: list[dict]) -> str:
    """Return the markdown summary (see the module docstring)."""
    pick = (answer.get("targets") or {}).get("cpu-throughput") or {}
    lines = ["| trained variant | pilot epochs | final epochs | FP32 top-1 % | step s | why |", "|---|---:|---:|---:|---:|---|"]
    for v in trained_variants(pipeline):
        lines.append(f"| {v['step']} | {v['pilot_epochs'] or '—'} | {v['epochs'] or '—'} | {_pct(v['top1'])} | "
                     f"{v['spent'] or v['seconds'] or 0:,.0f} | {v['why'] or v['status']} |")
    lines += ["", "| model | best @batch: file, backend | top-1 % | img/s @batch | vs eager FP32 | best p50 ms @1 |",
              "|---|---|---:|---:|---:|---:|"]
    for r in (r for r in rows if r.get("is_baseline") and r.get("status") == "ok"):
        lines.append(f"| baseline | {r['model']}, {r['backend']} | {_pct(r['top1'])} | {r['throughput']:,.1f} | "
                     f"{r.get('speedup') or 0:.2f}× | {r.get('latency_p50_ms') or float('nan'):.3f} |")
    for b in best_per_model(rows):  # the report's own "each model on its best backend"
        star = "**" if b["file"] == pick.get("model") and b["backend"] == pick.get("backend") else ""
        p50 = ("—" if b["latency_p50_ms"] is None
               else f"{b['latency_p50_ms']:.3f} ({b['p50_file']}, {b['p50_backend']})")
        lines.append(f"| {star}{b['model']}{star} | {b['file']}, {b['backend']} | {_pct(b['top1'])} | "
                     f"{b['throughput']:,.1f} | {b.get('speedup') or 0:.2f}× | {p50} |")
    for name, p in sorted(((peer or {}).get("rows") or {}).items()):
        lines.append(f"| peer `{name}` ({(peer or {}).get('script', 'peer')}) | OpenVINO ({p.get('inference_precision')}"
                     f" hint) | {_pct(p.get('top1'))} | {p.get('throughput_b64') or 0:,.1f} | — | "
                     f"{p.get('latency_p50_ms_b1') or float('nan'):.3f} |")
    lines += ["", "| check | value | bar | met |", "|---|---:|---|---|"]
    for c in found:
        lines.append(f"| {c['name']} | {c['value']} | {c['bar']} | "
                     f"{'—' if c['ok'] is None else ('yes' if c['ok'] else 'NO')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a pipeline run's --out, or its copy made by scripts/publish_run.py")
    ap.add_argument("--peer", type=Path, help="scripts/peer_openvino.py's JSON (default: DIR/peer_openvino.json)")
    ap.add_argument("--json", type=Path, help="also write the checks here as JSON")
    ap.add_argument("--min-vs-peer", type=float, default=6.0, help="answer / peer INT8 throughput at batch N")
    ap.add_argument("--min-vs-eager", type=float, default=50.0, help="answer / PyTorch eager FP32 at batch N")
    ap.add_argument("--max-p50-ms", type=float, default=0.3, help="the answer's batch-1 p50 latency")
    ap.add_argument("--min-student-top1", type=float, default=0.865, help="the distilled student's FP32 top-1 (0-1)")
    a = ap.parse_args(argv)
    try:
        pipeline, rows, answer = _load(a.dir, "pipeline.json"), _load(a.dir, "results.json"), _load(a.dir, "answer.json")
        peer_path = a.peer or (a.dir / "peer_openvino.json")
        peer = json.loads(peer_path.read_text()) if peer_path.is_file() else None
        if a.peer and peer is None:
            raise FileNotFoundError(f"{a.peer}: no such file")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = checks(pipeline, rows, answer, peer, min_vs_peer=a.min_vs_peer, min_vs_eager=a.min_vs_eager,
                   max_p50_ms=a.max_p50_ms, min_student_top1=a.min_student_top1)
    print(render(pipeline, rows, answer, peer, found), end="")
    if a.json:
        a.json.write_text(json.dumps({"dir": str(a.dir), "checks": found}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
