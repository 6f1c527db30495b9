"""Building the capability memory (runtime/memory.py) from a training split, and choosing its settings.

    fit_memory(P, settings)      the retrieval space (PCA on the training queries) and every training row
    memory_columns(P, memory)    [N, K, 3] columns: training rows leave-one-out, all other rows against it
    select_settings(P)           k, kappa, tau, image weight, alignment and memory size, by routing on validation
    select_sources(P, ...)       on a merge (`SOURCE/label` labels), k, kappa, tau per source (runtime.memory_sources)
    choose_memory(P)             both, the chosen memory attached to P (what `train` calls)

The memory holds the training rows (R_fit and R_cal): a memory of R_cal alone gave almost nothing
(issue 21). Each training row is estimated without itself, so the network learns from columns like the
ones it sees on a query it has never met. Only validation rows choose the settings.

The PCA space keeps the directions that vary most, whether or not they say which model succeeds. The space may
be stretched along the directions that predict the outcomes (`aligned_projection`: a ridge from the keys to every
model's outcome, the metric I + a B B^T), still one linear map, so the bundle and its graphs do not change. The
stretch is kept only where it routes validation better by the paired test `train` chooses the modality with
(`modality.Z`): on small sets it chases noise (`benchmarks/results/memory_space.json`).
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
    nearest_first,
    reference_similarities,
)
from ...runtime.memory_sources import Sources, source_of

DIM = 128  # retrieval dimensions (<= runtime.memory.MAX_DIM)
PCA_SEED = 20260308
GRID = {"image_weight": (0.5, 1.0, 2.0), **READING_GRID}
SIZES = (0.5, 1.0)  # share of the training rows the memory keeps (checked at the chosen settings)
ALIGN = (0.5, 1.0, 2.0, 4.0, 8.0)  # strengths of the outcome-aligned stretch tried (0: the PCA space alone)
RIDGE_PENALTIES = (0.01, 0.1, 1.0, 10.0)  # the keys-to-outcomes ridge's penalty, by 5-fold error on training rows
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


def outcome_ridge(keys: np.ndarray, Y: np.ndarray, A: np.ndarray) -> np.ndarray:
    """`[d, K]` ridge weights from the unit keys to each model's outcome on its known rows (an unpenalised bias per
    model, dropped), the penalty chosen by 5-fold squared error on these rows."""

    def fit(rows: np.ndarray, penalty: float) -> np.ndarray:
        X = np.concatenate([keys[rows], np.ones((len(rows), 1))], axis=1).astype(np.float64)
        W = np.zeros((X.shape[1], Y.shape[1]))
        R = penalty * np.eye(X.shape[1])
        R[-1, -1] = 0.0
        for j in range(Y.shape[1]):
            a = A[rows, j]
            if a.sum() >= 2:
                W[:, j] = np.linalg.solve(X[a].T @ X[a] + R, X[a].T @ Y[rows[a], j])
        return W

    fold = np.random.default_rng(PCA_SEED).integers(0, 5, len(keys))

    def cv_error(penalty: float) -> float:
        err = 0.0
        for f in range(5):
            W, held = fit(np.flatnonzero(fold != f), penalty), np.flatnonzero(fold == f)
            pred = np.concatenate([keys[held], np.ones((len(held), 1))], axis=1) @ W
            err += float(np.sum(A[held] * (pred - Y[held]) ** 2))
        return err

    return fit(np.arange(len(keys)), min(RIDGE_PENALTIES, key=cv_error))[:-1]


def aligned_projection(proj: np.ndarray, keys: np.ndarray, Y: np.ndarray, A: np.ndarray, strength: float) -> np.ndarray:
    """`proj` `[D_e, d + 1]` with its directions carried through the square root of `I + strength c B B^T` (B: the
    `outcome_ridge` of `keys`, c scaling the stretch to the keys' own spread, so strength 1 weighs the two alike)."""
    B = outcome_ridge(keys, np.nan_to_num(Y), A)
    cov = np.cov(keys, rowvar=False)
    c = float(np.trace(cov)) / max(float(np.trace(B.T @ cov @ B)), 1e-12)
    vals, vecs = np.linalg.eigh(np.eye(len(B)) + strength * c * (B @ B.T))
    root = (vecs * np.sqrt(np.maximum(vals, 0.0))) @ vecs.T
    return np.concatenate([proj[:, :1], proj[:, 1:] @ root], axis=1).astype(np.float32)


def reference_similarity(keys: np.ndarray, k: int) -> float:
    """s_ref of a memory's keys read at k (`runtime.memory.reference_similarities`)."""
    return reference_similarities(keys, [k], blas=True)[0]


def fit_memory(
    P,
    settings: MemorySettings,
    size: float = 1.0,
    projection: np.ndarray | None = None,
    per_source: dict[str, MemorySettings] | None = None,
    align: float = 0.0,
) -> Memory:
    """The memory of a run: training rows (a seeded share `size` of them) in the retrieval space; s_ref set here.
    `per_source`: a setting per source of a merge (`select_sources`; same image weight), each row's source kept.
    `projection`: the PCA space (`fit_projection` of these rows, fitted here if not given); `align`: the strength of
    its outcome-aligned stretch (`aligned_projection`; 0: none)."""
    rows = memory_rows(P)
    if size < 1.0:
        keep = max(1, int(round(size * len(rows))))
        rows = np.sort(np.random.default_rng(PCA_SEED).choice(rows, keep, replace=False))
    proj = fit_projection(P.q[rows], settings.image_weight) if projection is None else projection
    keys = embed(P.q[rows], proj[:, 0], proj[:, 1:], settings.image_weight)
    if align > 0:
        proj = aligned_projection(proj, keys, P.data.Y[rows], P.data.A[rows], align)
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


def select_settings(P, align: bool = True) -> tuple[MemorySettings, float, float, list[dict]]:
    """The memory settings, alignment and size with the best validation score at lambda 0 + nAUC (memory-only
    routing). An aligned space (tried unless `align` is False) is kept only if it beats the best PCA space by the
    paired test (`aligned_wins`)."""
    val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
    trials: list[dict] = []
    best: dict[bool, tuple[float, MemorySettings, float]] = {}
    for iw in GRID["image_weight"]:
        pca = fit_projection(P.q[memory_rows(P)], iw)
        for strength in (0.0, *(ALIGN if align else ())):
            mem = fit_memory(P, MemorySettings(k=max(GRID["k"]), image_weight=iw), projection=pca, align=strength)
            value, st = best_on(P, mem, val, trials, align=strength)
            kind = strength > 0
            if kind not in best or value > best[kind][0] + 1e-12:
                best[kind] = (value, st, strength)
    aligned = True in best and aligned_wins(P, val, best[False], best[True], trials)
    value, st, strength = best[aligned]
    size = 1.0
    for frac in SIZES:
        if frac == 1.0:
            continue
        mem = fit_memory(P, st, size=frac, align=strength)
        s0, na = routing_value(estimate(mem.columns(P.q[val], blas=True)), P, val)
        trials.append(
            {**mem.settings.to_dict(), "align": strength, "size": frac, "val_score_at_lambda0": s0, "val_nauc": na}
        )
        if s0 + na > value + 1e-12:
            value, size = s0 + na, frac
    return MemorySettings(st.k, st.kappa, st.tau, st.image_weight), size, strength, trials


def choose_memory(P, per_source: bool = True, align: bool = True) -> list[dict]:
    """Choose the memory's settings on validation (`select_settings`, then `select_sources` on a merge unless
    `per_source` is False) and attach it to `P`; returns every trial, for the run's memory_selection.json."""
    settings, size, strength, trials = select_settings(P, align=align)
    sources, source_trials = select_sources(P, settings, size, strength) if per_source else ({}, [])
    P.attach_memory(settings, size, sources, strength)
    return trials + source_trials


def config_entry(P, blend: dict | None) -> dict:
    """config.json's `memory` entry for `P`'s memory: what `trainer.attach_run_memory` rebuilds it from."""
    mem = P.memory
    entry = {
        "settings": mem.settings.to_dict(),
        "size": P.memory_size,
        "align": P.memory_align,
        "rows": len(mem),
        "blend": blend,
    }
    if mem.sources is not None:
        entry["per_source"] = dict(zip(mem.sources.names, (st.to_dict() for st in mem.sources.settings)))
    return entry


def aligned_wins(P, val: np.ndarray, pca: tuple, aligned: tuple, trials: list[dict]) -> bool:
    """Whether the best aligned memory (value, settings, strength) routes validation at lambda 0 better than the best
    PCA one by the paired one-sided test (`modality.Z`); the test is appended to `trials`."""
    from ...runtime.policy import choose
    from .modality import Z, paired_z

    got = []
    for _, st, align in (pca, aligned):
        est = estimate(fit_memory(P, st, align=align).columns(P.q[val], blas=True))
        pick = choose(est, P.c_hat_rows(val), P.data.A[val], 0.0)  # every validation row has a model available
        got.append(np.nan_to_num(P.data.Y[val])[np.arange(len(val)), pick])
    z = paired_z(got[1] - got[0])
    trials.append({"aligned_against_pca": {"align": aligned[2], "z": round(z, 4), "z_needed": round(Z, 4)}})
    return z > Z


def best_on(
    P, mem: Memory, rows: np.ndarray, trials: list[dict], size: float = 1.0, **tag
) -> tuple[float, MemorySettings]:
    """(validation score at lambda 0 + nAUC, settings) of the best k, kappa, tau of GRID on `rows`, read from `mem`
    (built at the grid's largest k, holding the share `size` of the training rows; its image weight is the one
    tried). Every trial is appended to `trials`, with `tag`. One search serves every reading: each takes its k
    nearest of the grid's largest k."""
    found, best = nearest_first(mem.neighbours(mem.embed(P.q[rows]), max(GRID["k"]), blas=True)), None
    reader = Memory(mem.projection(), mem.keys, mem.outcomes, mem.models, mem.settings)
    for st in grid_readings(mem.settings, mem.keys, blas=True):
        reader.settings = st
        s0, na = routing_value(estimate(reader.columns(None, found=found)), P, rows)
        trials.append({**tag, **st.to_dict(), "size": size, "val_score_at_lambda0": s0, "val_nauc": na})
        if best is None or s0 + na > best[0] + 1e-12:
            best = (s0 + na, st)
    assert best is not None
    return best


def select_sources(
    P, settings: MemorySettings, size: float, align: float = 0.0
) -> tuple[dict[str, MemorySettings], list[dict]]:
    """On a merge, the k, kappa and tau of each source with MIN_SOURCE_VAL validation rows, chosen on its own rows
    (the image weight and alignment, hence the retrieval space, stay the ones `select_settings` chose); {} unless
    two sources qualify. A query reads with its source's setting by neighbour vote (runtime.memory_sources)."""
    val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
    src = np.array([source_of(P.data.dataset[i]) or "" for i in val])
    names = sorted(n for n in set(src) - {""} if (src == n).sum() >= MIN_SOURCE_VAL)
    if len(names) < 2:
        return {}, []
    mem = fit_memory(P, MemorySettings(k=max(GRID["k"]), image_weight=settings.image_weight), size, align=align)
    out: dict[str, MemorySettings] = {}
    trials: list[dict] = []
    for name in names:
        st = best_on(P, mem, val[src == name], trials, size, source=name)[1]
        out[name] = MemorySettings(st.k, st.kappa, st.tau, st.image_weight)
    return out, trials
