"""Capability profiles in numpy (method.md §3.2, §3.5): shared by training and by `models add`.

A profile summarises a model's observed outcomes on labelled queries: overall
score, shrunk per-slice scores (slices = nearest k-means centroid of the query
embedding), expected cost, latency, output tokens and evidence. Its width
(S + 7) does not depend on the pool, so models can be added or removed without
retraining. The centroids and standardisation constants are frozen at training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

from .features import HAS_IMAGE_COL, l2_normalise

KAPPA = 10.0


def slice_embedding(q: np.ndarray) -> np.ndarray:
    """Text and image vectors of q, concatenated and L2-normalised (§3.3)."""
    return l2_normalise(np.asarray(q[:, :HAS_IMAGE_COL], np.float64))


def centroid_similarity(q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine of each query to each slice centroid, `[B, S]`, for routing (coverage, explain).

    A plain einsum loop, not a BLAS matmul, on purpose: this is the only matmul on the routing path, and
    OpenBLAS wakes a worker thread for it that then spins, taking a core from ONNX Runtime (measured on 2
    cores: route_many 149 -> 174 q/s with it gone). The loop costs ~40 us per query at S = 64."""
    return np.asarray(np.einsum("bd,sd->bs", slice_embedding(q), np.asarray(centroids, np.float64)))


def assign_slices(q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by cosine, per row."""
    return np.asarray(np.argmax(slice_embedding(q) @ np.asarray(centroids, np.float64).T, axis=1))


def raw_profile(
    y: np.ndarray,
    cost: np.ndarray,
    lat: np.ndarray,
    tok: np.ndarray,
    slices: np.ndarray,
    S: int,
    cost_scale: float,
    fill_lat: float,
    fill_tok: float,
) -> np.ndarray:
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

    centroids: np.ndarray  # [S, D_e]
    cost_scale: float  # s_c
    mean: np.ndarray  # [S + 7]
    std: np.ndarray  # [S + 7]
    fill_lat: float
    fill_tok: float

    @property
    def S(self) -> int:
        return len(self.centroids)

    @property
    def width(self) -> int:
        return self.S + 7

    def profile(self, y: Any, cost: Any, lat: Any, tok: Any, slices: Any) -> np.ndarray:
        return raw_profile(y, cost, lat, tok, slices, self.S, self.cost_scale, self.fill_lat, self.fill_tok)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray((raw - self.mean) / self.std)

    def model_feat(self, raw: np.ndarray, e_bar: np.ndarray) -> np.ndarray:
        """The router's `model_feat` rows `[K, S + 8]`: standardised profiles, then the normalised expected
        cost e_bar / s_c."""
        c_hat = np.asarray(e_bar, np.float64) / self.cost_scale
        prof = self.standardise(np.asarray(raw, np.float64))
        return np.concatenate([prof, c_hat[:, None]], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "centroids": np.round(self.centroids, 7).tolist(),
            "cost_scale": self.cost_scale,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "fill_lat": self.fill_lat,
            "fill_tok": self.fill_tok,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProfileSpace":
        return cls(
            np.asarray(d["centroids"]),
            float(d["cost_scale"]),
            np.asarray(d["mean"]),
            np.asarray(d["std"]),
            float(d["fill_lat"]),
            float(d["fill_tok"]),
        )


def pool_features(pool: Any) -> np.ndarray:
    """`[K, W + 1]` of a bundle's pool (`PoolEntry`s): each model's standardised profile, then its constant
    normalised cost."""
    return np.array([[*p.profile, p.cost_hat] for p in pool], np.float32)


def model_features(
    base: np.ndarray, c_hat: np.ndarray | None = None, memory: np.ndarray | None = None, rows: int | None = None
) -> np.ndarray:
    """The router graph's `model_feat` `[B, K, P_in]`, assembled in one place for training, export and serving:
    each model's standardised profile (`base[:, :-1]`), then the capability memory's columns for this query (if the
    router has a memory, `[B, K, 3]`), then its normalised expected cost (`c_hat [B, K]`, or the per-model constant
    `base[:, -1]`)."""
    given = c_hat if c_hat is not None else memory
    B = int(rows if given is None else len(given))  # type: ignore[arg-type]
    mf = np.broadcast_to(np.asarray(base, np.float32), (B, *base.shape)).copy()
    if c_hat is not None:
        mf[..., -1] = c_hat
    if memory is not None:
        mf = np.concatenate([mf[..., :-1], np.asarray(memory, np.float32), mf[..., -1:]], axis=-1)
    return mf


MIN_NEW_MODEL_QUERIES = 24


def new_model_profile(
    space: ProfileSpace,
    q: np.ndarray,
    y: Any,
    cost: Any,
    lat: Any,
    tok: Any,
    questions: list[str],
    *,
    price_in: float | None,
    price_out: float | None,
    pool_mean: float,
) -> dict[str, Any]:
    """Raw profile, expected cost and warnings for a model added from labelled queries (§3.5).

    Expected cost: the mean observed cost of the labelled queries when the outcomes carry costs (what
    those queries really cost, image tokens and answers included), else `price_tokens` from the prices
    (1.3 tokens per word in, the mean recorded output tokens out); it also fills the profile's log-cost
    column. A model with an image-token rule is priced per query at route time anyway (runtime.costs).
    """
    from .features import n_words

    slices = assign_slices(q, space.centroids)
    raw = space.profile(np.asarray(y), np.asarray(cost), np.asarray(lat), np.asarray(tok), slices)
    tok, observed = np.asarray(tok, float), np.asarray(cost, float)
    if len(observed) and np.isfinite(observed).all():
        e_bar, estimator = float(np.mean(observed)), "mean_observed_cost"
    elif price_in is not None:
        t_in = float(np.mean([1.3 * n_words(x) for x in questions]))
        t_out = float(np.nanmean(tok)) if np.isfinite(tok).any() else 0.0
        e_bar, estimator = (price_in * t_in + (price_out or 0.0) * t_out) / 1e6, "price_tokens"
    else:
        raise InputError("a new model needs the costs of its labelled queries, or its prices (--price-in)")
    raw[space.S + 1] = np.log(e_bar / space.cost_scale + 1e-3)
    counts = np.bincount(slices, minlength=space.S)
    warnings = []
    if len(y) < MIN_NEW_MODEL_QUERIES:
        warnings.append(f"only {len(y)} labelled queries (< {MIN_NEW_MODEL_QUERIES}): the profile is thin")
    if (counts == 0).any() and abs(float(np.mean(y)) - pool_mean) > 0.15:
        warnings.append(
            f"slices {np.flatnonzero(counts == 0).tolist()} have no labelled query and the model's mean "
            f"score {np.mean(y):.2f} is far from the pool mean {pool_mean:.2f}"
        )
    return {
        "raw": raw,
        "e_bar": float(e_bar),
        "estimator": estimator,
        "slice_counts": counts.tolist(),
        "warnings": warnings,
    }
