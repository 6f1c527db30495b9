"""Fitting capability profiles on training data (method.md §3.2-3.3); the numpy profile itself is runtime/profiles.py.

A profile summarises a model's observed outcomes on the calibration rows only:
overall score, shrunk per-slice scores (slices = k-means clusters of query
embeddings, never dataset labels), expected cost, latency, output tokens and
evidence. Its width (S + 7) does not depend on the pool, so models can be added
or removed without retraining.
"""

from __future__ import annotations

import numpy as np

from ...runtime.features import l2_normalise
from ...runtime.profiles import ProfileSpace, assign_slices, column_floors, slice_embedding

SLICE_SEED = 20260308
SLICES = 64  # default S before the |R_cal| / 50 cap; method.md's 8 is too coarse once the slice prior reads them


def fit_slices(q_train: np.ndarray, n_cal: int, S: int = SLICES, seed: int = SLICE_SEED) -> np.ndarray:
    """k-means++ centroids `[S, D_e]` (unit length) on training rows; S shrinks for small R_cal."""
    from sklearn.cluster import KMeans

    S = max(1, min(S, n_cal // 50, len(q_train)))
    km = KMeans(n_clusters=S, init="k-means++", n_init=4, max_iter=100, random_state=seed)
    km.fit(slice_embedding(q_train))
    return l2_normalise(km.cluster_centers_)


def build_profiles(q: np.ndarray, Y, C, A, Lat, Tok, train_rows, cal_rows, S: int = SLICES):
    """Fit slices and standardisation on training data; return (space, raw profiles [K, S+7], e_bar [K])."""
    centroids = fit_slices(q[train_rows], len(cal_rows), S)
    slices = assign_slices(q[cal_rows], centroids)
    K = Y.shape[1]
    e_bar = np.array([C[cal_rows, k][A[cal_rows, k]].mean() if A[cal_rows, k].any() else np.nan for k in range(K)])
    cost_scale = float(np.nanmax(e_bar)) if np.isfinite(e_bar).any() and np.nanmax(e_bar) > 0 else 1.0

    def col_mean(M):
        vals = [
            np.log1p(M[cal_rows, k][A[cal_rows, k] & np.isfinite(M[cal_rows, k])].mean())
            for k in range(K)
            if (A[cal_rows, k] & np.isfinite(M[cal_rows, k])).any()
        ]
        return float(np.mean(vals)) if vals else 0.0

    width = len(centroids) + 7
    space = ProfileSpace(centroids, cost_scale, np.zeros(width), np.ones(width), col_mean(Lat), col_mean(Tok))
    raw = []
    for k in range(K):
        r = cal_rows[A[cal_rows, k]]
        raw.append(space.profile(Y[r, k], C[r, k], Lat[r, k], Tok[r, k], slices[A[cal_rows, k]]))
    raw = np.stack(raw)
    space.mean = raw.mean(axis=0)
    space.std = np.maximum(raw.std(axis=0), column_floors(space.S))
    return space, raw, e_bar


FEW_SHOT_DRAWS, FEW_SHOT_SIZES = 8, (25, 50, 100)


def few_shot_profiles(P, seed: int) -> np.ndarray:
    """`[K, 8, P_in]` model features from bootstrap profiles on random R_cal subsets of 25, 50 or 100 rows (§3.4).

    Swapping them in during training teaches the network how far to trust a thin profile,
    which is what a model added later with 24-96 labelled queries has.
    """
    d = P.data
    rng = np.random.default_rng(seed + 2)
    cal = np.flatnonzero(P.masks["cal"])
    slices = assign_slices(P.q[cal], P.space.centroids)
    out = np.repeat(P.model_feat()[:, None, :], FEW_SHOT_DRAWS, axis=1)
    for k in range(d.k):
        have = np.flatnonzero(d.A[cal, k])
        for b in range(FEW_SHOT_DRAWS):
            n = min(int(rng.choice(FEW_SHOT_SIZES)), len(have))
            if n == 0:
                continue
            pick = np.sort(rng.choice(have, n, replace=False))
            r = cal[pick]
            raw = P.space.profile(d.Y[r, k], d.C[r, k], d.Lat[r, k], d.Tok[r, k], slices[pick])
            out[k, b, :-1] = P.space.standardise(raw)
    return out.astype(np.float32)
