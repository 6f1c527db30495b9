"""Reference points and routing metrics (method.md §8), in plain numpy.

Every function takes the outcome matrices `Y`, `C` (`[N, K]`, NaN where unknown)
and the availability mask `A` and returns plain Python numbers, so the same code
serves `data check`, `evaluate` and the tests.
"""
from __future__ import annotations

import numpy as np


def single_models(Y: np.ndarray, C: np.ndarray, A: np.ndarray) -> list[dict]:
    """Per model: mean score and cost over the rows where it is available, and its coverage."""
    out = []
    n = max(A.shape[0], 1)
    for k in range(Y.shape[1]):
        rows = A[:, k]
        cnt = int(rows.sum())
        out.append({
            "score": float(Y[rows, k].mean()) if cnt else float("nan"),
            "cost": float(C[rows, k].mean()) if cnt else float("nan"),
            "coverage": cnt / n,
            "n": cnt,
        })
    return out


def best_single(Y: np.ndarray, C: np.ndarray, A: np.ndarray) -> int:
    """Index of the model with the highest mean score; ties by lower mean cost, then index (§8.2)."""
    stats = single_models(Y, C, A)
    cands = [k for k, s in enumerate(stats) if s["n"] > 0]
    if not cands:
        return -1
    return min(cands, key=lambda k: (-round(stats[k]["score"], 12), round(stats[k]["cost"], 15), k))


def oracle_choice(Y: np.ndarray, C: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Per row: the available model with the highest score, ties by cheapest cost then index; -1 if none."""
    N, K = Y.shape
    y = np.where(A, Y, -np.inf)
    c = np.where(A, C, np.inf)
    best_y = y.max(axis=1, keepdims=True)
    tied = A & (y >= best_y - 1e-12)
    c_tied = np.where(tied, c, np.inf)
    best_c = c_tied.min(axis=1, keepdims=True)
    final = tied & (c_tied <= best_c)
    choice = np.where(final.any(axis=1), final.argmax(axis=1), -1)
    return choice


def routed_means(Y: np.ndarray, C: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Mean score and cost of a routing decision over routable rows (choice >= 0)."""
    ok = choice >= 0
    if not ok.any():
        return float("nan"), float("nan")
    rows = np.flatnonzero(ok)
    return float(Y[rows, choice[ok]].mean()), float(C[rows, choice[ok]].mean())


def random_router(Y: np.ndarray, C: np.ndarray, A: np.ndarray) -> tuple[float, float]:
    """Exact expectation of the uniform random router over available models (§8.2)."""
    cnt = A.sum(axis=1)
    ok = cnt > 0
    q = np.where(A, Y, 0.0).sum(axis=1)[ok] / cnt[ok]
    c = np.where(A, C, 0.0).sum(axis=1)[ok] / cnt[ok]
    return float(q.mean()), float(c.mean())
