"""How much the communication layers carry, per real set: LatentRouter trained with L = 1 and L = 2 (method.md's L).

    python benchmarks/layers_sweep.py WORK blindtest=../shared/data/blindtest dynamath=... vqarad=... inkbench=...
        [--layers 1,2] [--out benchmarks/results/layers_sweep.json]

Each (cell, L, training seed) is `lr-onnx train DATA --layers L --seed S` then `lr-onnx evaluate --no-ablations`
in WORK (a run already there is reused, so an interrupted sweep resumes), on the grid's three training seeds;
L = 2 reproduces the grid's `latentrouter` numbers and the grid's `no_communication` row is L = 0. The question it
answers: the router graph's B=1 time is 0.64x with one layer and 0.23x with none (`router_graph_compact.json`), so
would a smaller network cost routing quality?
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from lr_onnx.export.files import atomic_write_text

SEEDS = (20260308, 20260309, 20260310)  # the grid's training seeds (benchmarks/targets.py)


def run(work: Path, name: str, data: str, layers: int, seed: int) -> dict:
    out = work / f"{name}_L{layers}_{seed}"
    if not (out / "metrics.json").is_file():
        cli = [sys.executable, "-m", "lr_onnx.cli"]
        subprocess.run(
            [*cli, "train", data, "--out", str(out), "--layers", str(layers), "--seed", str(seed)],
            check=True,
            capture_output=True,
        )
        subprocess.run([*cli, "evaluate", str(out), "--no-ablations"], check=True, capture_output=True)
    lr = json.loads((out / "metrics.json").read_text())["methods"]["latentrouter"]
    return {"score_at_lambda0": lr["score_at_lambda0"], "nauc": lr["nauc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("cells", nargs="+", metavar="NAME=DATA_DIR")
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/layers_sweep.json"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"seeds": list(SEEDS), "cells": {}}
    for spec in a.cells:
        name, _, data = spec.partition("=")
        cell = {}
        for layers in (int(x) for x in a.layers.split(",")):
            per_seed = [run(a.work, name, data, layers, s) for s in SEEDS]
            cell[f"layers_{layers}"] = {
                k: {
                    "mean": round(statistics.mean(r[k] for r in per_seed), 4),
                    "std": round(statistics.stdev(r[k] for r in per_seed), 4),
                }
                for k in ("score_at_lambda0", "nauc")
            } | {"per_seed": per_seed}
            print(name, layers, cell[f"layers_{layers}"]["score_at_lambda0"], cell[f"layers_{layers}"]["nauc"])
        res["cells"][name] = cell
        atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
