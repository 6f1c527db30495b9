"""Capability profiles in numpy (method.md §3.2, §3.5): shared by training and by `models add`.

A profile summarises a model's observed outcomes on labelled queries: overall
score, shrunk per-slice scores (slices = nearest k-means centroid of the query
embedding), expected cost, latency, output tokens and evidence. Its width
(S + 7) does not depend on the pool, so models can be added or removed without
retraining. The centroids and standardisation constants are frozen at training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import HAS_IMAGE_COL, l2_normalise

KAPPA = 10.0


def slice_embedding(q: np.ndarray) -> np.ndarray:
    """Text and image vectors of q, concatenated and L2-normalised (§3.3)."""
    return l2_normalise(np.asarray(q[:, :HAS_IMAGE_COL], np.float64))


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
        return {"centroids": np.round(self.centroids, 7).tolist(), "cost_scale": self.cost_scale, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "fill_lat": self.fill_lat, "fill_tok": self.fill_tok}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileSpace":
        return cls(np.asarray(d["centroids"]), float(d["cost_scale"]), np.asarray(d["mean"]), np.asarray(d["std"]),
                   float(d["fill_lat"]), float(d["fill_tok"]))
