"""Capability memory: what each model scored on the labelled queries nearest this one (issue 21).

A profile says how a model does on a k-means slice; the memory says how it did on the k training
queries most like *this* query. For each (query, model) it gives three numbers the router graph reads
as extra `model_feat` columns (`COLUMNS`), and which alone already route well:

    estimate   = (sum_j w_j y_jm + kappa g_m) / (sum_j w_j + kappa)   over neighbours j with an outcome for m
    evidence   = sum_j w_j                                            (how many neighbours speak for m)
    closeness  = mean_j w_j                                           (how near the query is to the memory)

with w_j = min(1, exp((s_j - s_ref) / tau)): a neighbour as close as a typical training query's counts
fully, a far one hardly. A query unlike anything in the memory (a photo of a coffee cup against math
diagrams) thus falls back to each model's global mean g_m instead of inheriting its neighbours' extremes,
and `closeness` tells the graph to trust its own correction as little (`export.train.model.MemoryBlend`).

Retrieval is cosine in a reduced space: the text and image vectors of `q` (the side features, mostly
question length, are left out: they dominated the squared norm), the image block weighted, centred and
projected (PCA fitted on training queries, possibly stretched toward the outcomes:
`export.train.memory.aligned_projection`; one matrix either way) to `dim` <= 256 dimensions. Written
with MatMul, TopK and Gather only, so a graph can carry it; here it is numpy with `einsum` loops, never a
BLAS call, for the same reason as `profiles.centroid_similarity`: a woken OpenBLAS thread spins and takes a
core from ONNX Runtime. The bundle stores it in three `.npy` files (fp16), read through `Bundle.read` like
every file.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import BundleError
from .memory_sources import FILE as SOURCES_FILE, Sources, row_codes
from .features import HAS_IMAGE_COL, TEXT_DIM, l2_normalise

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .bundle import Bundle
    from .manifest import MemoryEntry

COLUMNS = 3  # estimate (as a logit), log1p(evidence), closeness
MAX_DIM = 256
MAX_ROWS = 1 << 22
FILES = {"projection": "memory_projection.npy", "keys": "memory_keys.npy", "outcomes": "memory_outcomes.npy"}
P_CLIP = 1e-3  # estimates are kept inside [P_CLIP, 1 - P_CLIP] before the logit
MIN_CLOSENESS = 0.1  # below it the query's neighbours count for little: its scores are the global means
# how a memory is read, chosen on validation at training (with the image weight) and on feedback at refresh
READING_GRID: dict[str, tuple[float, ...]] = {
    "k": (16, 32, 64, 128, 256),
    "kappa": (1.0, 3.0, 10.0),
    "tau": (0.03, 0.1),
}
S_REF_QUANTILE = 0.10  # s_ref: a memory row's mean similarity to its k nearest others, at this quantile, counts fully
S_REF_ROWS, S_REF_SEED = 2000, 20260308  # the rows s_ref is measured on (a seeded sample)


@dataclass(frozen=True)
class MemorySettings:
    """How the memory estimates: chosen on validation at training (`export.train.memory.select_settings`)."""

    k: int = 32  # neighbours
    kappa: float = 3.0  # pseudo-count of the model's global mean
    tau: float = 0.05  # similarity scale of the closeness weight
    image_weight: float = 1.0  # weight of the image block against the text block in the retrieval space
    s_ref: float = 0.5  # similarity at which a neighbour counts fully (set from the training queries)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemorySettings":
        return cls(int(d["k"]), float(d["kappa"]), float(d["tau"]), float(d["image_weight"]), float(d["s_ref"]))


def logit(p: Any) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), P_CLIP, 1 - P_CLIP)
    return np.asarray(np.log(p) - np.log1p(-p))


class Memory:
    """Labelled queries in the retrieval space, with each model's outcome on them (NaN: none recorded)."""

    def __init__(
        self,
        projection: np.ndarray,
        keys: np.ndarray,
        outcomes: np.ndarray,
        models: list[str],
        settings: MemorySettings,
        sources: Sources | None = None,
    ):
        self.center = np.ascontiguousarray(projection[:, 0], np.float32)  # [D_e]
        self.proj = np.ascontiguousarray(projection[:, 1:], np.float32)  # [D_e, d]
        self.keys = np.ascontiguousarray(keys, np.float32)  # [N, d], unit rows
        self.outcomes = np.asarray(outcomes, np.float32)  # [N, K_mem]
        self.models = list(models)
        self.settings = settings
        self.sources = sources  # a setting per source of a merged set, by neighbour vote (runtime.memory_sources)
        self.known = np.isfinite(self.outcomes)  # [N, K_mem]
        self.values = np.where(self.known, self.outcomes, 0.0).astype(np.float32)
        n = self.known.sum(axis=0)
        self.global_mean = np.where(n > 0, self.values.sum(axis=0) / np.maximum(n, 1), 0.5)  # [K_mem]
        self.rows: np.ndarray | None = None  # training only: the data rows held (for leave-one-out)

    @property
    def search_k(self) -> int:
        """The neighbours a search returns: the most any setting reads (memory.onnx's k)."""
        return max(self.settings.k, self.sources.k if self.sources is not None else 0)

    @property
    def dim(self) -> int:
        return int(self.keys.shape[1])

    def __len__(self) -> int:
        return len(self.keys)

    def projection(self) -> np.ndarray:
        """`[D_e, d + 1]`: the centre (column 0), then the directions."""
        return np.concatenate([self.center[:, None], self.proj], axis=1)

    # ------------------------------------------------------------------ retrieval
    def embed(self, q: np.ndarray) -> np.ndarray:
        """`[B, d]` unit vectors of raw query features `q [B, D_q]` in the retrieval space."""
        return embed(q, self.center, self.proj, self.settings.image_weight)

    def neighbours(
        self, e: np.ndarray, k: int, exclude: np.ndarray | None = None, blas: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices) `[B, k']` of the k nearest memory rows, k' = min(k, N); `exclude` `[B]` drops one
        row per query (the query itself, when training rows are estimated leave-one-out). `blas` for training only."""
        sims = (e @ self.keys.T) if blas else np.einsum("bd,nd->bn", e, self.keys)
        if exclude is not None:
            sims[np.arange(len(e)), exclude] = -np.inf
        k = max(1, min(k, len(self.keys) - (exclude is not None)))
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(sims, idx, axis=1), idx

    def columns(
        self,
        q: np.ndarray | None,
        models: list[str] | None = None,
        *,
        prior: Sequence[float] | None = None,
        exclude: np.ndarray | None = None,
        blas: bool = False,
        e: np.ndarray | None = None,
        found: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """`[B, K, COLUMNS]` memory columns for the given pool (default: the memory's own models, in order). A pool
        model the memory holds no outcome for gets its `prior` (the profile's overall score; 0.5 if not given) as its
        estimate, with no evidence. `found`: the (similarities, indices) of the neighbours, when a graph
        (`memory.onnx`) has searched already; else they are searched here. With `sources`, each query reads with
        the setting of the source its nearest rows vote for."""
        if found is None:
            emb = self.embed(q) if e is None else e  # type: ignore[arg-type]
            found = self.neighbours(emb, self.search_k, exclude, blas)
        cols = list(range(len(self.models))) if models is None else self.pool_columns(models)
        if self.sources is None:  # a search may return more than k (memory.onnx keeps its k after a refresh)
            return self._columns(*nearest(found, self.settings.k), self.settings, cols, prior)
        sims, idx, code = self._voted(found)
        out = np.zeros((len(idx), len(cols), COLUMNS), np.float32)
        for c in np.unique(code):
            st = self.sources.settings[c] if c >= 0 else self.settings
            b = code == c
            out[b] = self._columns(sims[b, : st.k], idx[b, : st.k], st, cols, prior)
        return out

    def _voted(self, found: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, indices) nearest first, and each query's source by vote (-1: none; needs `sources`)."""
        assert self.sources is not None
        sims, idx = nearest_first(found)
        return sims, idx, self.sources.vote(idx)

    def pool_columns(self, models: Sequence[str]) -> list[int]:
        """Each pool model's column in the memory's outcomes, -1 for a model it holds no outcome of."""
        return [self.models.index(m) if m in self.models else -1 for m in models]

    def labelled(self, found: tuple[np.ndarray, np.ndarray], models: list[str]) -> np.ndarray:
        """`[B, K]` how many rows of a search result hold an outcome for each pool model (0 for a model the memory
        lacks): the data the router has on the model near this query, whatever reading weighs it (Thompson's n)."""
        cols = self.pool_columns(models)
        out = np.zeros((len(found[1]), len(cols)), np.float64)
        have = [i for i, c in enumerate(cols) if c >= 0]
        if have:
            out[:, have] = self.known[found[1]][..., [cols[i] for i in have]].sum(axis=1)
        return out

    def reading(self, found: tuple[np.ndarray, np.ndarray]) -> list[tuple[str | None, MemorySettings]]:
        """Per query of the search result `found`: the source its neighbours vote for (None: none, or no sources)
        and the setting it is read with (`--explain` says which)."""
        if self.sources is None:
            return [(None, self.settings)] * len(found[0])
        src = self.sources
        return [(src.names[c], src.settings[c]) if c >= 0 else (None, self.settings) for c in self._voted(found)[2]]

    def _columns(
        self, sims: np.ndarray, idx: np.ndarray, s: MemorySettings, cols: list[int], prior: Sequence[float] | None
    ) -> np.ndarray:
        """`Memory.columns` of the neighbours (sims, idx) `[B, k]` read with the setting `s`."""
        w = np.minimum(1.0, np.exp((np.maximum(sims, -1.0) - s.s_ref) / s.tau)).astype(np.float32)  # [B, k]
        out = np.zeros((len(idx), len(cols), COLUMNS), np.float32)
        out[..., 0] = logit(np.full(len(cols), 0.5) if prior is None else prior)
        out[..., 2] = w.mean(axis=1, keepdims=True)
        pos = [i for i, c in enumerate(cols) if c >= 0]
        if pos:
            have = [cols[i] for i in pos]
            kn = self.known[idx][..., have].astype(np.float32)  # [B, k, K'] (rows first: small)
            ev = np.einsum("bk,bkm->bm", w, kn)
            ys = np.einsum("bk,bkm->bm", w, self.values[idx][..., have])
            est = (ys + s.kappa * self.global_mean[have]) / (ev + s.kappa)
            out[:, pos, 0] = logit(est)
            out[:, pos, 1] = np.log1p(ev)
        return out

    # ------------------------------------------------------------------ growth (models add, feedback)
    def with_rows(self, q: np.ndarray | None, model: str, y: Any, keys: np.ndarray | None = None) -> "Memory":
        """A new memory with labelled rows for `model` appended (other models: no outcome on them); a model new to
        the memory gets its own column (no outcome on the old rows). The retrieval space is unchanged. The rows are
        raw query features `q`, or their `keys` already in the retrieval space."""
        new = self.embed(q) if keys is None else np.asarray(keys, np.float32)  # type: ignore[arg-type]
        return self.with_outcomes(new, np.asarray(y, np.float32)[:, None], [model])

    def with_outcomes(self, keys: np.ndarray, outcomes: np.ndarray, models: list[str]) -> "Memory":
        """A new memory with rows appended: their `keys [n, d]` in the retrieval space and `outcomes [n, len(models)]`
        (NaN: none); a model new to the memory gets its own column, with no outcome on the old rows."""
        names = self.models + [m for m in models if m not in self.models]
        out = np.full((len(self.keys) + len(keys), len(names)), np.nan, np.float32)
        out[: len(self.keys), : len(self.models)] = self.outcomes
        for j, m in enumerate(models):
            out[len(self.keys) :, names.index(m)] = outcomes[:, j]
        return Memory(
            self.projection(),
            np.concatenate([self.keys, np.asarray(keys, np.float32)]),
            out,
            names,
            self.settings,
            None if self.sources is None else self.sources.grown(len(keys)),
        )

    def without_models(self, drop: Any) -> "Memory":
        """A memory without these models' columns (and without rows left with no outcome at all)."""
        keep = [i for i, m in enumerate(self.models) if m not in set(drop)]
        rows = np.isfinite(self.outcomes[:, keep]).any(axis=1)
        return Memory(
            self.projection(),
            self.keys[rows],
            self.outcomes[rows][:, keep],
            [self.models[i] for i in keep],
            self.settings,
            None if self.sources is None else self.sources.take(rows),
        )

    # ------------------------------------------------------------------ files
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a bundle stores, fp16 (the projection's first column is the centre; `sources` with them)."""
        out = {
            "projection": self.projection().astype(np.float16),
            "keys": self.keys.astype(np.float16),
            "outcomes": self.outcomes.astype(np.float16),
        }
        if self.sources is not None:
            out["sources"] = self.sources.array()
        return out

    def manifest_entry(self) -> dict[str, Any]:
        entry = {
            "files": {**FILES, **({"sources": SOURCES_FILE} if self.sources is not None else {})},
            "models": self.models,
            "rows": len(self.keys),
            "dim": self.dim,
            "settings": self.settings.to_dict(),
        }
        if self.sources is not None:
            entry["sources"] = self.sources.entry()
        return entry

    def write(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the files into `folder` (a bundle being built); returns the manifest entry."""
        entry = self.manifest_entry()
        for key, a in self.arrays().items():
            (Path(folder) / entry["files"][key]).write_bytes(npy_bytes(a))
        return entry

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "Memory":
        """Read the memory a manifest lists (`manifest.memory`), hash-checked, shapes checked against the entry."""
        m = bundle.manifest.memory
        assert m is not None, "the bundle has no memory (check Router.has_memory first)"
        return cls.from_files({key: bundle.read(fname) for key, fname in m.files.items()}, m, str(bundle.path))

    @classmethod
    def from_files(cls, data: dict[str, Any], entry: "MemoryEntry", where: str) -> "Memory":
        """The memory from its three `.npy` files' bytes and its manifest entry (`MemoryEntry`), every shape and
        value checked."""
        arrays = {key: _npy(data[key], f"{where}/{entry.files[key]}") for key in FILES}
        rows, dim, K = entry.rows, entry.dim, len(entry.models)
        want = {"projection": (HAS_IMAGE_COL, dim + 1), "keys": (rows, dim), "outcomes": (rows, K)}
        for key, shape in want.items():
            if arrays[key].shape != shape:
                raise BundleError(
                    f"{where}: {entry.files[key]} has shape {list(arrays[key].shape)}, the "
                    f"manifest's memory entry gives {list(shape)}"
                )
        if not np.isfinite(arrays["projection"]).all() or not np.isfinite(arrays["keys"]).all():
            raise BundleError(f"{where}: the memory's projection or keys hold non-finite numbers")
        o = arrays["outcomes"]
        if np.any((o < 0) | (o > 1)):
            raise BundleError(f"{where}: the memory's outcomes must lie in [0, 1] (or be NaN: no outcome)")
        sources = None
        if entry.sources is not None:
            names, settings = zip(*entry.sources)
            src = _npy(data["sources"], f"{where}/{entry.files['sources']}")
            if src.shape != (rows, 1):
                raise BundleError(f"{where}: {entry.files['sources']} has shape {list(src.shape)}, want [{rows}, 1]")
            sources = Sources(names, settings, row_codes(src, len(names), where))
        return cls(arrays["projection"], arrays["keys"], o, list(entry.models), entry.settings, sources)


def global_means(mem: "Memory | None", names: Sequence[str], priors: Sequence[float]) -> np.ndarray:
    """`[K]` each model's mean score over the labelled queries it is known from: its memory rows where `mem` holds it,
    else its profile's overall score (`priors`). Out of coverage, estimates fall back to it."""
    out = np.array(priors, np.float64)
    for k, n in enumerate(names):
        if mem is not None and n in mem.models:
            out[k] = mem.global_mean[mem.models.index(n)]
    return out


def nearest_first(found: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A search result (similarities, indices) `[B, k']` ordered by similarity, nearest first (ties: as found)."""
    order = np.argsort(-found[0], axis=1, kind="stable")
    return np.take_along_axis(found[0], order, 1), np.take_along_axis(found[1], order, 1)


def nearest(found: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar of a search result `[B, k']`: as it is when it has no more than k, else nearest first."""
    if found[0].shape[1] <= k:
        return found
    sims, idx = nearest_first(found)
    return sims[:, :k], idx[:, :k]


def reference_similarities(keys: np.ndarray, ks: Sequence[int], blas: bool = False) -> list[float]:
    """s_ref for each k of `ks`: the S_REF_QUANTILE quantile of the memory rows' mean similarity to their k nearest
    others (on a seeded sample of S_REF_ROWS rows). `blas` for training only."""
    pick = np.random.default_rng(S_REF_SEED).choice(len(keys), min(S_REF_ROWS, len(keys)), replace=False)
    sims = (keys[pick] @ keys.T) if blas else np.einsum("bd,nd->bn", keys[pick], keys)
    sims[np.arange(len(pick)), pick] = -np.inf
    out = []
    for k in ks:
        k = max(1, min(k, len(keys) - 1))
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        out.append(float(np.quantile(top.mean(axis=1), S_REF_QUANTILE)))
    return out


def grid_readings(
    base: MemorySettings, keys: np.ndarray, ks: Sequence[int] | None = None, blas: bool = False
) -> list[MemorySettings]:
    """Every (k, kappa, tau) of READING_GRID (k among `ks`, default the grid's) as settings of the memory with `keys`,
    s_ref following k; k outermost, then kappa, then tau. The image weight stays `base`'s."""
    ks = [int(k) for k in READING_GRID["k"]] if ks is None else list(ks)
    return [
        replace(base, k=k, kappa=kappa, tau=tau, s_ref=s_ref)
        for k, s_ref in zip(ks, reference_similarities(keys, ks, blas))
        for kappa in READING_GRID["kappa"]
        for tau in READING_GRID["tau"]
    ]


def block_weights(image_weight: float) -> np.ndarray:
    """`[D_e]` per-dimension weight of the retrieval space: 1 on the text vector, `image_weight` on the image vector
    (numpy here, constants in memory.onnx and fused.onnx)."""
    w = np.ones(HAS_IMAGE_COL, np.float32)
    w[TEXT_DIM:] = image_weight
    return w


def embed(q: np.ndarray, center: np.ndarray, proj: np.ndarray, image_weight: float) -> np.ndarray:
    """The retrieval space: [text | image_weight x image] of `q`, centred, projected, L2-normalised."""
    x = np.asarray(q[:, :HAS_IMAGE_COL], np.float32) * block_weights(image_weight) - center
    return l2_normalise(np.einsum("bd,dr->br", x, proj)).astype(np.float32)


def _npy(data: bytes, where: str) -> np.ndarray:
    """A `.npy` file's array: fp16 or fp32, two dimensions, no pickle, no more rows than MAX_ROWS."""
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BundleError(f"{where}: not a numpy array file ({e})") from None
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float16, np.float32) or a.ndim != 2 or a.shape[0] > MAX_ROWS:
        raise BundleError(
            f"{where}: expected a 2-d float16/float32 array, got {getattr(a, 'dtype', type(a))} "
            f"{list(getattr(a, 'shape', []))}"
        )
    return a.astype(np.float32)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
