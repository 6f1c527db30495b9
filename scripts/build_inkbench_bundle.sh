#!/usr/bin/env bash
# Build the default bundle's variant that also routes document transcription: blindtest + dynamath + vqarad +
# inkbench (38 current MLLMs, historical pages, score 1 - CER). inkbench ships WITHOUT a license file: build this
# only if you accept its terms, for evaluation or your own use; never commit it or ship it as lr-onnx's default.
#   scripts/build_inkbench_bundle.sh OUT_BUNDLE_DIR
# Same steps as build_default_bundle.sh; the bundle goes to OUT_BUNDLE_DIR (which must not exist).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_BUNDLE_DIR" >&2; exit 2; }
OUT="$1"
[ -e "$OUT" ] && { echo "$OUT already exists; choose a new folder" >&2; exit 2; }
cd "$(dirname "$0")/.."
SHARED="${LR_ONNX_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
WORK="${WORK:-$(mktemp -d)}"
echo "working in $WORK (data from $SHARED)"
[ -d "$WORK/real" ] || lr-onnx data merge "$WORK/real" "$SHARED/blindtest" "$SHARED/dynamath" "$SHARED/vqarad" \
    "$SHARED/inkbench"
[ -f "$WORK/run/weights.safetensors" ] || lr-onnx train "$WORK/real" --out "$WORK/run"
[ -f "$WORK/run/metrics.json" ] || lr-onnx evaluate "$WORK/run" --no-ablations
lr-onnx export "$WORK/run" --out "$OUT" --precision int8
echo "wrote $OUT (route with: lr-onnx route --bundle $OUT IMAGE QUESTION)"
