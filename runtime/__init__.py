"""Serving side of lr-onnx: bundle loading, preprocessing, ONNX sessions and routing.

Imports only numpy, pillow, tokenizers, onnxruntime and click (never torch or
anything from `lr_onnx.export`); `tests/test_imports.py` proves it.
"""
