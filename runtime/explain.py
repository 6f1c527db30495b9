"""Why a decision came out as it did: the query's coverage (is it like the training queries?) and `--explain`'s
closest slices, memory estimates and margins. Functions of a `Router`, kept out of its routing path."""

from __future__ import annotations

import math
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from .decision import Candidate

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .router import Router


def coverage(
    router: "Router", q: np.ndarray, closeness: np.ndarray | None = None, sims: np.ndarray | None = None
) -> list[dict[str, Any] | None]:
    """Per row: the best cosine similarity of the query to the capability slices' centroids and, with a
    capability memory, the query's closeness to its labelled queries (`closeness`, from the memory columns).
    Out of coverage: a similarity below the bundle's threshold (set at export: the 1st percentile of the
    training queries' own similarities), or a closeness below `memory.MIN_CLOSENESS`, where every model's
    score is about its global mean: a query unlike what the router was trained on."""
    if router.coverage_threshold is None:
        return [None] * len(q)
    from .memory import MIN_CLOSENESS
    from .profiles import centroid_similarity

    best = (centroid_similarity(q, router.space.centroids) if sims is None else sims).max(axis=1)
    out: list[dict[str, Any] | None] = []
    for i, b in enumerate(best):
        far = closeness is not None and closeness[i] < MIN_CLOSENESS
        row = {"similarity": round(float(b), 4), "threshold": round(router.coverage_threshold, 4)}
        if closeness is not None:
            row["memory_closeness"] = round(float(closeness[i]), 4)
        out.append({**row, "out_of_coverage": bool(b < router.coverage_threshold or far)})
    return out


def explain(
    router: "Router",
    q: np.ndarray,
    cands: Sequence[Candidate],
    memory: np.ndarray | None = None,
    found: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """What drove the choice: the query's closest capability slices, what the capability memory's nearest
    labelled queries say about the top models, and the margins at the top."""
    from .profiles import centroid_similarity

    sims = centroid_similarity(q[None], router.space.centroids)
    top = np.argsort(-sims[0])[:3]
    pool = {p.name: p for p in router.pool}
    slices = [
        {
            "slice": int(s),
            "similarity": round(float(sims[0, s]), 4),
            "scores": {c.name: round(pool[c.name].raw_profile[1 + int(s)], 4) for c in cands[:3]},
        }
        for s in top
    ]
    margins = []
    for a, b in zip(cands, cands[1:3]):
        z = (a.mu_tilde - b.mu_tilde) / max(math.sqrt(a.sigma**2 + b.sigma**2), 1e-12)
        margins.append(
            {"between": [a.name, b.name], "utility_margin": round(a.utility - b.utility, 5), "z": round(z, 3)}
        )
    out: dict[str, Any] = {"closest_slices": slices, "pairwise_margins": margins}
    if memory is not None:  # [K, 3]: estimate logit, log1p(evidence), closeness
        mem = router.memory()
        assert mem is not None  # memory columns come only from a bundle with a memory
        assert found is not None  # the row's neighbours, as the Router searched them (score_features)
        source, st = mem.reading(found)[0]
        labelled = mem.labelled(found, router.names)[0]  # Thompson's n: the data near this query, per model
        out["memory"] = {
            "neighbours": st.k,
            **({"source": source} if source is not None else {}),
            "closeness": round(float(memory[0, 2]), 4),
            "estimates": {
                c.name: {
                    "estimate": round(float(1 / (1 + np.exp(-memory[k, 0]))), 4),
                    "evidence": round(float(np.expm1(memory[k, 1])), 2),
                    "labelled_nearby": int(labelled[k]),
                }
                for c in cands[:3]
                for k in [router.names.index(c.name)]
            },
        }
    return out
