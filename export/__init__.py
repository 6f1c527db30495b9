"""Training side of lr-onnx, one folder per stage of a router's life:

    data/      the native format, splits, `data check`, converters, merge, the demo benchmark
    train/     encoders and the dataset query pipeline, LatentRouter, its memory, the training loop, the run folder
    evaluate/  baselines, routing metrics, `lr-onnx evaluate`, transfer to another dataset
    bundle/    ONNX graphs, quantisation, assembly, parity and golden checks, the model card, `lr-onnx bench`

Modules that need torch import it themselves; the data modules (`data.format`, `data.splits`,
`data.check`, `data.convert`) are numpy-only so they also work from a serving-only install.
"""
