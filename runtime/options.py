"""A request's routing options, resolved once into `RouteOptions` before any query is read: the pool mask, lambda
as a number, the per-query budget and the exploration policy. Every engine (CLI, batch, Ray, the gateway) takes that
object, so a bad option is one error at the start, never a failure halfway through a batch."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, TypedDict

import numpy as np

from .bounds import MAX_COST_USD, MAX_LAMBDA
from .decision import RouteOptions
from .errors import OptionError
from .policy import parse_explore
from .validate import names as valid_names, number


class RouteArgs(TypedDict, total=False):
    """The routing options `Router.route`, `route_many` and `options` take by keyword (defaults in `resolve_options`)."""

    models: str | Iterable[str] | None  # an allow-list of the pool's models
    exclude: str | Iterable[str] | None  # a deny-list
    lam: float | str | None  # a number, a preset name of the bundle, or None: its default
    max_cost: float | None  # USD per query: models whose expected cost for the query is above it are left out
    explain: bool  # attach what drove the choice
    explore: Any  # None, "thompson[:S]", "epsilon:P" or an `Explore`


def availability(
    names: list[str], models: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None
) -> np.ndarray:
    """The pool mask `[K]` from an allow-list and a deny-list (a budget is per query: see `Router.decide`). A name in
    the allow-list must be in the pool (a typo there would silently route elsewhere); excluding a model the
    pool does not have changes nothing (a gateway serving part of the pool answers the same requests)."""
    keep = np.ones(len(names), bool)
    allow, deny = valid_names(models, "models"), valid_names(exclude, "exclude")
    if allow:
        unknown = [n for n in allow if n not in names]
        if unknown:
            raise OptionError(f"unknown model(s) {', '.join(unknown)} in models; pool: {', '.join(names)}")
        keep &= np.isin(names, list(allow))
    if deny:
        keep &= ~np.isin(names, list(deny))
    if not keep.any():
        raise OptionError("every model is excluded: nothing left to route to")
    return keep


def resolve_lambda(lam: float | str | None, presets: Mapping[str, float], default: float) -> float:
    """None -> the bundle's default; a name -> that preset of the manifest (`quality`, `balanced`,
    `budget_50`, ...: points calibrated on validation at export); a number passes through."""
    if lam is None:
        return default
    if isinstance(lam, str):
        if lam not in presets:
            known = ", ".join(presets) or "none in this bundle"
            raise OptionError(f"unknown lambda preset '{lam}'; presets: {known}")
        return presets[lam]
    return number(lam, "lambda", hi=MAX_LAMBDA)


def resolve_options(
    names: list[str],
    presets: Mapping[str, float],
    default_lambda: float,
    *,
    models: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    lam: float | str | None = None,
    max_cost: float | None = None,
    explain: bool = False,
    explore: Any = None,
) -> RouteOptions:
    """One request's options checked once: the pool mask, lambda resolved to a number, the budget, exploration
    (`policy.parse_explore`: None, "thompson[:S]" or "epsilon:P")."""
    value = resolve_lambda(lam, presets, default_lambda)
    avail = availability(names, models, exclude)
    budget = None if max_cost is None else number(max_cost, "max_cost", hi=MAX_COST_USD)
    return RouteOptions(avail, value, bool(explain), budget, parse_explore(explore))
