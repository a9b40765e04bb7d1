#!/usr/bin/env bash
# GPU check for the first CUDA machine: one command, no package index, no TensorRT needed.
#
#   scripts/gpu_check.sh [--smoke] [DATA] [OUT]
#
# DATA: CIFAR-10 (ImageFolder of JPEGs or cifar-10-batches-py; default $VGGC_DATA, else
# ../shared/data/cifar10-jpeg). OUT: result folder (default artifacts/gpu-check). What it does, with
# the project's own commands only (vggc from this checkout, run as `python -m vggc.cli`):
#   1. environment: nvidia-smi, torch / CUDA versions                          -> OUT/environment.txt
#   2. vggc train   VGG16-BN teacher on the GPU (fp16 AMP: --precision auto)   -> OUT/teacher.pt(.json)
#   3. vggc distill MobileNetV2 student from it on the GPU (fp16 AMP)          -> OUT/student.pt(.json)
#   4. vggc prune   the teacher, 50 % of its MACs, short GPU fine-tune         -> OUT/pruned.pt(.json)
#   5. vggc bench   the CUDA rows (torch-cuda-fp32, torch-cuda-fp16, torch-cuda-fp16-compiled) of
#                   teacher, student, pruned teacher (and $VGGC_WEIGHTS if set) -> OUT/bench/
#   6. OUT/summary.md + OUT/summary.json: every step's status, seconds, accuracy, the bench table.
# Each step's log is OUT/logs/<step>.log; a failing step is recorded and the rest still run; the exit
# code is non-zero when any step failed. Budget (~10 min on one recent GPU) via TEACHER_EPOCHS (8),
# STUDENT_EPOCHS (8), PRUNE_EPOCHS (1), BATCH (256).
#
# --smoke (or VGGC_GPU_CHECK_SMOKE=1): a CPU smoke run on tiny budgets with the torch eager CPU
# backend (torch-fp32) in place of the CUDA rows, so the script is exercised by the test suite
# (tests/test_gpu_check.py) where there is no GPU. Its folder and summary say SMOKE RUN; its numbers
# are not GPU results.
set -uo pipefail

SMOKE="${VGGC_GPU_CHECK_SMOKE:-0}"
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
DATA="${1:-${VGGC_DATA:-../shared/data/cifar10-jpeg}}"
OUT="${2:-artifacts/gpu-check}"
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.."
ROOT="$PWD"

if [[ ! -d "$DATA" ]]; then echo "gpu_check: data directory $DATA not found" >&2; exit 2; fi
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  echo "gpu_check: $OUT exists and is not empty; pass a new folder" >&2; exit 2
fi
mkdir -p "$OUT/logs" || exit 2

if [[ "$SMOKE" == "1" ]]; then
  DEVICE=cpu; BACKENDS=torch-fp32; MODE="SMOKE RUN (CPU, torch eager backend; not a GPU result)"
  TEACHER_EPOCHS=1; STUDENT_EPOCHS=1; PRUNE_EPOCHS=1; BATCH="${BATCH:-16}"
  LIMIT=(--limit "${SMOKE_LIMIT:-40}"); EVAL=(--eval-limit "${SMOKE_EVAL:-20}")
  BENCH_EXTRA=(--limit "${SMOKE_EVAL:-20}" --rounds 1 --no-plot)
  echo "$MODE" > "$OUT/SMOKE"
else
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); run with --smoke for the CPU smoke test" >&2
    exit 3
  fi
  DEVICE=cuda; BACKENDS=torch-cuda-fp32,torch-cuda-fp16,torch-cuda-fp16-compiled; MODE="GPU RUN"
  TEACHER_EPOCHS="${TEACHER_EPOCHS:-8}"; STUDENT_EPOCHS="${STUDENT_EPOCHS:-8}"; PRUNE_EPOCHS="${PRUNE_EPOCHS:-1}"
  BATCH="${BATCH:-256}"; LIMIT=(); EVAL=(); BENCH_EXTRA=(--no-plot)
fi

STEPS_TSV="$OUT/steps.tsv"
: > "$STEPS_TSV"
FAILED=0
step() {  # step NAME CMD...: run, log, record status and seconds
  local name="$1"; shift
  local t0=$SECONDS
  echo "[gpu_check] $name: $*" | tee -a "$OUT/logs/$name.log" >&2
  "$@" >> "$OUT/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS_TSV"
  if [[ $rc -ne 0 ]]; then FAILED=1; echo "[gpu_check] $name failed (exit $rc): $(tail -n 1 "$OUT/logs/$name.log")" >&2; fi
  return $rc
}
vggc() { "$PY" -m vggc.cli "$@"; }

