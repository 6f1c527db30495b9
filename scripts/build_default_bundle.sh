#!/usr/bin/env bash
# Rebuild the default bundle in assets/bundle from scratch, deterministically, on REAL outcomes:
# blindtest + dynamath from ../shared/data (merged: 15 MLLMs, a ragged pool) -> train (seed 20260308)
# -> evaluate -> export (int8 text encoder, per-query cost rules, coverage threshold).
# Needs the training extra (pip install -e ".[export,cpu]") and the project's shared data
# ($LR_ONNX_SHARED_DATA, default ../shared/data). About 45 minutes on 2 cores with a cold feature cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${LR_ONNX_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
WORK="${WORK:-$(mktemp -d)}"
echo "working in $WORK (data from $SHARED)"
[ -d "$WORK/real" ] || lr-onnx data merge "$WORK/real" "$SHARED/blindtest" "$SHARED/dynamath"
[ -f "$WORK/run/weights.safetensors" ] || lr-onnx train "$WORK/real" --out "$WORK/run"
[ -f "$WORK/run/metrics.json" ] || lr-onnx evaluate "$WORK/run"
rm -rf "$WORK/bundle"
lr-onnx export "$WORK/run" --out "$WORK/bundle" --precision int8
python -m lr_onnx.export.examples assets/examples
rm -rf assets/bundle.old
[ -d assets/bundle ] && mv assets/bundle assets/bundle.old
mv "$WORK/bundle" assets/bundle && rm -rf assets/bundle.old
du -sh assets/bundle
