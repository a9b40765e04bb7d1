#!/usr/bin/env bash
# The main job on default inputs: `make demo` (no arguments) -> `vggc pipeline --preset quick`.
# Inputs: WEIGHTS/DATA arguments (the Makefile passes VGGC_WEIGHTS / VGGC_DATA or ../shared's);
# with no local data, CIFAR-10 is downloaded through torchvision; with no weights, a short
# VGG16-BN baseline is trained first.
set -euo pipefail
WEIGHTS=${1:-../shared/models/vgg16_bn_cifar10.pt}
DATA=${2:-../shared/data/cifar10-jpeg}
OUT=${3:-artifacts}
PRESET=${PRESET:-quick}
VGGC=${VGGC:-.venv/bin/vggc}
mkdir -p "$OUT"

if [ ! -d "$DATA" ]; then
  DATA="$OUT/data"
  echo "== no local CIFAR-10: downloading it through torchvision into $DATA"
  .venv/bin/python -c "import sys; from vggc.data import download_cifar10; download_cifar10(sys.argv[1])" "$DATA"
fi
if [ ! -f "$WEIGHTS" ]; then
  WEIGHTS="$OUT/baseline/vgg16_bn_short.pt"
  if [ ! -f "$WEIGHTS" ]; then
    echo "== no trained model: training a short VGG16-BN baseline (10,000 images, 2 epochs)"
    $VGGC train --data "$DATA" --out "$WEIGHTS" --epochs 2 --limit 10000 --eval-limit 2000
  fi
fi

$VGGC pipeline "$WEIGHTS" --data "$DATA" --preset "$PRESET" --out "$OUT/$(basename "${WEIGHTS%.*}")-$PRESET"
