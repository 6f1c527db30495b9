"""Building the capability memory (runtime/memory.py) from a training split, and choosing its settings.

    fit_memory(P, settings)      the retrieval space (PCA on the training queries) and every training row
    memory_columns(P, memory)    [N, K, 3] columns: training rows leave-one-out, all other rows against it
    select_settings(P)           k, kappa, tau, image weight and memory size, by routing on validation
    select_sources(P, ...)       on a merge (`SOURCE/label` labels), k, kappa, tau per source (runtime.memory_sources)

The memory holds the training rows (R_fit and R_cal): a memory of R_cal alone gave almost nothing
(issue 21). Each training row is estimated without itself, so the network learns from columns like the
ones it sees on a query it has never met. Only validation rows choose the settings.
"""

from __future__ import annotations

import numpy as np

from ...runtime.features import HAS_IMAGE_COL, TEXT_DIM
from ...runtime.memory import (
    COLUMNS,
    READING_GRID,
    Memory,
    MemorySettings,
    embed,
    grid_readings,
    reference_similarities,
)
from ...runtime.memory_sources import Sources, source_of

DIM = 128  # retrieval dimensions (<= runtime.memory.MAX_DIM)
PCA_SEED = 20260308
GRID = {"image_weight": (0.5, 1.0, 2.0), **READING_GRID}
SIZES = (0.5, 1.0)  # share of the training rows the memory keeps (checked at the chosen settings)
MIN_SOURCE_VAL = 100  # validation rows a source needs to choose its own setting


def memory_rows(P) -> np.ndarray:
    """The training rows with at least one outcome, in order: the memory's rows."""
    return np.flatnonzero(P.masks["train"] & P.data.A.any(axis=1))


def fit_projection(q: np.ndarray, image_weight: float, dim: int = DIM) -> np.ndarray:
    """`[D_e, d + 1]`: the centre (column 0) and the PCA directions of the weighted text+image vectors."""
    from sklearn.decomposition import PCA

    x = np.array(q[:, :HAS_IMAGE_COL], np.float32)
    x[:, TEXT_DIM:] *= image_weight
    dim = max(1, min(dim, len(x) - 1, x.shape[1]))
    pca = PCA(n_components=dim, svd_solver="randomized", random_state=PCA_SEED).fit(x)
    return np.concatenate([pca.mean_[:, None], pca.components_.T], axis=1).astype(np.float32)


def reference_similarity(keys: np.ndarray, k: int) -> float:
    """s_ref of a memory's keys read at k (`runtime.memory.reference_similarities`)."""
    return reference_similarities(keys, [k], blas=True)[0]


def fit_memory(
    P,
    settings: MemorySettings,
    size: float = 1.0,
    projection: np.ndarray | None = None,
    per_source: dict[str, MemorySettings] | None = None,
) -> Memory:
    """The memory of a run: training rows (a seeded share `size` of them) in the retrieval space; s_ref set here.
    `per_source`: a setting per source of a merge (`select_sources`; same image weight), each row's source kept."""
    rows = memory_rows(P)
    if size < 1.0:
        keep = max(1, int(round(size * len(rows))))
        rows = np.sort(np.random.default_rng(PCA_SEED).choice(rows, keep, replace=False))
    proj = fit_projection(P.q[rows], settings.image_weight) if projection is None else projection
    keys = embed(P.q[rows], proj[:, 0], proj[:, 1:], settings.image_weight)
    outcomes = np.where(P.data.A[rows], P.data.Y[rows], np.nan).astype(np.float32)
    s_ref = reference_similarity(keys, settings.k)
    st = MemorySettings(settings.k, settings.kappa, settings.tau, settings.image_weight, s_ref)
    sources = None
    if per_source:
        names = list(per_source)
        of_row = [names.index(x) if x in names else -1 for x in (source_of(P.data.dataset[i]) for i in rows)]
        sts = [
            MemorySettings(c.k, c.kappa, c.tau, c.image_weight, reference_similarity(keys, c.k))
            for c in per_source.values()
        ]
        sources = Sources(names, sts, of_row)
    mem = Memory(_f16(proj), _f16(keys), _f16(outcomes), P.data.model_names, st, sources)
    mem.rows = rows  # which data rows it holds (leave-one-out needs it)
    return mem


def _f16(a: np.ndarray) -> np.ndarray:
    """Rounded to fp16 and back: training sees exactly the numbers a bundle ships (fp16 files)."""
    return a.astype(np.float16).astype(np.float32)


