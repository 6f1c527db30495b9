"""Ray Data batch routing against the local engine, in one run: `python benchmarks/ray_batch.py`.

Writes benchmarks/results/ray_batch.json: the same JSONL of queries (half with an image) through
`route-batch` (local) and `route-batch --engine ray` on a local Ray with every core, wall time each,
Ray's start-up reported apart, and whether the decisions are identical.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from lr_onnx.runtime.batch import route_batch
from lr_onnx.runtime.ray_engine import route_batch_ray
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

N = 384


def _read(path: Path) -> dict:
    return {d["id"]: d for d in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    import ray

    examples = sorted(p for p in (DEFAULT_BUNDLE.parent / "examples").iterdir() if p.suffix in (".png", ".jpg"))
    router = Router.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = tmp / "in.jsonl"
        inp.write_text(
            "".join(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": f"What is shown here? (#{i})",
                        "images": [str(examples[i % len(examples)])] if i % 2 == 0 else [],
                    }
                )
                + "\n"
                for i in range(N)
            )
        )
        router.route_many([([examples[0]], "warm up"), ([], "warm up")])  # every session created before timing
        t0 = time.perf_counter()
        route_batch(router, inp, tmp / "local.jsonl")
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        route_batch_ray(router, str(inp), tmp / "ray.jsonl", bundle=None)
        ray_s = time.perf_counter() - t0
        ray.shutdown()
        local, dist = _read(tmp / "local.jsonl"), _read(tmp / "ray.jsonl")
        same = local.keys() == dist.keys() and all(local[k]["model"] == dist[k]["model"] for k in local)
        diff = max(
            abs(a["utility"] - b["utility"])
            for k in local
            for a, b in zip(
                local[k]["candidates"],
                sorted(
                    dist[k]["candidates"], key=lambda c: [x["name"] for x in local[k]["candidates"]].index(c["name"])
                ),
            )
        )
    out = {
        "queries": N,
        "cpus": os.cpu_count(),
        "local_seconds": round(local_s, 2),
        "local_qps": round(N / local_s, 1),
        "ray_start_seconds": round(start_s, 2),
        "ray_seconds": round(ray_s, 2),
        "ray_qps": round(N / ray_s, 1),
        "identical_choices": same,
        "max_abs_utility_diff": diff,
    }
    path = Path(__file__).resolve().parent / "results" / "ray_batch.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
