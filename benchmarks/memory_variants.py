"""Variants of the capability memory's estimate and of how its settings are chosen (issue 21, not adopted).

Memory-only routing (no network, so no training seed: each number is deterministic), scored on the cell's
own test split and, to see past one split's luck, on repeated random halves of validation + test (one half
chooses, the other scores). Variants, each chosen by validation routing value (score at lambda 0 + nAUC)
unless said otherwise:

    current        one kappa in {1, 3, 10}, shrinking to each model's global mean (what `train` does)
    brier          the same settings, chosen by the validation Brier score instead (smoother, less noisy?)
    linear_prior   shrink to a ridge estimate on the retrieval vector (closeness-weighted with the global
                   mean, so far queries still get the global mean), kappa in {1, 3, 10, 30}
    eb_kappa       one kappa per model, from the between- and within-neighbourhood variance of its outcomes
                   on training rows (leave-one-out), times c in {0.5, 1, 2}
    loo_selection  the current settings, chosen on up to 3,000 training rows (leave-one-out) + validation
    oracle         the current settings chosen on the scored half itself: the headroom, not a method
    avg_over_k_tau_kappa   no choice within an image weight: the mean estimate over every (k, tau, kappa)
    top5           the mean estimate of the current settings' five best on validation (less selection noise?)

    python benchmarks/memory_variants.py blindtest=../shared/data/blindtest dynamath=../shared/data/dynamath
        [--resplits 6] [--out benchmarks/results/memory_variants.json]
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
from lr_onnx.runtime.memory import Memory, MemorySettings

KMAX = max(GRID["k"])
LOO_ROWS = 3000
SEED = 20260308


def local_sums(mem: Memory, found, st: MemorySettings):
    """(weights [B, k], evidence [B, K], weighted outcome sums [B, K]): the terms of `Memory.columns`' estimate."""
    sims, idx = found
    w = np.minimum(1.0, np.exp((np.maximum(sims, -1.0) - st.s_ref) / st.tau))
    kn = mem.known[idx].astype(np.float64)
    return w, np.einsum("bk,bkm->bm", w, kn), np.einsum("bk,bkm->bm", w, mem.values[idx])


def sums_at(mem: Memory, found, iw: float, k: int, tau: float):
    """(evidence, weighted outcome sums) of the k nearest of `found` (sorted, nearest first) read with tau."""
    st = MemorySettings(k, 1.0, tau, iw, reference_similarity(mem.keys, k))
    return local_sums(mem, (found[0][:, :k], found[1][:, :k]), st)[1:]


def current(ev, ys, mem: Memory, iw: float, k: int, tau: float, kappa: float) -> dict:
    """One candidate of the `current` family: what `train` would read with these settings."""
    return {"family": "current", "settings": (iw, k, tau, kappa), "est": shrunk(ev, ys, kappa, mem.global_mean)}


def shrunk(ev, ys, kappa, prior) -> np.ndarray:
    return np.clip((ys + kappa * prior) / (ev + kappa), 1e-3, 1 - 1e-3)


def ridge(X: np.ndarray, Y: np.ndarray, A: np.ndarray, alpha: float) -> np.ndarray:
    """`[d + 1, K]` per-model ridge weights (bias last, not penalised) on each model's available rows."""
    Xb = np.concatenate([X, np.ones((len(X), 1))], 1)
    W = np.zeros((Xb.shape[1], Y.shape[1]))
    for j in range(Y.shape[1]):
        a = A[:, j]
        R = alpha * np.eye(Xb.shape[1])
        R[-1, -1] = 0
        W[:, j] = np.linalg.solve(Xb[a].T @ Xb[a] + R, Xb[a].T @ Y[a, j]) if a.sum() >= 2 else 0.0
    return W


