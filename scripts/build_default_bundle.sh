#!/usr/bin/env bash
# Rebuild the default bundle in assets/bundle from scratch, deterministically, on REAL outcomes:
# blindtest + dynamath + vqarad from ../shared/data (merged: 16 MLLMs, a ragged pool) -> train (seed 20260308,
# capability memory chosen on validation) -> evaluate (no retrained ablations: the grid has them) -> export
# (int8 text encoder, per-query cost rules, coverage threshold, memory.onnx) -> assets/bundle/README.md, the card.
# inkbench is left out on purpose: it has no license file (scripts/build_inkbench_bundle.sh builds that variant).
# Needs the training extra (pip install -e ".[export,cpu]") and the project's shared data
# ($LR_ONNX_SHARED_DATA, default ../shared/data). About 40 minutes on 2 cores with a cold feature cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${LR_ONNX_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
WORK="${WORK:-$(mktemp -d)}"
echo "working in $WORK (data from $SHARED)"
[ -d "$WORK/real" ] || lr-onnx data merge "$WORK/real" "$SHARED/blindtest" "$SHARED/dynamath" "$SHARED/vqarad"
[ -f "$WORK/run/weights.safetensors" ] || lr-onnx train "$WORK/real" --out "$WORK/run"
[ -f "$WORK/run/metrics.json" ] || lr-onnx evaluate "$WORK/run" --no-ablations
rm -rf "$WORK/bundle"
lr-onnx export "$WORK/run" --out "$WORK/bundle" --precision int8
python -m lr_onnx.export.data.examples assets/examples
python -m lr_onnx.export.bundle.card "$WORK/run" "$WORK/bundle" --sources blindtest,dynamath,vqarad
rm -rf assets/bundle.old
[ -d assets/bundle ] && mv assets/bundle assets/bundle.old
mv "$WORK/bundle" assets/bundle && rm -rf assets/bundle.old
du -sh assets/bundle
