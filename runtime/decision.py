"""What routing produces and takes: a decision with its candidates, the options of a request, a prepared query.

Plain frozen dataclasses, shared by the Router, the batch engines, the gateway and the decision log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .policy import Explore


@dataclass(frozen=True)
class Candidate:
    name: str
    mu: float
    sigma: float
    mu_tilde: float
    expected_cost: float
    utility: float


@dataclass(frozen=True)
class RouteOptions:
    """One request's validated options: which models may be chosen, lambda as a number, explain or not."""

    avail: np.ndarray
    lam: float
    explain: bool = False
    max_cost: float | None = None
    explore: Explore | None = None


@dataclass(frozen=True)
class Decision:
    """The chosen model (None if no model may be used) and every available candidate, best first."""

    model: str | None
    lam: float
    candidates: tuple[Candidate, ...]
    excluded: tuple[str, ...] = ()
    explain: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] | None = (
        None  # {similarity, threshold, out_of_coverage}; None if the bundle has no threshold
    )
    id: str | None = None  # set when the router logs its decisions (feedback names the decision by it)
    propensity: float = 1.0  # the probability the policy had of choosing `model` (below 1 only when exploring)

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"decision_id": self.id} if self.id else {}),
            "model": self.model,
            "lambda": self.lam,
            "excluded": list(self.excluded),
            "candidates": [c.__dict__ for c in self.candidates],
            "coverage": self.coverage,
            **({"propensity": self.propensity} if self.propensity < 1 else {}),
            **({"explain": self.explain} if self.explain else {}),
        }


@dataclass(frozen=True)
class Prepared:
    """A query after CPU preprocessing (`Router.prepare`): ready for the encoders."""

    question: str
    tensors: tuple[np.ndarray, ...]  # one [3, H, W] per image
    sizes: tuple[tuple[int, int], ...]  # each image's original size (per-query image-token costs)

    @property
    def meta(self) -> tuple[str, tuple[Any, ...]]:
        return self.question, self.sizes


def ranked_candidates(
    names: list[str], scores: dict[str, np.ndarray], cost: np.ndarray, c_hat: np.ndarray, avail: np.ndarray, lam: float
) -> tuple[Candidate, ...]:
    """One query's available models as candidates, best utility (mu_tilde - lambda c_hat) first; ties keep pool
    order. `scores`: the router's `[K]` mu, sigma and mu_tilde for this query."""
    mu, sigma, mt = scores["mu"], scores["sigma"], scores["mu_tilde"]
    cands = (
        Candidate(n, float(mu[k]), float(sigma[k]), float(mt[k]), float(cost[k]), float(mt[k] - lam * c_hat[k]))
        for k, n in enumerate(names)
        if avail[k]
    )
    return tuple(sorted(cands, key=lambda c: (-c.utility, names.index(c.name))))
