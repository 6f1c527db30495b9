"""Routing latency of two source trees of lr-onnx, side by side: does a refactor slow routing down?

    python benchmarks/version_latency.py BEFORE_ROOT AFTER_ROOT [--pairs 5] [--out FILE.json] [--revs REV1 REV2]

Each ROOT holds an `lr_onnx` folder (e.g. `mkdir -p R/lr_onnx && git archive REV | tar -x -C R/lr_onnx`). The two
trees route the same default bundle in fresh processes, in turns (before, after, before, ...), so the machine's
drift falls on both alike: one image+question query (median of 60), one text-only query (median of 100) and a
batch of 32 image queries (median of 8), each also as its fastest run (`_min_ms`: the least disturbed by other work
on a shared machine). The ratio after / before of the medians over processes is written with the raw runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PROBE = r"""
import io, json, time
import numpy as np
from PIL import Image
from lr_onnx.runtime.router import Router
r = Router.load()
buf = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(buf, "JPEG")
jpeg, q = buf.getvalue(), "What is the total amount on this receipt?"
out = {}
def t(name, fn, n):
    fn(); fn()
    xs = []
    for _ in range(n):
        a = time.perf_counter(); fn(); xs.append(time.perf_counter() - a)
    out[name + "_ms"], out[name + "_min_ms"] = 1000 * float(np.median(xs)), 1000 * float(np.min(xs))
t("image", lambda: r.route([jpeg], q), 60)
t("text", lambda: r.route(None, "What is 37 + 58?"), 100)
t("batch32", lambda: r.route_many([([jpeg], q)] * 32), 8)
print(json.dumps(out))
"""


def probe(root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--revs", nargs=2, metavar=("BEFORE", "AFTER"), help="the revisions the trees hold (recorded)")
    a = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(a.pairs):
        for name, root in (("before", a.before), ("after", a.after)):
            runs[name].append(probe(root))
            print(f"pair {i + 1} {name}: {runs[name][-1]}", flush=True)
    keys = list(runs["before"][0])
    med = {n: {k: round(float(np.median([r[k] for r in rs])), 3) for k in keys} for n, rs in runs.items()}
    res = {
        "before": str(a.before),
        "after": str(a.after),
        "pairs": a.pairs,
        "median_ms": med,
        "ratio_after_over_before": {k: round(med["after"][k] / med["before"][k], 3) for k in keys},
        "runs": runs,
    }
    print(json.dumps({k: res[k] for k in ("median_ms", "ratio_after_over_before")}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
