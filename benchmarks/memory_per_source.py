"""Memory settings per source on a merged set (issue 21, not adopted yet): is one k right for every source?

`lr-onnx data merge` labels each query `SOURCE/label`. On a merge, validation chooses one memory setting for all
sources, while the sources alone choose very different ones (blindtest k 16, dynamath k 256). Memory-only routing
(no network, no training seed), each rule choosing by validation routing value (score at lambda 0 + nAUC) and scored
on the test split, overall and per source:

    global         one setting for every query (what `train` does)
    per_source     one setting per source, chosen on that source's validation rows (>= MIN_VAL rows, else global),
                   applied by the query's true source (an upper reference: the router does not see the label)
    neighbour_vote the same settings, applied by the source most of the query's 16 nearest memory rows come from:
                   what a router could do at serve time, with one small integer per memory row
    neighbour_vote_one_space   the same, each source choosing among the global choice's image weight only (one
                   retrieval space, one set of keys: what a bundle can carry)
    kmeans_G       label-free: G k-means groups of the retrieval space, one setting per group (G in 2, 4, 8)

    python benchmarks/memory_per_source.py real_merged=DIR default3=DIR [--out benchmarks/results/memory_per_source.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.memory import GRID, fit_memory, memory_rows, reference_similarity, routing_value
from lr_onnx.export.train.trainer import load_training_set
from lr_onnx.runtime.memory import MemorySettings

from memory_variants import KMAX, local_sums, shrunk, sorted_found  # benchmarks/memory_variants.py

MIN_VAL = 100
VOTE_K = 16


def vote(neighbour_sources: np.ndarray, names: list[str]) -> np.ndarray:
    """`[B]` for each query, the source among `names` most of its neighbours `[B, k]` come from (ties: the first)."""
    counts = np.stack([(neighbour_sources == s).sum(axis=1) for s in names], axis=1)
    return np.asarray(names)[counts.argmax(axis=1)]


def estimates(P, rows: np.ndarray) -> tuple[dict, dict]:
    """({setting: [n, K] estimate on `rows`}, {image weight: (memory, sorted neighbours)}) over the selection grid."""
    est, found = {}, {}
    for iw in GRID["image_weight"]:
        mem = fit_memory(P, MemorySettings(k=KMAX, image_weight=iw))
        F = sorted_found(mem.neighbours(mem.embed(P.q[rows]), KMAX, blas=True), KMAX)
        found[iw] = (mem, F)
        for k, tau, kappa in itertools.product(GRID["k"], GRID["tau"], GRID["kappa"]):
            st = MemorySettings(k, kappa, tau, iw, reference_similarity(mem.keys, k))
            _, ev, ys = local_sums(mem, (F[0][:, :k], F[1][:, :k]), st)
            est[(iw, k, tau, kappa)] = shrunk(ev, ys, kappa, mem.global_mean)
    return est, found


def cell(P) -> dict:
    d = P.data
    val = np.flatnonzero(P.masks["val"] & d.A.any(axis=1))
    test = np.flatnonzero(P.masks["test"] & d.A.any(axis=1))
    rows = np.concatenate([val, test])
    iv, it = np.arange(len(val)), np.arange(len(val), len(rows))
    source = np.array([s.split("/", 1)[0] for s in d.dataset])
    est, found = estimates(P, rows)

    def value(s, idx):
        return sum(routing_value(est[s][idx], P, rows[idx]))

    def scored(choice: list[tuple]) -> dict:
        """Test routing of the estimate that takes, for each row, the setting `choice[row]`."""
        e = np.stack([est[c][i] for i, c in enumerate(choice)])
        out = {"all": routing_value(e[it], P, rows[it])}
        for s in sorted(set(source[rows])):
            ti = it[source[rows[it]] == s]
            out[s] = routing_value(e[ti], P, rows[ti])
        return {k: {"score_at_lambda0": round(v[0], 4), "nauc": round(v[1], 4)} for k, v in out.items()}

    g = max(est, key=lambda s: value(s, iv))
    per = {}
    for s in sorted(set(source[val])):
        vi = iv[source[val] == s]
        per[s] = max(est, key=lambda c: value(c, vi)) if len(vi) >= MIN_VAL else g
    same = {}  # the retrieval space is one: each source chooses among the settings of the global image weight
    for s in sorted(set(source[val])):
        vi = iv[source[val] == s]
        same[s] = max((c for c in est if c[0] == g[0]), key=lambda c: value(c, vi)) if len(vi) >= MIN_VAL else g
    mem, F = found[g[0]]
    mrows = memory_rows(P)
    voted = vote(source[mrows][F[1][:, :VOTE_K]], list(per))  # by the sources of each query's nearest memory rows
    res = {
        "sources": {s: int((source[test] == s).sum()) for s in per},
        "global": {"setting": list(g), **scored([g] * len(rows))},
        "per_source": {
            "settings": {s: list(c) for s, c in per.items()},
            **scored([per.get(s, g) for s in source[rows]]),
        },
        "neighbour_vote_one_space": {
            "settings": {s: list(c) for s, c in same.items()},
            **scored([same[s] for s in voted]),
        },
        "neighbour_vote": {
            "vote_accuracy_on_test": round(float((voted[it] == source[rows[it]]).mean()), 4),
            **scored([per[s] for s in voted]),
        },
    }
    from sklearn.cluster import KMeans

    for G in (2, 4, 8):
        km = KMeans(G, n_init=4, random_state=0).fit(mem.keys)
        grp = km.predict(mem.embed(P.q[rows]))
        pick = {}
        for c in range(G):
            vi = iv[grp[iv] == c]
            pick[c] = max(est, key=lambda s: value(s, vi)) if len(vi) >= MIN_VAL else g
        res[f"kmeans_{G}"] = scored([pick[c] for c in grp])
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", metavar="NAME=DATA_DIR")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_per_source.json"))
    a = ap.parse_args(argv)
    res = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {}
    for spec in a.cells:
        name, _, data_dir = spec.partition("=")
        res[name] = cell(load_training_set(data_dir, progress=False))
        atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")
        for rule, r in res[name].items():
            if isinstance(r, dict) and "all" in r:
                parts = [
                    f"{s} {v['score_at_lambda0']:.4f}/{v['nauc']:.4f}"
                    for s, v in r.items()
                    if isinstance(v, dict) and "nauc" in v
                ]
                print(f"{name:12s} {rule:15s} " + "  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
