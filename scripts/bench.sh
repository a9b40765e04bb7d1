#!/usr/bin/env bash
# `make bench`: the full-test-set benchmark of the reference model and its ONNX export.
set -euo pipefail
WEIGHTS=${1:-../shared/models/vgg16_bn_cifar10.pt}
DATA=${2:-../shared/data/cifar10-jpeg}
OUT=${3:-artifacts}
VGGC=${VGGC:-.venv/bin/vggc}
ONNX="$OUT/bench/$(basename "${WEIGHTS%.*}").onnx"
[ -f "$ONNX" ] || $VGGC export "$WEIGHTS" --format onnx --data "$DATA" --out "$ONNX"
$VGGC bench "$WEIGHTS" "$ONNX" --data "$DATA" --out "$OUT/bench" ${BENCH_ARGS:-}
echo "report: $OUT/bench/report.md"
