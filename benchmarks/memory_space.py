"""An outcome-aligned retrieval space for the capability memory (issue 21: "the similarity is poor").

The memory retrieves by cosine in a PCA space of the text and image vectors: the directions that vary most,
whether or not they say anything about which model succeeds. `export.train.memory.aligned_projection` stretches
that space along the directions that predict the outcomes: a ridge `B [d, K]` from the unit keys to every model's
outcome (training rows, penalty by 5-fold error), then the metric `I + alpha * c * B B^T` (c makes alpha = 1 weigh
the two parts alike on the training keys), one new linear map. The bundle's structure is unchanged (one projection
matrix, `memory.onnx` as it is); only its values differ. alpha = 0 is the PCA space.

Memory-only routing (no network, deterministic), on the cell's test split and on random halves of validation +
test (one half chooses, the other scores; `memory_variants.pool_halves`). Rules:

    current          the PCA space: image weight, k, kappa, tau chosen on validation (what `train` did before)
    absolute_gated   what `train` does now: the best aligned space (alpha in ALIGN, with the rest) replaces the
                     best PCA one only if it routes the choosing half better by the paired test (modality.Z)
    aligned          alpha chosen on validation with the rest, no test (alpha 0 among them)
    relative, relative_gated   the same, the ridge fitted to each outcome minus the query's mean over the models
    alpha_A[_rel]    alpha fixed at A, the rest chosen on validation

    python benchmarks/memory_space.py blindtest=../shared/data/blindtest dynamath=../shared/data/dynamath ...
        [--resplits 6] [--out benchmarks/results/memory_space.json]
"""

from __future__ import annotations

import itertools

import numpy as np
from memory_variants import KMAX, local_sums, pool_halves, run_cells, scored_result, shrunk, sorted_found, summary

from lr_onnx.export.train.memory import (
    ALIGN,
    GRID,
    aligned_projection,
    fit_memory,
    fit_projection,
    memory_rows,
    reference_similarity,
    routing_value,
)
from lr_onnx.export.train.modality import Z, paired_z
from lr_onnx.runtime.memory import MemorySettings, embed

ALPHAS = (0.0, *ALIGN)
SEED = 20260308


def relative(Y: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Each outcome minus the query's mean over its available models: what decides which model wins."""
    return np.where(A, Y - (Y * A).sum(1, keepdims=True) / np.maximum(A.sum(1, keepdims=True), 1), 0.0)


def candidates(P, pool: np.ndarray) -> list[dict]:
    """Every (alpha, relative, image weight, k, tau, kappa) with its memory-only estimates on `pool`: the product's
    `fit_memory(..., align=alpha)`, and the relative variant through its `aligned_projection`."""
    d = P.data
    rows = memory_rows(P)
    out = []
    for iw in GRID["image_weight"]:
        pca = fit_projection(P.q[rows], iw)
        keys = embed(P.q[rows], pca[:, 0], pca[:, 1:], iw)
        for alpha, rel in [(a, r) for a in ALPHAS for r in (False, True) if a > 0 or not r]:
            st0 = MemorySettings(k=KMAX, image_weight=iw)
            if rel:
                proj = aligned_projection(pca, keys, relative(np.nan_to_num(d.Y[rows]), d.A[rows]), d.A[rows], alpha)
                mem = fit_memory(P, st0, projection=proj)
            else:
                mem = fit_memory(P, st0, projection=pca, align=alpha)
            F = sorted_found(mem.neighbours(mem.embed(P.q[pool]), KMAX, blas=True), KMAX)
            for k, tau in itertools.product(GRID["k"], GRID["tau"]):
                st = MemorySettings(k, 1.0, tau, iw, reference_similarity(mem.keys, k))
                _, ev, ys = local_sums(mem, (F[0][:, :k], F[1][:, :k]), st)
                for kappa in GRID["kappa"]:
                    est = shrunk(ev, ys, kappa, mem.global_mean)
                    out.append(
                        {"alpha": alpha, "relative": rel, "settings": (alpha, rel, iw, k, tau, kappa), "est": est}
                    )
    return out


def cell(P, resplits: int) -> dict:
    pool, halves = pool_halves(P, resplits, np.random.default_rng(SEED))
    cands = candidates(P, pool)

    memo: dict = {}

    def value(c, idx):
        key = (id(c), id(idx))  # each halving's index array lives for the whole cell
        if key not in memo:
            memo[key] = sum(routing_value(c["est"][idx], P, pool[idx]))
        return memo[key]

    Y, A = np.nan_to_num(P.data.Y[pool]), P.data.A[pool]

    def utility(c, idx):
        """Per query of `idx`: the outcome of the model the estimate routes to at lambda 0."""
        pick = np.argmax(np.where(A[idx], c["est"][idx], -np.inf), axis=1)
        return Y[idx][np.arange(len(idx)), pick]

    def gated(choose, family):
        """The best candidate of `family` on `choose`, kept only if it beats the best of today's space there by the
        paired one-sided test on each query's utility at lambda 0; else today's best."""
        base = max((c for c in cands if c["alpha"] == 0), key=lambda c: value(c, choose))
        new = max((c for c in cands if c["alpha"] > 0 and family(c)), key=lambda c: value(c, choose))
        diff = utility(new, choose) - utility(base, choose)
        return new if paired_z(diff) > Z else base

    families = {"absolute": lambda c: not c["relative"], "relative": lambda c: c["relative"]}
    rules = {
        "current": lambda c: c["alpha"] == 0,
        "aligned": lambda c: not c["relative"],
        "relative": lambda c: c["alpha"] == 0 or c["relative"],
        **{
            f"alpha_{a:g}{'_rel' * r}": (lambda c, a=a, r=r: c["alpha"] == a and c["relative"] == r)
            for a in ALPHAS
            if a > 0
            for r in (False, True)
        },
    }
    result = {}
    for name, keep in rules.items():
        pick = [c for c in cands if keep(c)]
        scored = []
        for choose, score in halves:
            best = max(pick, key=lambda c: value(c, choose))
            scored.append(routing_value(best["est"][score], P, pool[score]) + (list(best["settings"]),))
        result[name] = scored_result(scored)
    for name, fam in families.items():
        scored = []
        for choose, score in halves:
            best = gated(choose, fam)
            scored.append(routing_value(best["est"][score], P, pool[score]) + (list(best["settings"]),))
        result[f"{name}_gated"] = scored_result(scored)
    return result


def main(argv=None) -> None:
    def finish(res: dict) -> None:
        res["summary"] = summary(res["cells"])
        res["cells_in_summary"] = len(res["cells"])
        res["alphas"] = list(ALPHAS)

    res = run_cells(argv, __doc__, cell, "benchmarks/results/memory_space.json", finish)
    for rule, row in res["summary"].items():
        print(f"{rule:10s} against current, mean over {res['cells_in_summary']} cells: {row}")


if __name__ == "__main__":
    main()
