"""Shrinking the memory's estimate to the query's task instead of the whole set (issue 21, experiment).

`task_lookup` (each model's training mean on the query's `dataset` label) beats the memory on `dcrouter`. The
memory shrinks each neighbourhood's mean to the model's *global* mean; here it shrinks to the model's mean on
the query's label instead, the label voted by the query's 16 nearest memory rows (no metadata at route time).
Memory-only routing, chosen by validation routing value (score at lambda 0 + nAUC) as `train` chooses:

    current        the memory as trained (prior: global mean; kappa in {1, 3, 10})
    label_prior    prior: the voted label's mean (shrunk to the global mean by 5 rows); kappa in {1, 3, 10, 30, 100}
    either         validation chooses among both families (what `train` would do with a `prior` setting)
    true_label     label_prior with the query's own label (reads metadata, like task_lookup: a reference)

    python benchmarks/memory_label_prior.py dcrouter=../shared/data/dcrouter [...] [--out F]
"""

from __future__ import annotations

import itertools

import numpy as np

from lr_onnx.export.evaluate.baselines import task_lookup_scores
from lr_onnx.export.train.memory import GRID, fit_memory, memory_rows, routing_value
from lr_onnx.runtime.memory import MemorySettings
from lr_onnx.runtime.memory_sources import VOTE_K

from memory_variants import KMAX, current, pool_halves, run_cells, scored_result, shrunk, sorted_found, sums_at

LABEL_ROWS = 5.0  # pseudo-rows shrinking a label's mean to the model's global mean
KAPPAS = (1.0, 3.0, 10.0, 30.0, 100.0)
SEED = 20260308


def label_means(mem, labels: np.ndarray, codes: list[str]) -> np.ndarray:
    """`[L, K]` each model's mean outcome on each label's memory rows, shrunk to its global mean."""
    out = np.empty((len(codes), len(mem.models)))
    for i, lab in enumerate(codes):
        sel = labels == lab
        n = mem.known[sel].sum(axis=0)
        out[i] = (mem.values[sel].sum(axis=0) + LABEL_ROWS * mem.global_mean) / (n + LABEL_ROWS)
    return out


def voted(row_label: np.ndarray, idx: np.ndarray, n_labels: int) -> np.ndarray:
    """`[B]` the label most of each query's VOTE_K nearest rows carry (nearest first)."""
    near = row_label[idx[:, :VOTE_K]]
    return np.stack([(near == c).sum(axis=1) for c in range(n_labels)], axis=1).argmax(axis=1)


def cell(P, resplits: int) -> dict:
    d = P.data
    rng = np.random.default_rng(SEED)
    pool, halves = pool_halves(P, resplits, rng)
    rows = memory_rows(P)
    labels = np.array(d.dataset)
    codes = sorted(set(labels[rows]))
    code = {c: i for i, c in enumerate(codes)}
    row_label = np.array([code[x] for x in labels[rows]])
    cands = []
    for iw in GRID["image_weight"]:
        mem = fit_memory(P, MemorySettings(k=KMAX, image_weight=iw))
        F = sorted_found(mem.neighbours(mem.embed(P.q[pool]), KMAX, blas=True), KMAX)
        table = label_means(mem, labels[rows], codes)
        vote = voted(row_label, F[1], len(codes))
        own = np.array([code.get(x, -1) for x in labels[pool]])
        prior_vote = table[vote]
        prior_true = np.where((own >= 0)[:, None], table[np.maximum(own, 0)], mem.global_mean)
        for k, tau in itertools.product(GRID["k"], GRID["tau"]):
            ev, ys = sums_at(mem, F, iw, k, tau)
            cands += [current(ev, ys, mem, iw, k, tau, kappa) for kappa in GRID["kappa"]]
            for kappa in KAPPAS:
                cands.append(
                    {"family": "label", "settings": (iw, k, tau, kappa), "est": shrunk(ev, ys, kappa, prior_vote)}
                )
                cands.append(
                    {"family": "true", "settings": (iw, k, tau, kappa), "est": shrunk(ev, ys, kappa, prior_true)}
                )
    lookup = task_lookup_scores(P, pool)

    def value(c, idx):
        return sum(routing_value(c["est"][idx], P, pool[idx]))

    result = {}
    for name, fams in {
        "current": ("current",),
        "label_prior": ("label",),
        "either": ("current", "label"),
        "true_label": ("true",),
    }.items():
        scored = []
        for choose, score in halves:
            best = max((c for c in cands if c["family"] in fams), key=lambda c: value(c, choose))
            scored.append(routing_value(best["est"][score], P, pool[score]) + ([best["family"], *best["settings"]],))
        result[name] = scored_result(scored)
    result["task_lookup"] = scored_result([routing_value(lookup[s], P, pool[s]) + ([],) for _, s in halves])
    return result


def main(argv=None) -> None:
    run_cells(argv, __doc__, cell, "benchmarks/results/memory_label_prior.json", lambda res: None)


if __name__ == "__main__":
    main()
