"""Fixed-width capability profiles (method.md §3.2-3.5): what the router knows about each model.

A profile summarises a model's observed outcomes on the calibration rows only:
overall score, shrunk per-slice scores (slices = k-means clusters of query
embeddings, never dataset labels), expected cost, latency, output tokens and
evidence. Its width (S + 7) does not depend on the pool, so models can be added
or removed without retraining.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.features import HAS_IMAGE_COL, l2_normalise

KAPPA = 10.0
SLICE_SEED = 20260308


def slice_embedding(q: np.ndarray) -> np.ndarray:
    """Text and image vectors of q, concatenated and L2-normalised (§3.3)."""
    return l2_normalise(np.asarray(q[:, :HAS_IMAGE_COL], np.float64))


def fit_slices(q_train: np.ndarray, n_cal: int, S: int = 8, seed: int = SLICE_SEED) -> np.ndarray:
    """k-means++ centroids `[S, D_e]` (unit length) on training rows; S shrinks for small R_cal."""
    from sklearn.cluster import KMeans

    S = max(1, min(S, n_cal // 50, len(q_train)))
    km = KMeans(n_clusters=S, init="k-means++", n_init=4, max_iter=100, random_state=seed)
    km.fit(slice_embedding(q_train))
    return l2_normalise(km.cluster_centers_)


def assign_slices(q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by cosine, per row."""
    return np.argmax(slice_embedding(q) @ np.asarray(centroids, np.float64).T, axis=1)


def raw_profile(y: np.ndarray, cost: np.ndarray, lat: np.ndarray, tok: np.ndarray, slices: np.ndarray, S: int,
                cost_scale: float, fill_lat: float, fill_tok: float) -> np.ndarray:
    """One model's raw profile `[S + 7]` from its available calibration rows."""
    n = len(y)
    ybar = float(y.mean()) if n else 0.0
    prof = [ybar]
    for s in range(S):
        sel = slices == s
        ns = int(sel.sum())
        prof.append((ns * (float(y[sel].mean()) if ns else 0.0) + KAPPA * ybar) / (ns + KAPPA))
    ebar = float(cost.mean()) if n else 0.0
    prof.append(np.log(ebar / cost_scale + 1e-3))
    for v, fill in ((lat, fill_lat), (tok, fill_tok)):
        known = np.isfinite(v)
        prof += [np.log1p(float(v[known].mean())), 1.0] if known.any() else [fill, 0.0]
    prof.append(np.log1p(n))
    return np.asarray(prof, np.float64)


def column_floors(S: int) -> np.ndarray:
    """Std floors: 0.05 for score columns, 0.5 for log columns, 1 for flags."""
    return np.array([0.05] * (S + 1) + [0.5, 0.5, 1.0, 0.5, 1.0, 0.5])


@dataclass
class ProfileSpace:
    """Everything frozen at training time that turns outcomes into standardised profiles."""

    centroids: np.ndarray      # [S, D_e]
    cost_scale: float          # s_c
    mean: np.ndarray           # [S + 7]
    std: np.ndarray            # [S + 7]
    fill_lat: float
    fill_tok: float

    @property
    def S(self) -> int:
        return len(self.centroids)

    @property
    def width(self) -> int:
        return self.S + 7

    def profile(self, y, cost, lat, tok, slices) -> np.ndarray:
        return raw_profile(y, cost, lat, tok, slices, self.S, self.cost_scale, self.fill_lat, self.fill_tok)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"centroids": self.centroids.tolist(), "cost_scale": self.cost_scale, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "fill_lat": self.fill_lat, "fill_tok": self.fill_tok}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileSpace":
        return cls(np.asarray(d["centroids"]), float(d["cost_scale"]), np.asarray(d["mean"]), np.asarray(d["std"]),
                   float(d["fill_lat"]), float(d["fill_tok"]))


def build_profiles(q: np.ndarray, Y, C, A, Lat, Tok, train_rows, cal_rows, S: int = 8):
    """Fit slices and standardisation on training data; return (space, raw profiles [K, S+7], e_bar [K])."""
    centroids = fit_slices(q[train_rows], len(cal_rows), S)
    slices = assign_slices(q[cal_rows], centroids)
    K = Y.shape[1]
    e_bar = np.array([C[cal_rows, k][A[cal_rows, k]].mean() if A[cal_rows, k].any() else np.nan for k in range(K)])
    cost_scale = float(np.nanmax(e_bar)) if np.isfinite(e_bar).any() and np.nanmax(e_bar) > 0 else 1.0

    def col_mean(M):
        vals = [np.log1p(M[cal_rows, k][A[cal_rows, k] & np.isfinite(M[cal_rows, k])].mean())
                for k in range(K) if (A[cal_rows, k] & np.isfinite(M[cal_rows, k])).any()]
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
