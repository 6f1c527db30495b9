"""What the capability memory costs at serve time: one bundle against another, timed in turns on one host.

    python benchmarks/memory_cost.py NEW_BUNDLE OLD_BUNDLE [--out benchmarks/results/memory_cost.json]

For each bundle: its size on disk; B=1 end to end (decode, preprocess, encoders, memory search, router,
decision) and the part after the encoders (`decide`: memory search + router graph + costs + policy), with
the memory search alone; and route_many throughput over the shipped examples in batches of 64 (what
route-batch does). The two bundles alternate query by query, so a host that drifts slows both alike.
Budgets (issue 21): the bundle grows by at most 10 MB; memory search + router <= 5% of the B=1 end to
end; throughput drops by at most 5%.

The two bundles need not have the same pool (the shipped one grew from 15 to 18 models with the memory), and
the router graph's time grows with the pool (its pairwise attention is K x K). So the new bundle's own parts are
timed too, on the same queries: `retrieval` (memory.onnx's search plus the numpy gather of the neighbours'
outcomes) and the router graph alone, at B=1 and on the batches of 64. The drop in throughput that retrieval
itself causes is its share of a batch's time: a router without it would route the batch that much faster.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lr_onnx.runtime.files import atomic_write_text
from lr_onnx.runtime.profiles import model_features
from lr_onnx.runtime.router import Router
from lr_onnx.runtime.sessions import run

REPO = Path(__file__).resolve().parents[1]

EXAMPLES = REPO / "assets" / "examples"
QUESTIONS = [
    "What is the total amount on this receipt?",
    "How many lines cross?",
    "What is the largest value?",
    "What does the sign say?",
    "Which option is correct?",
]


def _size(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())


def _p50(xs) -> float:
    return round(float(np.median(xs)) * 1000, 3)


def _retrieval(router: Router, q: np.ndarray) -> float:
    """Seconds for the memory's part of routing feature rows `q`: memory.onnx's search and the numpy gather."""
    mem = router.memory()
    assert mem is not None
    t = time.perf_counter()
    found = router.memory_search(q)
    mem.columns(None, router.names, prior=[p.prior for p in router.pool], found=found)
    return time.perf_counter() - t


def _router_graph(router: Router, q: np.ndarray) -> float:
    """Seconds for the router graph alone on feature rows `q` (all models available, constant memory columns)."""
    mem = router.memory()
    cols = None if mem is None else mem.columns(None, router.names, found=router.memory_search(q))
    feed = {
        "query": np.ascontiguousarray(q, np.float32),
        "model_feat": model_features(router.model_feat, None, cols, rows=len(q)),
        "avail": np.ones((len(q), len(router.names)), bool),
    }
    sess = router._session_for("router", len(q))
    t = time.perf_counter()
    run(sess, feed)
    return time.perf_counter() - t


def measure(new: Path, old: Path, rounds: int, batches: int) -> dict:
    routers = {"new": Router.load(new), "old": Router.load(old)}
    images = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    one = (images[0], QUESTIONS[0])
    for r in routers.values():
        r.route([one[0]], one[1])  # sessions and memory loaded, warm
    e2e, decide = {k: [] for k in routers}, {k: [] for k in routers}
    q1 = {k: r.features([([one[0]], one[1])]) for k, r in routers.items()}
    new = routers["new"]
    search, graph = [], {k: [] for k in routers}
    for _ in range(rounds):
        for k, r in routers.items():
            t = time.perf_counter()
            r.route([one[0]], one[1])
            e2e[k].append(time.perf_counter() - t)
            opts = [r.options()]
            t = time.perf_counter()
            r.decide(q1[k], opts)
            decide[k].append(time.perf_counter() - t)
        if new.memory() is not None:
            search.append(_retrieval(new, q1["new"]))
        for k, r in routers.items():
            graph[k].append(_router_graph(r, q1[k]))
    batch = [([images[i % len(images)]], QUESTIONS[i % len(QUESTIONS)]) for i in range(64)]
    q64 = {k: r.features(batch) for k, r in routers.items()}
    thr = {k: [] for k in routers}
    batch_s, search64, graph64 = [], [], {k: [] for k in routers}
    for _ in range(batches):
        for k, r in routers.items():
            t = time.perf_counter()
            r.route_many(batch, batch_size=64)
            thr[k].append(len(batch) / (time.perf_counter() - t))
            if k == "new":
                batch_s.append(len(batch) / thr[k][-1])
        if new.memory() is not None:
            search64.append(_retrieval(new, q64["new"]))
        for k, r in routers.items():
            graph64[k].append(_router_graph(r, q64[k]))
    out = {"rounds": rounds, "batches_of_64": batches}
    for k, r in routers.items():
        out[k] = {
            "bundle": str(r.bundle.path),
            "bytes": _size(r.bundle.path),
            "memory_rows": len(r.memory() or []),
            "e2e_b1_ms": _p50(e2e[k]),
            "decide_b1_ms": _p50(decide[k]),
            "decide_share_of_e2e": round(float(np.median(decide[k]) / np.median(e2e[k])), 4),
            "route_many_qps": round(float(np.median(thr[k])), 1),
            "pool": len(r.names),
            "router_graph_batch64_ms": _p50(graph64[k]),
        }
    out["new"]["memory_search_b1_ms"] = _p50(search) if search else None
    for k in routers:
        out[k]["router_graph_b1_ms"] = _p50(graph[k])
        out[k]["router_graph_share_of_e2e_b1"] = round(float(np.median(graph[k]) / np.median(e2e[k])), 4)
    own = (np.median(search) if search else 0.0) + np.median(graph["new"])
    out["new"]["retrieval_plus_router_share_of_e2e_b1"] = round(float(own / np.median(e2e["new"])), 4)
    out["new"]["retrieval_share_of_e2e_b1"] = (
        round(float(np.median(search) / np.median(e2e["new"])), 4) if search else 0.0
    )
    retrieval_drop = float(np.median(search64) / np.median(batch_s)) if search64 else 0.0
    out["new"]["retrieval_batch64_ms"] = _p50(search64) if search64 else None
    growth = out["new"]["bytes"] - out["old"]["bytes"]
    drop = 1 - out["new"]["route_many_qps"] / out["old"]["route_many_qps"]
    out["budgets"] = {
        "bundle_growth_mb": round(growth / 1e6, 2),
        "bundle_growth_le_10mb": growth <= 10e6,
        "decide_share_of_e2e_b1": out["new"]["decide_share_of_e2e"],
        "decide_le_5pct_of_e2e_b1": out["new"]["decide_share_of_e2e"] <= 0.05,
        "retrieval_plus_router_share_of_e2e_b1": out["new"]["retrieval_plus_router_share_of_e2e_b1"],
        "retrieval_plus_router_le_5pct_of_e2e_b1": out["new"]["retrieval_plus_router_share_of_e2e_b1"] <= 0.05,
        "route_many_throughput_drop_vs_old_bundle": round(float(drop), 4),
        "route_many_throughput_drop_from_retrieval": round(retrieval_drop, 4),
        "throughput_drop_from_retrieval_le_5pct": retrieval_drop <= 0.05,
    }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory_cost.json")
    a = ap.parse_args(argv)
    res = measure(a.new, a.old, a.rounds, a.batches)
    atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