def memory_columns(P, mem: Memory, rows: np.ndarray | None = None, batch: int = 2048) -> np.ndarray:
    """`[n, K, COLUMNS]` for `rows` (default all): a row held in the memory is estimated without itself."""
    rows = np.arange(len(P.q)) if rows is None else rows
    pos = np.full(len(P.q), -1)
    pos[mem.rows] = np.arange(len(mem.rows))
    out = np.zeros((len(rows), P.data.k, COLUMNS), np.float32)
    for s in range(0, len(rows), batch):
        r = rows[s : s + batch]
        self_pos = pos[r]
        if (self_pos >= 0).all():
            out[s : s + batch] = mem.columns(P.q[r], exclude=self_pos, blas=True)
        elif (self_pos < 0).all():
            out[s : s + batch] = mem.columns(P.q[r], blas=True)
        else:
            inn = self_pos >= 0
            out[s : s + batch][inn] = mem.columns(P.q[r[inn]], exclude=self_pos[inn], blas=True)
            out[s : s + batch][~inn] = mem.columns(P.q[r[~inn]], blas=True)
    return out


def estimate(cols: np.ndarray) -> np.ndarray:
    """The memory's own predicted score `[n, K]` from its columns (the memory-only router)."""
    return 1.0 / (1.0 + np.exp(-cols[..., 0]))


def routing_value(scores: np.ndarray, P, rows: np.ndarray) -> tuple[float, float]:
    """(score at lambda 0, nAUC) of routing `rows` by `scores` with the run's per-query costs: what selection
    compares, on validation only."""
    from ..evaluate import routing_metrics as M
    from ..evaluate.report import sweep

    d = P.data
    curve = sweep(scores, np.nan_to_num(d.Y[rows]), np.nan_to_num(d.C[rows]), d.A[rows], P.c_hat_rows(rows))
    return curve[0]["score"], M.nauc([(p["cost"], p["score"]) for p in curve])


def select_settings(P, progress: bool = False) -> tuple[MemorySettings, float, list[dict]]:
    """The memory settings and size with the best validation score at lambda 0 + nAUC (memory-only routing)."""
    val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
    trials: list[dict] = []
    best = None
    for iw in GRID["image_weight"]:
        mem = fit_memory(P, MemorySettings(k=max(GRID["k"]), image_weight=iw))
        found = best_on(P, mem, val, trials)
        if best is None or found[0] > best[0] + 1e-12:
            best = found
    assert best is not None
    st = best[1]
    size = 1.0
    for frac in SIZES:
        if frac == 1.0:
            continue
        mem = fit_memory(P, st, size=frac)
        s0, na = routing_value(estimate(mem.columns(P.q[val], blas=True)), P, val)
        trials.append({**mem.settings.to_dict(), "size": frac, "val_score_at_lambda0": s0, "val_nauc": na})
        if s0 + na > best[0] + 1e-12:
            best, size = (s0 + na, st), frac
    return MemorySettings(st.k, st.kappa, st.tau, st.image_weight), size, trials


def best_on(
    P, mem: Memory, rows: np.ndarray, trials: list[dict], size: float = 1.0, **tag
) -> tuple[float, MemorySettings]:
    """(validation score at lambda 0 + nAUC, settings) of the best k, kappa, tau of GRID on `rows`, read from `mem`
    (built at the grid's largest k, holding the share `size` of the training rows; its image weight is the one
    tried). Every trial is appended to `trials`, with `tag`."""
    e, best = mem.embed(P.q[rows]), None
    for st in grid_readings(mem.settings, mem.keys, blas=True):
        cols = Memory(mem.projection(), mem.keys, mem.outcomes, mem.models, st).columns(P.q[rows], e=e, blas=True)
        s0, na = routing_value(estimate(cols), P, rows)
        trials.append({**tag, **st.to_dict(), "size": size, "val_score_at_lambda0": s0, "val_nauc": na})
        if best is None or s0 + na > best[0] + 1e-12:
            best = (s0 + na, st)
    assert best is not None
    return best


def select_sources(P, settings: MemorySettings, size: float) -> tuple[dict[str, MemorySettings], list[dict]]:
    """On a merge, the k, kappa and tau of each source with MIN_SOURCE_VAL validation rows, chosen on its own rows
    (the image weight, hence the retrieval space, stays the one `select_settings` chose); {} unless two sources
    qualify. A query reads with its source's setting by neighbour vote (runtime.memory_sources)."""
    val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
    src = np.array([source_of(P.data.dataset[i]) or "" for i in val])
    names = sorted(n for n in set(src) - {""} if (src == n).sum() >= MIN_SOURCE_VAL)
    if len(names) < 2:
        return {}, []
    mem = fit_memory(P, MemorySettings(k=max(GRID["k"]), image_weight=settings.image_weight), size)
    out: dict[str, MemorySettings] = {}
    trials: list[dict] = []
    for name in names:
        st = best_on(P, mem, val[src == name], trials, size, source=name)[1]
        out[name] = MemorySettings(st.k, st.kappa, st.tau, st.image_weight)
    return out, trials
