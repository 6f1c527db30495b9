"""Baseline routers (method.md §9) on the same features, split, expected costs and policy.

Each baseline is fitted on training rows and returns a predicted-score matrix
`[n, K]`; `runtime.policy.choose` then routes every method the same way, by
argmax(score - lambda x c_hat) over the available models.
"""

from __future__ import annotations

import functools

import numpy as np

from ...runtime.features import l2_normalise
from ..train.trainer import TrainingSet


def best_single_scores(P: TrainingSet, rows: np.ndarray) -> np.ndarray:
    """Validation mean score per model, the same for every row: routes to the best available single model.

    The scores are shifted by a large constant so no lambda can move the choice (it ignores cost).
    """
    val = P.masks["val"]
    means = np.array(
        [P.data.Y[val & P.data.A[:, k], k].mean() if (val & P.data.A[:, k]).any() else -1.0 for k in range(P.data.k)]
    )
    return np.broadcast_to(means * 1e9, (len(rows), P.data.k)).copy()


def task_lookup_scores(P: TrainingSet, rows: np.ndarray) -> np.ndarray:
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


def knn_scores(P: TrainingSet, rows: np.ndarray, k: int = 50) -> np.ndarray:
    """Mean outcome of the k nearest training queries by cosine (MMR-Bench `knn`)."""
    train = np.flatnonzero(P.masks["train"])
    k = min(k, len(train))
    X = l2_normalise(P.q[train].astype(np.float64))
    Yt, At = np.nan_to_num(P.data.Y[train]), P.data.A[train]
    fallback = np.array([Yt[At[:, j], j].mean() if At[:, j].any() else 0.0 for j in range(P.data.k)])
    out = np.zeros((len(rows), P.data.k))
    for s in range(0, len(rows), 1024):
        r = rows[s : s + 1024]
        sims = l2_normalise(P.q[r].astype(np.float64)) @ X.T
        nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        a = At[nn_idx]  # [b, k, K]
        y = Yt[nn_idx]
        cnt = a.sum(axis=1)
        out[s : s + 1024] = np.where(cnt > 0, (y * a).sum(axis=1) / np.maximum(cnt, 1), fallback)
    return out


def linear_mf_scores(P: TrainingSet, rows: np.ndarray) -> np.ndarray:
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


BASELINE_SEED = 20260308  # the baselines' own seed: the bar must not move with the router's training seed


def single_threaded(fit):
    """Run a torch-trained baseline on one thread: summed in another order, its weights (and the bar it sets) would
    move with the machine's thread count (the MLP's score at lambda 0 moved by 0.02 on a 400-query demo run)."""

    @functools.wraps(fit)
    def run(*args, **kwargs):
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fit(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return run


@single_threaded
def mlp_scores(P: TrainingSet, rows: np.ndarray, *, epochs: int = 50, seed: int = BASELINE_SEED) -> np.ndarray:
    """D_q -> 256 -> 128 -> K ReLU MLP with masked MSE, Adam 1e-3, batch 32 (MMR-Bench `mlp`)."""
    import torch

    torch.manual_seed(seed)
    train = np.flatnonzero(P.masks["train"])
    X = torch.from_numpy(((P.q - P.q_mean) / P.q_std).astype(np.float32))
    Y = torch.from_numpy(np.nan_to_num(P.data.Y).astype(np.float32))
    A = torch.from_numpy(P.data.A.astype(np.float32))
    net = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, P.data.k),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(train)
        for s in range(0, len(order), 32):
            b = torch.from_numpy(order[s : s + 32])
            err = ((net(X[b]) - Y[b]) ** 2) * A[b]
            loss = err.sum() / A[b].sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return net(X[torch.from_numpy(rows)]).numpy().astype(np.float64)


@single_threaded
def irt_scores(
    P: TrainingSet, rows: np.ndarray, *, dim: int = 16, epochs: int = 60, patience: int = 5, seed: int = BASELINE_SEED
) -> np.ndarray:
    """Item-response routing (the MIRT family that leads RouterArena): P(y | q, m) = sigmoid(a(q) . theta_m -
    b(q)), with a(q) (discrimination, `dim` wide) and b(q) (difficulty) small heads on a shared 128-unit
    trunk over the standardised query features, and theta_m each model's ability vector. Masked binary
    cross-entropy (scores in [0, 1] are soft labels), Adam 1e-3, batch 64, early stopping on the
    validation loss (patience epochs), best epoch kept."""
    import torch

    torch.manual_seed(seed)
    train, val = np.flatnonzero(P.masks["train"]), np.flatnonzero(P.masks["val"])
    X = torch.from_numpy(((P.q - P.q_mean) / P.q_std).astype(np.float32))
    Y = torch.from_numpy(np.clip(np.nan_to_num(P.data.Y), 0, 1).astype(np.float32))
    A = torch.from_numpy(P.data.A.astype(np.float32))

    class IRT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 128), torch.nn.ReLU())
            self.a, self.b = torch.nn.Linear(128, dim), torch.nn.Linear(128, 1)
            self.theta = torch.nn.Parameter(0.1 * torch.randn(P.data.k, dim))

        def forward(self, x):
            h = self.trunk(x)
            return self.a(h) @ self.theta.T - self.b(h)

    def loss(net, idx):
        b = torch.from_numpy(idx)
        err = torch.nn.functional.binary_cross_entropy_with_logits(net(X[b]), Y[b], reduction="none") * A[b]
        return err.sum() / A[b].sum().clamp(min=1.0)

    net = IRT()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    best, best_state, bad = float("inf"), None, 0
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for s in range(0, len(order), 64):
            opt.zero_grad()
            loss(net, order[s : s + 64]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(loss(net, val)) if len(val) else 0.0
        if v < best - 1e-5:
            best, best_state, bad = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    with torch.no_grad():
        return torch.sigmoid(net(X[torch.from_numpy(rows)])).numpy().astype(np.float64)
