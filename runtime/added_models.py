"""The answer for a pool model the network never trained on (added with `models add` after training; issue 21).

The network never learned such a model, and its correction of a column read from a profile of a few dozen labels
misleads, so the Router answers for it with the capability memory's estimate alone (`untrained_answer`). That
estimate is mostly its prior: few of its labelled queries are among any query's neighbours. `LocalPrior` makes the
prior a line in how hard the trained models find the query, fitted on its labels (`memory_estimates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .bounds import MAX_PRIOR_COEF
from .errors import BundleError
from .memory import P_CLIP
from .memory_reading import MAX_ROWS

if TYPE_CHECKING:  # annotations only
    from .memory import Memory


def sigmoid(x: Any) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, np.float64))))


@dataclass(frozen=True)
class LocalPrior:
    """An added model's expected score as a line in the query's local difficulty: the mean memory estimate of the
    trained models `over`. Fitted on its labelled queries at `models add` (`fit`), it replaces the model's global mean
    as the pseudo-count prior of its memory estimate (`memory_estimates`), so a few dozen labels give a per-query
    shape (issue 21: dynamath's strongest model held out and added back from 48 labels recovers 33% / 36% of the gap,
    score / nAUC, against 16% / 18% with the global mean; `benchmarks/newmodel.py`, 3 training seeds x 5 label
    draws)."""

    over: tuple[str, ...]
    intercept: float
    slope: float

    @classmethod
    def fit(
        cls, cols: np.ndarray, y: Any, names: Sequence[str], added: Sequence[bool], *, shrink: bool = True
    ) -> "LocalPrior | None":
        """Least squares of a new model's outcomes `y [n]` on the difficulty of its `n` labelled queries, read from
        their memory columns `cols [n, K, COLUMNS]` for the pool `names` it joins (`added`: the models added after
        training, left out of the difficulty). None without a trained model or a spread in difficulty to fit on.
        `shrink` False: the plain least-squares slope (for the benchmark's ablation)."""
        over = [n for n, a in zip(names, added) if not a]
        y = np.asarray(y, np.float64)
        x = difficulty(cols, [names.index(n) for n in over]) if over else np.zeros(len(y))
        xc, yc = x - x.mean(), y - y.mean()
        sxx = float(xc @ xc)
        if len(y) < 3 or sxx < 1e-12:
            return None
        slope = float(xc @ yc) / sxx
        # shrunk by the evidence for it (positive-part James-Stein on t^2): a slope a few dozen noisy labels barely
        # support moves little. Unshrunk, the line cost nAUC on vqarad and inkbench; shrunk it keeps most of its gain
        # on dynamath and blindtest (benchmarks/results/newmodel_real.json, `added_line_unshrunk`)
        var = float(((yc - slope * xc) ** 2).sum()) / (len(y) - 2) / sxx
        if shrink:
            slope *= max(0.0, 1.0 - var / slope**2) if slope != 0.0 else 0.0
        intercept = float(y.mean() - slope * x.mean())
        if max(abs(slope), abs(intercept)) > MAX_PRIOR_COEF:  # a line off a sliver of spread: no line at all
            return None
        return cls(tuple(over), intercept, slope)

    def to_dict(self) -> dict[str, Any]:
        return {"over": list(self.over), "intercept": round(self.intercept, 6), "slope": round(self.slope, 6)}

    @classmethod
    def parse(cls, d: Any, where: str) -> "LocalPrior":
        """From a manifest's `added_with.local_prior`; anything malformed is a BundleError naming `where`."""
        ok = isinstance(d, dict) and isinstance(d.get("over"), list) and all(isinstance(n, str) for n in d["over"])
        nums = [d.get(k) for k in ("intercept", "slope")] if ok else []
        if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
            raise BundleError(f"{where}: local_prior must be {{over: [names], intercept: number, slope: number}}")
        if not all(math.isfinite(v) and abs(v) <= MAX_PRIOR_COEF for v in nums):
            raise BundleError(f"{where}: local_prior's intercept and slope must be finite, at most {MAX_PRIOR_COEF:g}")
        return cls(tuple(d["over"]), float(nums[0]), float(nums[1]))

    @classmethod
    def of_pool(cls, models: Sequence[tuple[str, Any]], where: str) -> list["LocalPrior | None"]:
        """`[K]` the local prior of each pool model, given as (name, its `added_with` record or None), for those
        added with one (`added_with.local_prior`), else None."""
        out: list[LocalPrior | None] = []
        for name, added in models:
            lp = added.get("local_prior") if isinstance(added, dict) else None
            out.append(None if lp is None else cls.parse(lp, f"{where}: pool model {name!r}"))
        return out


def refit(
    mem: "Memory", model: str, names: Sequence[str], added: Sequence[bool], prior: Sequence[float]
) -> "LocalPrior | None":
    """`model`'s local prior fitted again on every row the memory holds an outcome of it on (its `models add` labels
    and the feedback since), each row's difficulty read from its neighbours without itself: a line set by a few dozen
    labels must move once the model's feedback says otherwise (refresh). None if the memory lacks the model."""
    if model not in mem.models:
        return None
    j = mem.models.index(model)
    rows = np.flatnonzero(mem.known[:, j])[-MAX_ROWS:]  # the newest: a search of each
    cols = mem.columns(None, list(names), prior=prior, e=mem.keys[rows], exclude=rows)
    return LocalPrior.fit(cols, mem.outcomes[rows, j], names, added)


def difficulty(cols: np.ndarray, over: Sequence[int]) -> np.ndarray:
    """`[B]` the mean memory estimate of pool models `over` (indices into the columns' K) for each query."""
    return np.asarray(sigmoid(cols[:, list(over), 0]).mean(axis=1))


def memory_estimates(
    cols: np.ndarray, names: Sequence[str], global_mean: np.ndarray, kappa: float, priors: Sequence["LocalPrior | None"]
) -> np.ndarray:
    """`[B, K]` each model's memory estimate (column 0 of `cols`, a probability); a model with a `LocalPrior` gets the
    estimate with its global mean `global_mean[k]` swapped for that prior's per-query value:
    est + kappa (prior - g) / (evidence + kappa). The trained models of `over` no longer in the pool are skipped."""
    est = sigmoid(cols[..., 0])
    for k, lp in enumerate(priors):
        over = [] if lp is None else [names.index(n) for n in lp.over if n in names]
        if lp is not None and over:
            p = np.clip(lp.intercept + lp.slope * difficulty(cols, over), P_CLIP, 1 - P_CLIP)
            ev = np.expm1(cols[:, k, 1].astype(np.float64))
            est[:, k] = np.clip(est[:, k] + kappa * (p - global_mean[k]) / (ev + kappa), P_CLIP, 1 - P_CLIP)
    return est


def untrained_answer(
    mu: np.ndarray, mu_tilde: np.ndarray, delta: np.ndarray, est: np.ndarray, untrained: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, mu_tilde, delta) `[B, K]` with the models in `untrained` `[K]` (added after training, `models add`) given
    the memory's estimate `est` `[B, K]` (`memory_estimates`) and no correction: the network never learned them, and
    its correction of a column read from a profile of a few dozen labels misleads (issue 21: holding out dynamath's
    strongest model and adding it back from 48 labels, routing recovered -67% of the gap with the network's column,
    +40% with the memory's on that label draw; `newmodel_diagnosis.json`). Unavailable entries (-1) stay as they are."""
    swap = untrained[None, :] & (mu >= 0)
    return (
        np.where(swap, est, mu).astype(mu.dtype),
        np.where(swap, est, mu_tilde).astype(mu_tilde.dtype),
        np.where(swap, 0.0, delta).astype(delta.dtype),
    )
