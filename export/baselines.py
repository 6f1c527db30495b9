"""Baseline routers (method.md §9) on the same features, split, expected costs and policy.

Each baseline is fitted on training rows and returns a predicted-score matrix
`[n, K]`; `runtime.policy.choose` then routes every method the same way, by
argmax(score - lambda x c_hat) over the available models.
"""
from __future__ import annotations

import numpy as np

from ..runtime.features import l2_normalise
from .train import Prepared


def best_single_scores(P: Prepared, rows: np.ndarray) -> np.ndarray:
    """Validation mean score per model, the same for every row: routes to the best available single model.

    The scores are shifted by a large constant so no lambda can move the choice (it ignores cost).
    """
    val = P.masks["val"]
    means = np.array([P.data.Y[val & P.data.A[:, k], k].mean() if (val & P.data.A[:, k]).any() else -1.0
                      for k in range(P.data.k)])
    return np.broadcast_to(means * 1e9, (len(rows), P.data.k)).copy()


def task_lookup_scores(P: Prepared, rows: np.ndarray) -> np.ndarray:
    """Each model's mean training score on the row's `dataset` label: the per-task lookup.

    It reads the `dataset` label, metadata the router never sees, so it is the bar a router must clear
    on real data rather than a method it competes with on equal terms. At lambda 0 it routes every query
    to the best training model of its label; a label unseen in training, and ties, fall back to the
    best single model (the training means break ties by a negligible amount).
    """
    d, train = P.data, P.masks["train"]
    labels = np.array(d.dataset)
    Y = np.nan_to_num(d.Y)
    overall = np.array([Y[train & d.A[:, k], k].mean() if (train & d.A[:, k]).any() else 0.0 for k in range(d.k)])
    table: dict[str, np.ndarray] = {}
    for lab in np.unique(labels[train]):
        sel = train & (labels == lab)
        cnt = (d.A[sel]).sum(axis=0)
        means = np.where(cnt > 0, (Y[sel] * d.A[sel]).sum(axis=0) / np.maximum(cnt, 1), overall)
        table[lab] = means
    out = np.array([table.get(lab, overall) for lab in labels[rows]], dtype=np.float64)
    return out + 1e-9 * overall


def knn_scores(P: Prepared, rows: np.ndarray, k: int = 50) -> np.ndarray:
    """Mean outcome of the k nearest training queries by cosine (MMR-Bench `knn`)."""
    train = np.flatnonzero(P.masks["train"])
    k = min(k, len(train))
    X = l2_normalise(P.q[train].astype(np.float64))
    Yt, At = np.nan_to_num(P.data.Y[train]), P.data.A[train]
    fallback = np.array([Yt[At[:, j], j].mean() if At[:, j].any() else 0.0 for j in range(P.data.k)])
    out = np.zeros((len(rows), P.data.k))
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        sims = l2_normalise(P.q[r].astype(np.float64)) @ X.T
        nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        a = At[nn_idx]                                              # [b, k, K]
        y = Yt[nn_idx]
        cnt = a.sum(axis=1)
        out[s:s + 1024] = np.where(cnt > 0, (y * a).sum(axis=1) / np.maximum(cnt, 1), fallback)
    return out


def linear_mf_scores(P: Prepared, rows: np.ndarray) -> np.ndarray:
    """TruncatedSVD of the features, then ridge per model on its available rows (MMR-Bench `linearmf`)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.linear_model import Ridge

    train = np.flatnonzero(P.masks["train"])
    Xt = (P.q[train] - P.q_mean) / P.q_std
    r = min(128, len(train) - 1, Xt.shape[1] - 1)
    svd = TruncatedSVD(n_components=r, random_state=42).fit(Xt)
    Zt = svd.transform(Xt)
    Z = svd.transform((P.q[rows] - P.q_mean) / P.q_std)
    out = np.zeros((len(rows), P.data.k))
    for j in range(P.data.k):
        a = P.data.A[train, j]
        if a.sum() >= 2:
            out[:, j] = Ridge(alpha=1.0).fit(Zt[a], P.data.Y[train[a], j]).predict(Z)
    return out


def mlp_scores(P: Prepared, rows: np.ndarray, *, epochs: int = 50, seed: int = 20260308) -> np.ndarray:
    """D_q -> 256 -> 128 -> K ReLU MLP with masked MSE, Adam 1e-3, batch 32 (MMR-Bench `mlp`)."""
    import torch

    torch.manual_seed(seed)
    train = np.flatnonzero(P.masks["train"])
    X = torch.from_numpy(((P.q - P.q_mean) / P.q_std).astype(np.float32))
    Y = torch.from_numpy(np.nan_to_num(P.data.Y).astype(np.float32))
    A = torch.from_numpy(P.data.A.astype(np.float32))
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, P.data.k))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(train)
        for s in range(0, len(order), 32):
            b = torch.from_numpy(order[s:s + 32])
            err = ((net(X[b]) - Y[b]) ** 2) * A[b]
            loss = err.sum() / A[b].sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return net(X[torch.from_numpy(rows)]).numpy().astype(np.float64)
