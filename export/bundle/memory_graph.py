"""`memory.onnx`: the capability memory's retrieval as a graph (MatMul, TopK), for the runtime and for apps.

    query [B, D_q], keys [N, d]  ->  similarity [B, k'], index [B, k']     (k' = min(k, N), best first)

It computes exactly `runtime.memory.embed` and the cosine top-k of `Memory.neighbours`: the weighted
text+image slice of the query, centred, projected, L2-normalised, then one MatMul against the keys. The
projection is inside the graph; the keys are an input, so `models add` (which appends labelled rows) needs
no new graph, and an app in another language needs only this graph and the keys file. ONNX Runtime runs
the MatMul on its own threads: no numpy BLAS thread wakes, and a batch of 64 queries against 16,000 rows
costs milliseconds instead of the ~100 ms of a plain numpy loop. The per-model estimate from the k
neighbours is a small gather that stays in numpy (`Memory.columns`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...runtime.features import HAS_IMAGE_COL, QUERY_DIM
from ...runtime.memory import block_weights

EPS = 1e-12  # runtime.features.l2_normalise's floor


def build_memory_graph(memory, path: Path, opset: int) -> None:
    """Write the retrieval graph of `memory` (a runtime.memory.Memory) to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    st = memory.settings
    weight = block_weights(st.image_weight)
    inits = [
        numpy_helper.from_array(a, name)
        for name, a in (
            ("starts", np.array([0], np.int64)),
            ("ends", np.array([HAS_IMAGE_COL], np.int64)),
            ("axes", np.array([1], np.int64)),
            ("weight", weight),
            ("center", memory.center.astype(np.float32)),
            ("proj", memory.proj.astype(np.float32)),
            ("eps", np.array(EPS, np.float32)),
            ("k", np.array([memory.search_k], np.int64)),  # the most any setting reads (memory_sources)
        )
    ]
    nodes = [
        helper.make_node("Slice", ["query", "starts", "ends", "axes"], ["x"]),
        helper.make_node("Mul", ["x", "weight"], ["xw"]),
        helper.make_node("Sub", ["xw", "center"], ["xc"]),
        helper.make_node("MatMul", ["xc", "proj"], ["e"]),
        helper.make_node("ReduceL2", ["e", "axes"], ["norm"], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_floor"]),
        helper.make_node("Div", ["e", "norm_floor"], ["unit"]),
        helper.make_node("Gemm", ["unit", "keys"], ["sims"], transB=1),
        helper.make_node("Shape", ["keys"], ["rows"], start=0, end=1),
        helper.make_node("Min", ["rows", "k"], ["top"]),
        helper.make_node("TopK", ["sims", "top"], ["similarity", "index"], axis=1, largest=1, sorted=1),
    ]
    graph = helper.make_graph(
        nodes,
        "lr_onnx_memory",
        [
            helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", QUERY_DIM]),
            helper.make_tensor_value_info("keys", TensorProto.FLOAT, ["rows", memory.dim]),
        ],
        [
            helper.make_tensor_value_info("similarity", TensorProto.FLOAT, ["batch", "top"]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", "top"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lr-onnx")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
