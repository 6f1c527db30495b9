"""Where the router graph's B=1 time goes: node count, kernel time by operator, and a fixed-shape copy.

    python benchmarks/router_graph_profile.py [BUNDLE] [--out benchmarks/results/router_graph_profile.json]

The memory's serve-time budget (retrieval + router graph <= 5% of the B=1 end to end) is missed, and the router
graph alone takes about 5-7% (`memory_cost.json`). This says why, on one ONNX Runtime CPU thread (the runtime's
small-batch session): the graph as ONNX Runtime runs it (ORT_ENABLE_ALL) has some 380 nodes, and the time is
spread over them, not spent in a few heavy kernels, so it is dispatch. Profiled kernel times are inflated by the
profiler itself, so they are reported as shares; the wall times are measured without it. A copy of the graph with
every dimension fixed (B = 1, K = the pool) is timed beside it: if constant folding of the shape arithmetic were
the cost, it would be faster.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lr_onnx.runtime.files import atomic_write_text
from lr_onnx.runtime.router import Router
from lr_onnx.runtime.sessions import ort, session_options

REPO = Path(__file__).resolve().parents[1]
RUNS = 500


def _wall_ms(sess, feed: dict, runs: int = RUNS) -> float:
    for _ in range(20):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return round(float(np.median(ts)) * 1000, 4)


def _session(model: bytes | str, optimized: str | None = None, profile: bool = False):
    so = session_options(threads=1)
    if optimized:
        so.optimized_model_filepath = optimized
    so.enable_profiling = profile
    return ort().InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _fixed(path: Path, K: int) -> bytes:
    """The graph with batch 1 and pool K written into its input and output shapes."""
    import onnx

    m = onnx.load(str(path))
    for v in [*m.graph.input, *m.graph.output]:
        dims = v.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.dim_param:
                d.Clear()
                d.dim_value = 1 if i == 0 else K
    del m.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(m).SerializeToString()


def profile(bundle: Path) -> dict:
    import onnx

    r = Router.load(bundle)
    img = REPO / "assets" / "examples" / "chart.png"
    q = r.features([([img], "What is the largest value?")])
    from lr_onnx.runtime.profiles import model_features

    cols = r.memory_columns(q)
    feed = {
        "query": np.ascontiguousarray(q, np.float32),
        "model_feat": model_features(r.model_feat, None, cols, rows=1),
        "avail": np.ones((1, len(r.names)), bool),
    }
    path = bundle / r.bundle.manifest.graphs["router"].file
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimised.onnx")
        plain = _session(str(path), optimized=opt)
        ops = Counter(n.op_type for n in onnx.load(opt).graph.node)
        prof = _session(str(path), profile=True)
        for _ in range(RUNS):
            prof.run(None, feed)
        events = json.loads(Path(prof.end_profiling()).read_text())
    kernel, per_node = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel[e["args"].get("op_name", "?")] += e["dur"]
            per_node[e["name"]] += e["dur"]
    total = sum(kernel.values())
    wall = _wall_ms(plain, feed)
    return {
        "bundle": str(bundle),
        "pool": len(r.names),
        "nodes_as_run": sum(ops.values()),
        "nodes_in_file": len(onnx.load(str(path)).graph.node),
        "wall_b1_ms": wall,
        "wall_b1_fixed_shapes_ms": _wall_ms(_session(_fixed(path, len(r.names))), feed),
        "wall_per_node_us": round(wall * 1000 / sum(ops.values()), 2),
        "kernel_share_of_the_5_heaviest_nodes": round(sum(v for _, v in per_node.most_common(5)) / total, 4),
        "kernel_share_by_op": {op: round(v / total, 4) for op, v in kernel.most_common(12)},
        "nodes_by_op": dict(ops.most_common(12)),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=REPO / "assets" / "bundle")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "router_graph_profile.json")
    a = ap.parse_args(argv)
    res = profile(a.bundle)
    atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
