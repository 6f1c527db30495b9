#!/usr/bin/env bash
# One prepared GPU check (<= 5 minutes): run from the repository root on a machine with torch,
# numpy, pillow, tokenizers and onnxruntime installed. Writes ${OUT:-.}/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg="$(mktemp -d)"
ln -s "$PWD" "$pkg/lr_onnx"          # the repository root is the lr_onnx package
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 280 python3 benchmarks/gpu.py "${OUT:-.}/gpu.json"
