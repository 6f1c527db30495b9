#!/usr/bin/env bash
# Rebuild the default bundle in assets/bundle from scratch, deterministically:
# demo benchmark (seed 0) -> train (seed 20260308) -> evaluate -> export (int8 text encoder).
# Needs the training extra: pip install -e ".[export,cpu]". About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-$(mktemp -d)}"
echo "working in $WORK"
[ -d "$WORK/demo" ] || lr-onnx data demo "$WORK/demo" --n 12000 --seed 0
[ -f "$WORK/run/weights.safetensors" ] || lr-onnx train "$WORK/demo" --out "$WORK/run"
[ -f "$WORK/run/metrics.json" ] || lr-onnx evaluate "$WORK/run"
rm -rf "$WORK/bundle"
lr-onnx export "$WORK/run" --out "$WORK/bundle" --precision int8
python -m lr_onnx.export.examples assets/examples
rm -rf assets/bundle.old
[ -d assets/bundle ] && mv assets/bundle assets/bundle.old
mv "$WORK/bundle" assets/bundle && rm -rf assets/bundle.old
du -sh assets/bundle