def ridge_predict(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """`[n, K]` the ridge estimate of `ridge`'s weights on rows `X`."""
    return np.concatenate([X, np.ones((len(X), 1))], 1) @ W


def ridge_on_training(X: np.ndarray, Y: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Ridge weights with alpha chosen by 5-fold squared error on the training rows themselves."""

    def err(alpha):
        fold = np.random.default_rng(SEED).integers(0, 5, len(X))
        e = 0.0
        for i in range(5):
            W = ridge(X[fold != i], Y[fold != i], A[fold != i], alpha)
            p = ridge_predict(W, X[fold == i])
            e += float(np.sum(A[fold == i] * (p - Y[fold == i]) ** 2))
        return e

    return ridge(X, Y, A, min((0.01, 0.1, 1.0, 10.0), key=err))


def eb_kappa(mem: Memory, found, st: MemorySettings) -> np.ndarray:
    """`[K]` pseudo-counts: within-neighbourhood variance / between-neighbourhood variance of each model."""
    w, ev, ys = local_sums(mem, found, st)
    kn = mem.known[found[1]].astype(np.float64)
    lm = ys / np.maximum(ev, 1e-9)
    neff = ev**2 / np.maximum(np.einsum("bk,bkm->bm", w**2, kn), 1e-12)
    dev = (mem.values[found[1]] - lm[:, None, :]) ** 2
    within = np.einsum("bk,bkm->bm", w, kn * dev) / np.maximum(ev, 1e-9)
    out = np.full(len(mem.models), 1e3)
    for m in range(len(mem.models)):
        ok = neff[:, m] >= 2
        if ok.sum() >= 10:
            wv = within[ok, m] * neff[ok, m] / (neff[ok, m] - 1)
            between = np.var(lm[ok, m]) - np.mean(wv / neff[ok, m])
            out[m] = np.clip(np.mean(wv) / max(between, 1e-6), 0.3, 1e3)
    return out


def sorted_found(found, k: int):
    order = np.argsort(-found[0], axis=1)[:, :k]
    return np.take_along_axis(found[0], order, 1), np.take_along_axis(found[1], order, 1)


def candidates(P, pool: np.ndarray, loo: np.ndarray) -> list[dict]:
    """Every (variant family, settings) with its estimates on `pool` and, for the current family, on `loo`."""
    d = P.data
    rows = memory_rows(P)
    out = []
    for iw in GRID["image_weight"]:
        mem = fit_memory(P, MemorySettings(k=KMAX, image_weight=iw))
        e = mem.embed(P.q[pool])
        F = sorted_found(mem.neighbours(e, KMAX, blas=True), KMAX)
        Ft = sorted_found(mem.neighbours(mem.keys[loo], KMAX, exclude=loo, blas=True), KMAX)
        W = ridge_on_training(mem.keys, np.nan_to_num(d.Y[rows]), d.A[rows])
        lin = np.clip(ridge_predict(W, e), 0.01, 0.99)
        for k, tau in itertools.product(GRID["k"], GRID["tau"]):
            st = MemorySettings(k, 1.0, tau, iw, reference_similarity(mem.keys, k))
            f, ft = (F[0][:, :k], F[1][:, :k]), (Ft[0][:, :k], Ft[1][:, :k])
            w, ev, ys = local_sums(mem, f, st)
            _, evt, yst = local_sums(mem, ft, st)
            near = w.mean(axis=1, keepdims=True)
            prior = near * lin + (1 - near) * mem.global_mean
            kb = eb_kappa(mem, ft, st)
            for kappa in GRID["kappa"]:
                est, est_loo = shrunk(ev, ys, kappa, mem.global_mean), shrunk(evt, yst, kappa, mem.global_mean)
                out.append({"family": "current", "settings": (iw, k, tau, kappa), "est": est, "loo": est_loo})
            for kappa in (1.0, 3.0, 10.0, 30.0):
                out.append({"family": "linear", "settings": (iw, k, tau, kappa), "est": shrunk(ev, ys, kappa, prior)})
            for c in (0.5, 1.0, 2.0):
                out.append(
                    {"family": "eb", "settings": (iw, k, tau, c), "est": shrunk(ev, ys, c * kb, mem.global_mean)}
                )
    return out


def pool_halves(P, resplits: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """The scored rows (validation, then test) and the (choose, score) index pairs into them: validation / test
    first, then `resplits` random halvings of the two together."""
    val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
    test = np.flatnonzero(P.masks["test"] & P.data.A.any(axis=1))
    pool = np.concatenate([val, test])
    halves = [(np.arange(len(val)), np.arange(len(val), len(pool)))]
    for _ in range(resplits):
        p = rng.permutation(len(pool))
        halves.append((np.sort(p[: len(p) // 2]), np.sort(p[len(p) // 2 :])))
    return pool, halves


def scored_result(scored: list) -> dict:
    """One rule's (score at lambda 0, nAUC, settings) per halving as the JSON's test-split and resplit-mean rows."""
    return {
        "test_split": {"score_at_lambda0": scored[0][0], "nauc": scored[0][1], "settings": scored[0][2]},
        "resplit_mean": {
            "score_at_lambda0": float(np.mean([s[0] for s in scored[1:]])),
            "nauc": float(np.mean([s[1] for s in scored[1:]])),
        },
    }


def cell(P, resplits: int) -> dict:
    d = P.data
    rng = np.random.default_rng(SEED)
    pool, halves = pool_halves(P, resplits, rng)
    mrows = memory_rows(P)
    loo = np.sort(rng.choice(len(mrows), min(LOO_ROWS, len(mrows)), replace=False))
    cands = candidates(P, pool, loo)
    for iw in GRID["image_weight"]:  # the averaged family: one candidate per image weight
        group = [c for c in cands if c["family"] == "current" and c["settings"][0] == iw]
        cands.append({"family": "avg", "settings": (iw,), "est": np.mean([c["est"] for c in group], axis=0)})
    Y, A = np.nan_to_num(d.Y[pool]), d.A[pool]

    def value(c, idx):
        return sum(routing_value(c["est"][idx], P, pool[idx]))

    def brier(c, idx):
        return -float(np.sum(A[idx] * (c["est"][idx] - Y[idx]) ** 2) / A[idx].sum())

    loo_value = {id(c): sum(routing_value(c["loo"], P, mrows[loo])) for c in cands if c["family"] == "current"}
    rules = {
        "current": ("current", value),
        "brier": ("current", brier),
        "linear_prior": ("linear", value),
        "eb_kappa": ("eb", value),
        "loo_selection": (
            "current",
            lambda c, idx: (len(idx) * value(c, idx) + len(loo) * loo_value[id(c)]) / (len(idx) + len(loo)),
        ),
        "oracle": ("current", None),
        "avg_over_k_tau_kappa": ("avg", value),
        "top5": ("top5", value),
    }
    result = {}
    for name, (family, crit) in rules.items():
        scored = []
        for choose, score in halves:
            if family == "top5":
                cur = sorted((c for c in cands if c["family"] == "current"), key=lambda c: -value(c, choose))[:5]
                best = {"est": np.mean([c["est"] for c in cur], axis=0), "settings": ()}
            else:
                pick = [c for c in cands if c["family"] == family]
                best = max(pick, key=lambda c: crit(c, choose) if crit else value(c, score))
            scored.append(routing_value(best["est"][score], P, pool[score]) + (list(best["settings"]),))
        result[name] = scored_result(scored)
    return result


def summary(cells: dict) -> dict:
    """Per variant: its mean difference from `current` over the cells (test split, and the resplits' means), and in
    how many cells it is ahead and behind."""
    out = {}
    for rule in next(iter(cells.values())):
        if rule == "current":
            continue
        row = {}
        for where in ("test_split", "resplit_mean"):
            for key in ("score_at_lambda0", "nauc"):
                diff = [c[rule][where][key] - c["current"][where][key] for c in cells.values()]
                row[f"{where}_{key}_mean_diff"] = round(float(np.mean(diff)), 4)
                row[f"{where}_{key}_cells_ahead"] = int(sum(x > 1e-9 for x in diff))
                row[f"{where}_{key}_cells_behind"] = int(sum(x < -1e-9 for x in diff))
        out[rule] = row
    return out


def run_cells(argv, doc: str, cell_fn, out: str, finish) -> dict:
    """The experiments' driver: each `NAME=DATA_DIR` cell run by `cell_fn(training set, resplits)` into the JSON
    `--out` (cells already there are kept, so cells can be added one run at a time), `finish(res)` adding the
    summary after each cell, and each variant's test-split and resplit numbers printed."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", metavar="NAME=DATA_DIR")
    ap.add_argument("--resplits", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(out))
    a = ap.parse_args(argv)
    res = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {"cells": {}}
    for spec in a.cells:
        name, _, data_dir = spec.partition("=")
        res["cells"][name] = cell_fn(load_training_set(data_dir, progress=False), a.resplits)
        finish(res)
        atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")
        for variant, r in res["cells"][name].items():
            t, m = r["test_split"], r["resplit_mean"]
            print(
                f"{name:16s} {variant:14s} test {t['score_at_lambda0']:.4f} / {t['nauc']:.4f}   "
                f"resplits {m['score_at_lambda0']:.4f} / {m['nauc']:.4f}",
                flush=True,
            )
    return res


def main(argv=None) -> None:
    def finish(res: dict) -> None:
        res["summary"] = summary(res["cells"])
        res["cells_in_summary"] = len(res["cells"])
        res["selection_grid"] = {key: list(v) for key, v in GRID.items()}  # the settings the rules choose among

    res = run_cells(argv, __doc__, cell, "benchmarks/results/memory_variants.json", finish)
    for rule, row in res["summary"].items():
        print(f"{rule:14s} against current, mean over {res['cells_in_summary']} cells: {row}")


if __name__ == "__main__":
    main()
