"""Training side of lr-onnx: routing data, encoders, model, training, evaluation, ONNX export.

Modules that need torch import it themselves; the data modules (`data`, `splits`,
`check`, `convert`) are numpy-only so they also work from a serving-only install.
"""
