"""The routing policy (method.md §1), shared by `route`, `calibrate` and evaluation.

    k* = argmax over available k of (mu_tilde[k] - lam * c_hat[k]),  ties -> lowest index,
    -1 ("no route") when no model is available.

Computed in float64 outside the network; masked entries are -inf here, never a sentinel.
"""
from __future__ import annotations

import numpy as np

from .errors import LrOnnxError

LAMBDA_GRID = np.concatenate([[0.0], 10.0 ** (-4 + 8 * np.arange(50) / 49)])  # §8.1: 0 and 1e-4 .. 1e4


def utilities(scores: np.ndarray, cost_hat: np.ndarray, avail: np.ndarray, lam: float | np.ndarray) -> np.ndarray:
    """`[B, K]` float64 utilities, -inf where unavailable; `lam` is a scalar or `[B]`."""
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim == 1:
        lam = lam[:, None]
    u = np.asarray(scores, np.float64) - lam * np.asarray(cost_hat, np.float64)
    return np.where(np.asarray(avail, bool), u, -np.inf)


def choose(scores: np.ndarray, cost_hat: np.ndarray, avail: np.ndarray, lam: float | np.ndarray) -> np.ndarray:
    """Chosen model index per row (`[B]` int64), -1 where no model is available."""
    u = utilities(scores, cost_hat, avail, lam)
    if np.isnan(u).any() or np.isposinf(u).any():
        raise LrOnnxError("a utility is NaN or infinite: the scores or costs behind it are broken; refusing to route")
    choice = np.argmax(u, axis=1)  # first maximum = lowest index
    return np.where(np.asarray(avail, bool).any(axis=1), choice, -1).astype(np.int64)