{
  echo "mode: $MODE"
  echo "date: $(date -u +%FT%TZ)"
  echo "checkout: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  # the code that ran, whatever git says (a copied tree can carry a stale .git)
  "$PY" -c "from vggc.provenance import source_digest; print('vggc source sha256', source_digest())"
  "$PY" -c "import torch, platform; print('python', platform.python_version()); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} > "$OUT/environment.txt" 2>&1

step train vggc train --data "$DATA" --out "$OUT/teacher.pt" --arch vgg16_bn --epochs "$TEACHER_EPOCHS" \
  --batch-size "$BATCH" --precision auto --device "$DEVICE" "${LIMIT[@]}" "${EVAL[@]}"
if [[ -f "$OUT/teacher.pt" ]]; then
  step distill vggc distill "$OUT/teacher.pt" --data "$DATA" --out "$OUT/student.pt" --epochs "$STUDENT_EPOCHS" \
    --batch-size "$BATCH" --precision auto --device "$DEVICE" "${LIMIT[@]}" "${EVAL[@]}"
  step prune vggc prune "$OUT/teacher.pt" --data "$DATA" --out "$OUT/pruned.pt" --target-macs 0.5 \
    --finetune-epochs "$PRUNE_EPOCHS" --batch-size "$BATCH" --precision auto --device "$DEVICE" "${LIMIT[@]}" "${EVAL[@]}"
fi
MODELS=()
for m in teacher student pruned; do [[ -f "$OUT/$m.pt" ]] && MODELS+=("$OUT/$m.pt"); done
if [[ -n "${VGGC_WEIGHTS:-}" && -f "${VGGC_WEIGHTS}" ]]; then MODELS+=("$VGGC_WEIGHTS"); fi
if [[ ${#MODELS[@]} -gt 0 ]]; then
  step bench vggc bench "${MODELS[@]}" --data "$DATA" --backends "$BACKENDS" --batch "$BATCH" \
    --out "$OUT/bench" --no-cache "${BENCH_EXTRA[@]}"
fi

"$PY" - "$OUT" "$MODE" <<'EOF'
"""Summarise OUT: steps (status, seconds), model accuracies from their manifests, the bench rows."""
import json
import sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
steps = [dict(zip(("step", "exit", "seconds"), ln.split("\t"))) for ln in (out / "steps.tsv").read_text().splitlines()]
models = {}
for m in ("teacher", "student", "pruned"):
    man = out / f"{m}.pt.json"
    if man.is_file():
        doc = json.loads(man.read_text())
        met = doc.get("metrics") or {}
        train = met.get("train") or {}
        ft_steps = met.get("steps") or [{}]  # vggc prune: the fine-tune's settings and each step's precision
        ft = (doc.get("settings") or {}).get("finetune") or {}
        models[m] = {"top1": met.get("top1"), "eval_n": met.get("n"), "arch": doc.get("arch") or "vgg16_bn",
                     "train_seconds": train.get("seconds") or met.get("finetune_seconds"),
                     "train_device": train.get("device") or ft.get("device"),
                     "train_precision": train.get("precision") or ft_steps[-1].get("precision"),
                     "macs": doc.get("macs"), "params": doc.get("params")}
bench = out / "bench" / "results.json"
rows = json.loads(bench.read_text()) if bench.is_file() else []
rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
summary = {"mode": mode, "smoke": (out / "SMOKE").exists(), "steps": steps, "models": models,
           "bench_rows": [{k: r.get(k) for k in ("model", "backend", "status", "top1", "latency_p50_ms",
                                                 "throughput", "speedup", "compile_s")} for r in rows]}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# vggc GPU check: {mode}", ""]
if summary["smoke"]:
    lines += ["**SMOKE RUN on the CPU with tiny budgets: these numbers are not GPU results.**", ""]
lines += ["| step | exit | seconds |", "|---|---|---|"] + [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in steps]
lines += ["", "| model | arch | top-1 | eval images | train s | device | precision | MACs |",
          "|---|---|---|---|---|---|---|---|"]
lines += [f"| {k} | {v['arch']} | {v['top1']} | {v['eval_n']} | {v['train_seconds']} | {v['train_device']} "
          f"| {v['train_precision']} | {v['macs']} |" for k, v in models.items()]
lines += ["", "| model | backend | status | top-1 | p50 ms (batch 1) | img/s | speedup | compile s |",
          "|---|---|---|---|---|---|---|---|"]
lines += [f"| {r['model']} | {r['backend']} | {r['status']} | {r['top1']} | {r['latency_p50_ms']} | {r['throughput']} "
          f"| {r['speedup']} | {r['compile_s']} |" for r in summary["bench_rows"]]
lines += ["", "Files: environment.txt, logs/<step>.log, teacher/student/pruned .pt + .json manifests, bench/ "
          "(results.json, results.csv, report.md)."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print(out / "summary.md")
EOF
exit $FAILED
