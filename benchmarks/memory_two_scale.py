"""A two-scale memory estimate: shrink the k nearest towards the 256 nearest, not the global mean (not adopted).

    python benchmarks/memory_two_scale.py dcrouter=../shared/data/dcrouter vqarad=../shared/data/vqarad ...
        [--resplits 6] [--out benchmarks/results/memory_two_scale.json]

`task_lookup` (each model's score on the query's own task label) beats the router on `dcrouter`, where
validation chose the memory's widest reading (k 256): a task is a wide neighbourhood. The idea tried here is
hierarchical shrinkage: the estimate from the k nearest shrinks (kappa) towards the estimate from the 256
nearest, itself shrunk (kappa2 in {3, 10, 30}) towards the global mean, so a far query still falls back to the
global mean. Memory-only routing (no network, deterministic), every (image weight, k, tau, kappa[, kappa2]) of
the training grid, chosen on validation by score at lambda 0 + nAUC and scored on the test split, and on
`--resplits` random halvings of validation + test (one half chooses, the other scores). Families: `current`
(what `train` does), `two_scale`, and `either` (the union, validation choosing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_variants import (  # noqa: E402
    KMAX,
    SEED,
    current,
    local_sums,
    pool_halves,
    run_cells,
    scored_result,
    shrunk,
    sorted_found,
    sums_at,
)

from lr_onnx.export.train.memory import GRID, fit_memory, reference_similarity, routing_value  # noqa: E402
from lr_onnx.runtime.memory import MemorySettings  # noqa: E402

KAPPA2 = (3.0, 10.0, 30.0)


def candidates(P, pool: np.ndarray) -> list[dict]:
    """Every (family, settings) with its estimates `[len(pool), K]`."""
    out = []
    for iw in GRID["image_weight"]:
        mem = fit_memory(P, MemorySettings(k=KMAX, image_weight=iw))
        F = sorted_found(mem.neighbours(mem.embed(P.q[pool]), KMAX, blas=True), KMAX)
        for tau in GRID["tau"]:
            wide = MemorySettings(KMAX, 1.0, tau, iw, reference_similarity(mem.keys, KMAX))
            _, evw, ysw = local_sums(mem, F, wide)
            priors = {k2: shrunk(evw, ysw, k2, mem.global_mean) for k2 in KAPPA2}
            for k in GRID["k"]:
                ev, ys = sums_at(mem, F, iw, k, tau)
                for kappa in GRID["kappa"]:
                    out.append(current(ev, ys, mem, iw, k, tau, kappa))
                    if k < KMAX:
                        for k2, prior in priors.items():
                            out.append(
                                {
                                    "family": "two_scale",
                                    "settings": (iw, k, tau, kappa, k2),
                                    "est": shrunk(ev, ys, kappa, prior),
                                }
                            )
    return out


def cell(P, resplits: int) -> dict:
    pool, halves = pool_halves(P, resplits, np.random.default_rng(SEED))
    cands = candidates(P, pool)

    def value(c, idx):
        return sum(routing_value(c["est"][idx], P, pool[idx]))

    out = {}
    for family in ("current", "two_scale", "either"):
        pick = [c for c in cands if family == "either" or c["family"] == family]
        scored = []
        for choose, score in halves:
            best = max(pick, key=lambda c: value(c, choose))
            scored.append((*routing_value(best["est"][score], P, pool[score]), list(best["settings"])))
        out[family] = scored_result(scored)
    return out


def main(argv=None) -> None:
    def finish(res: dict) -> None:
        res["two_scale_minus_current_mean_over_cells"] = {
            where: {
                key: round(
                    float(
                        np.mean([c["two_scale"][where][key] - c["current"][where][key] for c in res["cells"].values()])
                    ),
                    4,
                )
                for key in ("score_at_lambda0", "nauc")
            }
            for where in ("test_split", "resplit_mean")
        }
        res["kappa2"] = list(KAPPA2)

    res = run_cells(argv, __doc__, cell, "benchmarks/results/memory_two_scale.json", finish)
    print("two_scale - current, mean over cells:", res["two_scale_minus_current_mean_over_cells"])


if __name__ == "__main__":
    main()
