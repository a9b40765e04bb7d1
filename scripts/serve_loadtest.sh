#!/usr/bin/env bash
# Serve the pipeline's CPU answer with the bundled tritonserver on 127.0.0.1 and measure it:
#   1. vggc triton-add: the answer's model (answer.json target cpu-throughput) as a python-backend model;
#   2. vggc serve (background, its PID only is stopped at the end, also on error / Ctrl-C);
#   3. vggc loadtest at concurrency 1,4,16 for each request batch in $BATCHES, with the in-process reference
#      (same file, batch 64) timed before and after -> OUT/loadtest-b<B>.json + .txt;
#   4. served top-1 on the whole test split -> OUT/served-top1.json (compare with the answer's top1).
# Every number is "Triton + python backend + OpenVINO CPU" (the wheel has no C++ backends).
# Usage: scripts/serve_loadtest.sh ANSWER_JSON DATA OUT
#   env: VGGC (default .venv/bin/vggc), BATCHES="1 8", REQUESTS=2000, DEADLINE=60, LIMIT (served top-1 subset)
set -euo pipefail
ANSWER=${1:?answer.json}; DATA=${2:?data dir}; OUT=${3:?output dir}
VGGC=${VGGC:-.venv/bin/vggc}
BATCHES=${BATCHES:-1 8}
REQUESTS=${REQUESTS:-2000}
DEADLINE=${DEADLINE:-60}
mkdir -p "$OUT"
REPO="$OUT/repo"
rm -rf "$REPO"
"$VGGC" triton-add "$REPO" "$ANSWER" --name answer --json > "$OUT/triton-add.json"
MODEL_FILE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["source"])' "$OUT/triton-add.json")
"$VGGC" serve "$REPO" > "$OUT/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
GRPC=""
for _ in $(seq 1 240); do
  GRPC=$(awk '$1 == "gRPC" {print $2}' "$OUT/serve.log")
  [ -n "$GRPC" ] && break
  kill -0 $SERVE_PID 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 0.5
done
[ -n "$GRPC" ] || { echo "vggc serve not ready after 120 s" >&2; cat "$OUT/serve.log" >&2; exit 1; }
cat "$OUT/serve.log"
for B in $BATCHES; do
  "$VGGC" loadtest "$GRPC" answer --batch "$B" --requests "$REQUESTS" --deadline "$DEADLINE" \
    --reference "$MODEL_FILE" --out "$OUT/loadtest-b$B.json" | tee "$OUT/loadtest-b$B.txt"
done
"$VGGC" loadtest "$GRPC" answer --data "$DATA" ${LIMIT:+--limit "$LIMIT"} --batch 64 --concurrency 4 \
  --out "$OUT/served-top1.json" \
  | tee "$OUT/served-top1.txt"
[ -z "${LIMIT:-}" ] || { echo "(served top-1 on a --limit subset: not comparable with the answer's top-1)"; exit 0; }
python3 - "$ANSWER" "$OUT/served-top1.json" <<'EOF'
import json, sys
answer, served = (json.load(open(p)) for p in sys.argv[1:])
file_top1 = answer["targets"]["cpu-throughput"]["top1"]
print(f"answer file top-1 {100 * file_top1:.2f}%  served top-1 {100 * served['top1']:.2f}% "
      f"({served['correct']}/{served['n']}): {'equal' if round(served['top1'], 4) == round(file_top1, 4) else 'DIFFERENT'}")
EOF
