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
        out.append(
            {
                "score": float(Y[rows, k].mean()) if cnt else float("nan"),
                "cost": float(C[rows, k].mean()) if cnt else float("nan"),
                "coverage": cnt / n,
                "n": cnt,
            }
        )
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


# ----------------------------------------------------------------------------- frontier metrics (§8.3-8.7)


def pareto_frontier(points) -> list[tuple[float, float]]:
    """Non-dominated (cost, quality) points: sort by cost asc, quality desc; keep strict quality gains."""
    out: list[tuple[float, float]] = []
    for c, q in sorted(((float(c), float(q)) for c, q in points), key=lambda p: (p[0], -p[1])):
        if not out or q > out[-1][1]:
            out.append((c, q))
    return out


def nauc(points) -> float:
    """Official MMR-Bench nAUC: trapezoid over the Pareto frontier, cost normalised to its span."""
    F = pareto_frontier(points)
    if len(F) < 2 or F[-1][0] == F[0][0]:
        return float("nan")
    area = sum((c2 - c1) * (q1 + q2) / 2 for (c1, q1), (c2, q2) in zip(F, F[1:]))
    return area / (F[-1][0] - F[0][0])


def nauc_ref(points) -> float:
    """The reference variant: all distinct costs, running-max quality, trapezoid on [0, 1]-normalised cost."""
    best: dict[float, float] = {}
    for c, q in points:
        best[float(c)] = max(best.get(float(c), -np.inf), float(q))
    cs = sorted(best)
    qs = np.maximum.accumulate([best[c] for c in cs])
    if len(cs) == 1:
        return float(qs[0])
    span = cs[-1] - cs[0]
    if span == 0:
        return float(qs.max())
    x = (np.asarray(cs) - cs[0]) / span
    return float(np.sum((x[1:] - x[:-1]) * (qs[1:] + qs[:-1]) / 2))


def peak_score(points) -> float:
    return max(q for _, q in pareto_frontier(points))


def qnc(points, q_best: float, c_best: float, frac: float = 1.0) -> float:
    """Cheapest frontier cost reaching frac x best-single quality, over the best single's cost."""
    if c_best <= 0:
        return float("nan")
    hits = [c for c, q in pareto_frontier(points) if q >= frac * q_best - 1e-12]
    return min(hits) / c_best if hits else float("inf")


def apgr(points, weak: tuple[float, float], strong: tuple[float, float]) -> float:
    """RouteLLM's average performance gap recovered, with x = (cost - C_w) / (C_s - C_w)."""
    (cw, qw), (cs, qs) = weak, strong
    if qs <= qw or cs == cw:
        return float("nan")
    pts = sorted(((c - cw) / (cs - cw), q) for c, q in points)
    pts = [(x, q) for x, q in pts if 0 <= x <= 1]
    if len(pts) < 2:
        return float("nan")
    x = np.array([p[0] for p in pts])
    q = np.array([p[1] for p in pts])
    auc = float(np.sum((x[1:] - x[:-1]) * (q[1:] + q[:-1]) / 2))
    dx = x[-1] - x[0]
    if dx <= 0:
        return float("nan")
    return (auc - qw * dx) / (qs * dx - qw * dx)


def cpt(points, weak: tuple[float, float], strong: tuple[float, float], p: float) -> float:
    """Percent of normalised cost at which the frontier first reaches Q_w + p (Q_s - Q_w)."""
    (cw, qw), (cs, qs) = weak, strong
    if cs == cw:  # one model, or weak and strong cost the same: there is no cost axis to normalise
        return float("nan")
    target = qw + p * (qs - qw)
    F = [((c - cw) / (cs - cw), q) for c, q in pareto_frontier(points)]
    if not F:
        return float("inf")
    if target <= F[0][1]:
        return 100 * F[0][0]
    for (x1, q1), (x2, q2) in zip(F, F[1:]):
        if q1 < target <= q2:
            return 100 * (x1 + (target - q1) / (q2 - q1) * (x2 - x1))
    return float("inf")


def aiq(points, c_hi: float) -> float:
    """RouterBench AIQ: area under the non-decreasing upper concave hull, extended flat to c_hi, over c_hi."""
    pts = sorted(set((float(c), float(q)) for c, q in points))
    hull: list[tuple[float, float]] = []
    for p in pts:  # upper hull by monotone chain
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    top = int(np.argmax([q for _, q in hull]))
    hull = hull[: top + 1]
    if hull[-1][0] < c_hi:
        hull.append((c_hi, hull[-1][1]))
    area = sum((c2 - c1) * (q1 + q2) / 2 for (c1, q1), (c2, q2) in zip(hull, hull[1:]))
    return area / c_hi


def rank_score(acc: float, cost: float, c_min: float, c_max: float, beta: float = 0.1) -> float:
    """VL-RouterBench rank score S (§8.5)."""
    a = float(np.clip(acc, 0, 1))
    c = float(np.clip(cost, c_min, c_max))
    c_hat = float(np.clip((np.log2(c_max) - np.log2(c)) / (np.log2(c_max) - np.log2(c_min) + 1e-12), 0, 1))
    return float(np.clip((1 + beta) * a * c_hat / (beta * a + c_hat + 1e-12), 0, 1))


# ----------------------------------------------------------------------------- uncertainty quality (§8.8)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), for Spearman's rho."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / cnt)[inv]


def uncertainty(mu_t: np.ndarray, mu: np.ndarray, sigma: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """How honest the distributional head is, on binary entries (flat arrays, one per (query, model)).

    ECE over `bins` equal-width bins of mu_tilde, Brier score of mu_tilde, Gaussian NLL of y under
    N(mu, sigma) (with the 0.5 ln 2 pi constant), coverage of mu +/- 1.96 sigma, and Spearman's rho
    between sigma and |y - mu| (does a wider sigma mean a larger error?).
    """
    mu_t, mu, sigma, y = (np.asarray(a, float).ravel() for a in (mu_t, mu, sigma, y))
    n = len(y)
    if n == 0:
        return {"entries": 0}
    b = np.clip((mu_t * bins).astype(int), 0, bins - 1)
    cnt = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, weights=y, minlength=bins) - np.bincount(b, weights=mu_t, minlength=bins))
    err = np.abs(y - mu)
    z = (y - mu) / sigma
    rs, re = _ranks(sigma), _ranks(err)
    sd = rs.std() * re.std()
    return {
        "entries": int(n),
        "ece": float(gap.sum() / n),
        "brier": float(np.mean((mu_t - y) ** 2)),
        "gaussian_nll": float(np.mean(0.5 * z * z + np.log(sigma) + 0.5 * np.log(2 * np.pi))),
        "coverage_1.96sigma": float(np.mean(err <= 1.96 * sigma)),
        "spearman_sigma_abs_error": float(np.mean((rs - rs.mean()) * (re - re.mean())) / sd) if sd > 0 else None,
        "bin_counts": cnt.tolist(),
    }
