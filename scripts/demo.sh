#!/usr/bin/env bash
# The main job on default inputs: `make demo` (no arguments).
# Usage: scripts/demo.sh WEIGHTS DATA OUT
set -euo pipefail
WEIGHTS=${1:-../shared/models/vgg16_bn_cifar10.pt}
DATA=${2:-../shared/data/cifar10-jpeg}
OUT=${3:-artifacts}
VGGC=${VGGC:-.venv/bin/vggc}
mkdir -p "$OUT"

if [ ! -d "$DATA" ]; then
  DATA="$OUT/data"
  echo "== no local CIFAR-10: downloading it through torchvision into $DATA"
  $VGGC eval --help >/dev/null
  .venv/bin/python -c "from vggc.data import download_cifar10; download_cifar10('$DATA')"
fi
if [ ! -f "$WEIGHTS" ]; then
  WEIGHTS="$OUT/baseline/vgg16_bn_short.pt"
  if [ ! -f "$WEIGHTS" ]; then
    echo "== no trained model: training a short VGG16-BN baseline (5,000 images, 1 epoch)"
    $VGGC train --data "$DATA" --out "$WEIGHTS" --epochs 1 --limit 5000 --eval-limit 2000
  fi
fi

echo "== model"
$VGGC info "$WEIGHTS" | head -8
echo "== ONNX export (FP32, parity on 1,000 test images)"
ONNX="$OUT/demo/$(basename "${WEIGHTS%.*}").onnx"
[ -f "$ONNX" ] || $VGGC export "$WEIGHTS" --format onnx --data "$DATA" --parity-limit 1000 --out "$ONNX"
echo "== bench (--quick: 2,000 test images)"
$VGGC bench "$WEIGHTS" "$ONNX" --data "$DATA" --quick --out "$OUT/demo/bench"
echo "report: $OUT/demo/bench/report.md"
