"""The routing policy (method.md §1), shared by `route`, `calibrate` and evaluation.

    k* = argmax over available k of (mu_tilde[k] - lam * c_hat[k]),  ties -> lowest index,
    -1 ("no route") when no model is available.

Computed in float64 outside the network; masked entries are -inf here, never a sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LrOnnxError, OptionError

LAMBDA_GRID = np.concatenate([[0.0], 10.0 ** (-4 + 8 * np.arange(50) / 49)])  # §8.1: 0 and 1e-4 .. 1e4


def utilities(scores: np.ndarray, cost_hat: np.ndarray, avail: np.ndarray, lam: float | np.ndarray) -> np.ndarray:
    """`[B, K]` float64 utilities, -inf where unavailable; `lam` is a scalar or `[B]`."""
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim == 1:
        lam = lam[:, None]
    u = np.asarray(scores, np.float64) - lam * np.asarray(cost_hat, np.float64)
    return np.where(np.asarray(avail, bool), u, -np.inf)


def choose(scores: np.ndarray, cost_hat: np.ndarray, avail: np.ndarray, lam: float | np.ndarray) -> np.ndarray:
    """Chosen model index per row (`[B]` int64), -1 where no model is available."""
    u = utilities(scores, cost_hat, avail, lam)
    if np.isnan(u).any() or np.isposinf(u).any():
        raise LrOnnxError("a utility is NaN or infinite: the scores or costs behind it are broken; refusing to route")
    choice = np.argmax(u, axis=1)  # first maximum = lowest index
    return np.where(np.asarray(avail, bool).any(axis=1), choice, -1).astype(np.int64)


# ----------------------------------------------------------------------------- exploration (issue 26)
THOMPSON_DRAWS = 256  # Monte Carlo draws behind a Thompson choice's propensity


@dataclass(frozen=True)
class Explore:
    """Opt-in exploration. `thompson[:S]` draws each candidate's score from N(mu_tilde, (S sigma / sqrt(1 + n))^2),
    n the outcomes the capability memory holds for the model among the query's searched neighbours (`Router.labelled`;
    0 without a memory), and picks the best draw: sigma is the spread of one outcome, sigma / sqrt(1 + n) that of the
    estimate, so a model the router has little data on near this query (a model just added, a query of a new kind)
    is tried more often, and one it has much on hardly. n counts data, not the reading's weights: a narrower reading
    (refresh may choose one) uses fewer of the neighbours, but the router has not learned less. `epsilon:P` picks a
    uniformly random available candidate with probability P, else the argmax."""

    kind: str  # "thompson" | "epsilon"
    value: float = 1.0  # thompson: the scale S on sigma; epsilon: P

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


EXPLORE_HELP = (
    "off, thompson[:S] (draws from mu_tilde +/- S sigma / sqrt(1 + n), S in (0, 4], default 1) or "
    "epsilon:P (P in (0, 1])"
)


def parse_explore(value: Any) -> Explore | None:
    """`None`/"off" -> no exploration; "thompson" or "thompson:0.25"; "epsilon:0.05"."""
    if value is None or isinstance(value, Explore):
        return value
    if not isinstance(value, str):
        raise OptionError(f"explore must be {EXPLORE_HELP}; got {value!r}")
    v = value.strip().lower()
    if v in ("", "off", "none", "greedy"):
        return None
    kind, colon, arg = v.partition(":")
    if kind not in ("thompson", "epsilon") or (not arg and (colon or kind == "epsilon")):
        raise OptionError(f"explore must be {EXPLORE_HELP}; got {value!r}")
    try:
        x = float(arg) if arg else 1.0
    except ValueError:
        raise OptionError(f"explore must be {EXPLORE_HELP}; got {value!r}") from None
    hi = 4.0 if kind == "thompson" else 1.0
    if not 0.0 < x <= hi:  # also refuses NaN
        raise OptionError(f"explore {kind}'s value must be in (0, {hi:g}], got {value!r}")
    return Explore(kind, x)


def explore_choice(
    scores: np.ndarray,
    sigma: np.ndarray,
    cost_hat: np.ndarray,
    avail: np.ndarray,
    lam: float | np.ndarray,
    explore: Explore,
    rng: np.random.Generator,
    evidence: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(choice `[B]`, propensity `[B]`): the chosen index drawn from the explore policy's own probabilities, and the
    probability it had, which off-policy estimates divide by. Unavailable models are never drawn. `evidence` `[B, K]`:
    Thompson's n, the labelled outcomes per model near each query (its spread shrinks with it)."""
    avail = np.asarray(avail, bool)
    B, K = avail.shape
    if explore.kind == "epsilon":
        greedy = choose(scores, cost_hat, avail, lam)
        n = avail.sum(axis=1)
        probs = np.where(avail, explore.value / np.maximum(n, 1)[:, None], 0.0)
        probs[np.arange(B), greedy] += 1.0 - explore.value
    else:
        z = rng.standard_normal((THOMPSON_DRAWS, B, K))
        sd = explore.value * np.asarray(sigma, np.float64)
        if evidence is not None:
            sd = sd / np.sqrt(1.0 + np.maximum(np.asarray(evidence, np.float64), 0.0))
        draws = utilities(
            np.asarray(scores, np.float64)[None] + sd[None] * z, cost_hat, avail, lam
        )  # [M, B, K]; lam scalar or [B]
        wins = np.argmax(draws, axis=2)  # [M, B]
        probs = np.stack([np.bincount(wins[:, b], minlength=K) for b in range(B)]) / THOMPSON_DRAWS
    choice = np.array(
        [rng.choice(K, p=probs[b] / probs[b].sum()) if avail[b].any() else -1 for b in range(B)], np.int64
    )
    prop = np.where(choice >= 0, probs[np.arange(B), np.maximum(choice, 0)], 1.0)
    return choice, prop


def explore_rows(
    explores: list[Explore | None],
    choice: np.ndarray,
    scores: np.ndarray,
    sigma: np.ndarray,
    cost_hat: np.ndarray,
    avail: np.ndarray,
    lam: np.ndarray,
    rng: np.random.Generator,
    evidence: np.ndarray | None = None,
) -> np.ndarray:
    """Requests of one batch that ask to explore, each by its own policy: their greedy `choice` replaced in place
    by `explore_choice`'s draw; returns every row's propensity (1 for the greedy rows)."""
    prop = np.ones(len(choice))
    for kind in {e for e in explores if e is not None}:
        rows = [i for i, e in enumerate(explores) if e == kind]
        choice[rows], prop[rows] = explore_choice(
            scores[rows],
            sigma[rows],
            cost_hat[rows],
            avail[rows],
            lam[rows],
            kind,
            rng,
            None if evidence is None else evidence[rows],
        )
    return prop
