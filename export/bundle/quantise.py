"""Lower precisions of a bundle's encoders: int8 (the text encoder's weights), int8-full (the CNN too), fp16."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

# int8: MiniLM 8-bit, the CNN stays fp32; int8-full: the CNN too. Measured with the 8-slice router on 1000 demo
# test queries, the 8-bit text encoder alone changes 1.0% of the lambda-0 decisions, a static int8 CNN 4.4%, and
# even 5 of its 49 convs in int8 (feature cosine 0.99991) 0.9%: a quarter of the router's decisions are near-ties
# (top-2 mu_tilde within 0.01), which any encoder error flips (the slice-prior router: a fifth, int8-full 2.3% on
# 256 held-out queries). So `int8` keeps the CNN (13 MB, 3.7 ms) in fp32 to hold 98%.
PRECISIONS = ("fp32", "int8", "int8-full", "fp16")


def quantize_text_encoder(src: Path, dst: Path) -> None:
    """MiniLM to 8 bits: MatMul weights in blocks of 64 (MatMulNBits, int8 compute), embedding table int8.

    Measured on 300 demo questions (cosine to fp32 mean / min, ms at B=1, MB): fp32 1.000 / 1.000,
    2.9, 90.5; dynamic int8 per-channel reduce_range 0.9906 / 0.9665, 0.9, 23.0; this 0.9991 / 0.9978,
    1.05, 23.5 (block 32: 0.9993 / 0.9980 but 24.2 MB; block 128: 0.9984 / 0.9948).
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    for h in root.handlers[:]:  # that module calls logging.basicConfig(INFO) on import: undo it
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        algo_config=DefaultWeightOnlyQuantConfig(block_size=64, is_symmetric=True, bits=8, accuracy_level=4),
    )
    q.process()
    mid = dst.with_name(dst.stem + ".nbits.onnx")
    q.model.save_model_to_file(str(mid), False)
    root.setLevel(logging.ERROR)  # its "consider pre-processing" hint is for activation quantisation
    try:
        quantize_dynamic(
            str(mid),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=["Gather"],
        )
    finally:
        root.setLevel(level)
    mid.unlink()


def quantize_encoders(out: Path, calib_pixels: np.ndarray, *, image: bool = True) -> None:
    """int8 encoders: 8-bit weights for MiniLM, static QDQ per-channel for the CNN (if `image`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = out / "text_encoder.fp32.onnx"
    shutil.move(out / "text_encoder.onnx", tmp)
    quantize_text_encoder(tmp, out / "text_encoder.onnx")
    tmp.unlink()
    if not image:
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"pixels": calib_pixels[i : i + 1]} for i in range(len(calib_pixels))])

        def get_next(self):
            return next(self.items, None)

    src, pre = out / "image_encoder.fp32.onnx", out / "image_encoder.pre.onnx"
    shutil.move(out / "image_encoder.onnx", src)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    # Measured on 120 demo images (cosine to fp32 mean / min, ms at B=1; fp32 3.7 ms): MinMax + reduce_range
    # 0.886 / 0.619; Percentile 99.99 with the stem and head convs kept fp32 0.992 / 0.961, 2.1 ms; Entropy
    # 0.990 / 0.965; the first third of the convs (the high-resolution, few-channel layers) kept fp32:
    # 0.9973 / 0.991, 1.7 ms (the Q/DQ pairs cost more than they save there); the last half kept fp32
    # instead: 0.993 / 0.960.
    import onnx

    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    quantize_static(
        str(pre),
        str(out / "image_encoder.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": 99.99},
        nodes_to_exclude=convs[: len(convs) // 3] + [convs[-1]],
    )
    src.unlink()
    pre.unlink()


def to_fp16(out: Path, *, image: bool = True) -> None:
    """fp16 encoders for GPU serving (the router stays fp32, as for int8); LayerNorm, Softmax, Sigmoid and
    the softplus/GELU pieces stay fp32. The converter appends its input casts after their consumers, so
    the nodes are put back in topological order before saving (`onnx.checker` rejects the graph otherwise)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    for name in (["image_encoder.onnx"] if image else []) + ["text_encoder.onnx"]:
        m = onnx.load(str(out / name))
        m16 = convert_float_to_float16(
            m,
            keep_io_types=True,
            op_block_list=["LayerNormalization", "Softmax", "Sigmoid", "Softplus", "Log", "Exp", "Erf"],
        )
        OnnxModel(m16).topological_sort()
        del m16.graph.value_info[:]  # some stale fp16 annotations around the kept-fp32 ops; types are re-inferred
        onnx.save(m16, str(out / name))
