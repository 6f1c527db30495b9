"""What the capability memory costs at serve time: one bundle against another, timed in turns on one host.

    python benchmarks/memory_cost.py NEW_BUNDLE OLD_BUNDLE [--out benchmarks/results/memory_cost.json]

For each bundle: its size on disk; B=1 end to end (decode, preprocess, encoders, memory search, router,
decision) and the part after the encoders (`decide`: memory search + router graph + costs + policy), with
the memory search alone; and route_many throughput over the shipped examples in batches of 64 (what
route-batch does). The two bundles alternate query by query, so a host that drifts slows both alike.
Budgets (issue 21): the bundle grows by at most 10 MB; memory search + router <= 5% of the B=1 end to
end; throughput drops by at most 5%.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lr_onnx.runtime.files import atomic_write_text
from lr_onnx.runtime.router import Router

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


def measure(new: Path, old: Path, rounds: int, batches: int) -> dict:
    routers = {"new": Router.load(new), "old": Router.load(old)}
    images = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    one = (images[0], QUESTIONS[0])
    for r in routers.values():
        r.route([one[0]], one[1])  # sessions and memory loaded, warm
    e2e, decide, search = {k: [] for k in routers}, {k: [] for k in routers}, []
    q1 = {k: r.features([([one[0]], one[1])]) for k, r in routers.items()}
    for _ in range(rounds):
        for k, r in routers.items():
            t = time.perf_counter()
            r.route([one[0]], one[1])
            e2e[k].append(time.perf_counter() - t)
            opts = [r.options()]
            t = time.perf_counter()
            r.decide(q1[k], opts)
            decide[k].append(time.perf_counter() - t)
        mem = routers["new"].memory()
        if mem is not None:
            t = time.perf_counter()
            found = routers["new"].memory_search(q1["new"])
            mem.columns(None, routers["new"].names, found=tuple(found))
            search.append(time.perf_counter() - t)
    batch = [([images[i % len(images)]], QUESTIONS[i % len(QUESTIONS)]) for i in range(64)]
    thr = {k: [] for k in routers}
    for _ in range(batches):
        for k, r in routers.items():
            t = time.perf_counter()
            r.route_many(batch, batch_size=64)
            thr[k].append(len(batch) / (time.perf_counter() - t))
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
        }
    out["new"]["memory_search_b1_ms"] = _p50(search) if search else None
    growth = out["new"]["bytes"] - out["old"]["bytes"]
    drop = 1 - out["new"]["route_many_qps"] / out["old"]["route_many_qps"]
    out["budgets"] = {
        "bundle_growth_mb": round(growth / 1e6, 2),
        "bundle_growth_le_10mb": growth <= 10e6,
        "decide_share_of_e2e_b1": out["new"]["decide_share_of_e2e"],
        "decide_le_5pct_of_e2e_b1": out["new"]["decide_share_of_e2e"] <= 0.05,
        "route_many_throughput_drop": round(float(drop), 4),
        "throughput_drop_le_5pct": drop <= 0.05,
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
