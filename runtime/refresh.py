"""Refresh: a new bundle that has learned from its decision log's feedback, without retraining (issue 26).

    lr-onnx refresh --bundle B --log DIR --out B2

Numpy and ONNX Runtime only, seconds for thousands of records. What it changes in the copy B2 (B is never touched):

- **Capability memory**: each labelled decision becomes a memory row, its logged key (the query as the router saw
  it) with the observed outcome of each model that has feedback, NaN for the others. The memory estimates a model
  from the query's neighbours, so it is conditional on the query: which model was chosen does not bias it, and
  its rows are not reweighted.
- **How the memory is read**: k, kappa and tau are chosen again on the feedback rows, and replace the current ones
  only if they estimate the logged outcomes better by a margin corrected for the readings tried (2.4-2.9
  standard errors; runtime/memory_reading.py): the setting validation chose at training fits the traffic of then,
  and after a shift a narrower reading lets the new rows speak.
- **Profiles**: each model's overall and per-slice scores move towards what the feedback observed, weighted by
  how much the bundle already knew (its profile's evidence, per slice n / S + the profile shrinkage). These are
  averages over queries, so the off-policy records are weighted by inverse propensity (self-normalised, the
  weight capped at `MAX_IPS_WEIGHT`): a model chosen mostly where it looked good would otherwise look better
  than it is. A model added with `models add` and then explored gets a real profile this way. Observed costs
  move the expected cost the same way.
- **An added model's local prior** (the line in query difficulty its estimate falls back to, fitted on its few
  `models add` labels) is fitted again on all its memory rows once feedback on it arrives (`added_models.refit`):
  a line drawn through 24 labels must move when the stream says otherwise.

Only records whose retrieval space matches the bundle's (`Router.log_ids`: the same memory projection and
slices, which a refresh keeps) are used, and only feedback newer than the bundle's last refresh, so refreshing
B2 again from the same log adds nothing twice. The report (`report.json` and a PNG over time) gives each model's
predicted against observed score, the share of out-of-coverage traffic, the chosen-model mix and a verdict.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .added_models import refit
from .bundle import load_bundle
from .decisionlog import decode_key
from .errors import InputError
from .feedback import labelled
from .files import atomic_write_bytes, atomic_write_text
from .manifest import PoolEntry
from .memory import Memory
from .memory_reading import reread
from .profiles import KAPPA, ProfileSpace

MAX_IPS_WEIGHT = 100.0  # 1 / propensity, capped: one lucky exploration must not outweigh a hundred choices
RETRAIN_OOC_SHARE = 0.25  # default verdict threshold: more out-of-coverage traffic than this -> retrain


def refresh(
    bundle_path: str | os.PathLike[str],
    log_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    retrain_ooc_share: float = RETRAIN_OOC_SHARE,
    report: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the refreshed copy `out` of bundle `bundle_path` from the feedback in `log_dir`; returns the report
    (also written to `report`, default `<out>.report.json`, with its PNG beside it)."""
    from .manage import edited_copy, with_memory, write_edited
    from .router import Router

    router = Router(load_bundle(bundle_path))
    if not Path(log_dir).is_dir():
        raise InputError(f"{log_dir}: no such log folder")
    m = router.bundle.manifest
    _, space_id = router.log_ids()
    decisions, feedback = labelled(log_dir)
    before = m.refreshed or {}
    since = float(before.get("feedback_through", 0.0))
    seen_since = float(before.get("decisions_through", 0.0))
    skipped: Counter[str] = Counter()
    use: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for f in feedback:
        d = decisions.get(f["id"])
        why = (
            "already_used"
            if float(f.get("time", 0)) <= since
            else "no_decision"
            if d is None
            else "other_bundle_space"
            if d.get("space") != space_id
            else "model_not_in_pool"
            if f.get("model") not in router.names
            else None
        )
        if why or d is None:
            skipped[why or "no_decision"] += 1
        else:
            use.append((d, f))
    traffic = [d for d in decisions.values() if d.get("space") == space_id and float(d.get("time", 0)) > seen_since]
    if not use:
        raise InputError(
            f"{log_dir}: no new feedback for this bundle's decisions "
            f"({', '.join(f'{v} {k}' for k, v in skipped.items()) or 'no feedback at all'})"
        )

    pool, per_model = _update_profiles(m.pool, m.profile_space, use)
    mem = router.memory()
    rows_added, feedback_rows, reading = 0, int(before.get("feedback_rows", 0)), None
    priors: dict[str, Any] = {}
    if mem is not None:
        keys, outcomes, models = _memory_rows(use, mem.dim)
        rows_added = len(keys)
        if rows_added:
            mem = mem.with_outcomes(keys, outcomes, models)
            feedback_rows = min(len(mem), feedback_rows + rows_added)
            mem, reading = reread(mem, np.arange(len(mem) - feedback_rows, len(mem)), router.memory_breadth())
            pool, priors = _refit_priors(pool, mem, set(models), router.trained)
    rep = _report(use, traffic, per_model, skipped, retrain_ooc_share, rows_added)
    rep["memory_reading"] = reading
    rep["local_priors"] = priors
    with edited_copy(router.bundle.path, out) as tmp:
        new_m = replace(
            m.with_pool(pool),
            refreshed={
                "from": router.bundle.digest[:16],
                "feedback_through": max(float(f["time"]) for _, f in use),
                "decisions_through": max([float(d["time"]) for d in traffic], default=seen_since),
                "records": len(use),
                "memory_rows_added": rows_added,
                "feedback_rows": feedback_rows,
                "refreshes": int(before.get("refreshes", 0)) + 1,
            },
        )
        if mem is not None and rows_added:
            new_m = with_memory(tmp, new_m, mem)
        rep["dropped"] = write_edited(tmp, m, new_m)
    path = Path(report) if report is not None else Path(f"{out}.report.json")
    atomic_write_text(path, json.dumps(rep, indent=2, allow_nan=False) + "\n")
    atomic_write_bytes(path.with_suffix(".png"), _plot(use, traffic))
    return rep


def _ips(d: dict[str, Any], f: dict[str, Any]) -> float:
    """1 / the probability the policy had of producing this outcome: the logged propensity for the chosen model;
    1 for an outcome of a model the router did not choose (the client ran it: not the policy's doing)."""
    p = float(d.get("propensity") or 1.0) if f.get("model") == d.get("chosen") else 1.0
    return min(1.0 / max(p, 1e-12), MAX_IPS_WEIGHT)


def _update_profiles(
    pool: tuple[PoolEntry, ...], space: ProfileSpace, use: list[tuple[dict[str, Any], dict[str, Any]]]
) -> tuple[list[PoolEntry], dict[str, Any]]:
    """Each model's raw profile (overall score, per-slice scores, cost, evidence) moved towards its feedback; returns
    the new pool and, per model, what it saw."""
    S = space.S
    out = {}
    new_pool = []
    for entry in pool:
        rows = [(d, f) for d, f in use if f["model"] == entry.name]
        if not rows:
            new_pool.append(entry)
            continue
        y = np.array([f["score"] for _, f in rows], np.float64)
        w = np.array([_ips(d, f) for d, f in rows], np.float64)
        sl = np.array([int(d.get("slice", -1)) for d, _ in rows])
        raw = np.asarray(entry.raw_profile, np.float64)
        n_old = float(np.expm1(raw[S + 6]))
        n = len(y)
        raw[0] = (n_old * raw[0] + n * float(np.sum(w * y) / np.sum(w))) / (n_old + n)
        for s in np.unique(sl[(sl >= 0) & (sl < S)]):
            sel = sl == s
            prior = n_old / S + KAPPA
            raw[1 + s] = (prior * raw[1 + s] + sel.sum() * float(np.sum(w[sel] * y[sel]) / np.sum(w[sel]))) / (
                prior + sel.sum()
            )
        costs = np.array([f["cost"] for _, f in rows if f.get("cost") is not None], np.float64)
        if len(costs):
            e = (n_old * entry.expected_cost_usd + len(costs) * float(costs.mean())) / (n_old + len(costs))
            entry = replace(entry, expected_cost_usd=e, cost_hat=e / space.cost_scale)
            raw[S + 1] = np.log(e / space.cost_scale + 1e-3)
        raw[S + 6] = np.log1p(n_old + n)
        entry = replace(entry, raw_profile=tuple(raw.tolist()), profile=tuple(space.standardise(raw).tolist()))
        new_pool.append(entry)
        predicted = [d["candidates"][entry.name][2] for d, _ in rows if entry.name in d.get("candidates", {})]
        out[entry.name] = {
            "labels": n,
            "observed": round(float(y.mean()), 4),
            "observed_ips": round(float(np.sum(w * y) / np.sum(w)), 4),
            "predicted": round(float(np.mean(predicted)), 4) if predicted else None,
            "profile_evidence_before": round(n_old, 1),
        }
    return new_pool, out


def _refit_priors(
    pool: list[PoolEntry], mem: Memory, heard: set[str], trained: list[bool]
) -> tuple[list[PoolEntry], dict[str, Any]]:
    """The pool with the local prior of each added model that has new feedback (`heard`) fitted again on all its
    memory rows (`added_models.refit`), and what changed per model."""
    names, added, prior = [p.name for p in pool], [not t for t in trained], [p.prior for p in pool]
    out, changed = list(pool), {}
    for i, entry in enumerate(pool):
        was = entry.extra.get("added_with")
        if trained[i] or entry.name not in heard or not isinstance(was, dict):
            continue
        lp = refit(mem, entry.name, names, added, prior)
        if lp is not None:
            out[i] = replace(entry, extra={**entry.extra, "added_with": {**was, "local_prior": lp.to_dict()}})
            changed[entry.name] = {"before": was.get("local_prior"), "after": lp.to_dict()}
    return out, changed


def _memory_rows(
    use: list[tuple[dict[str, Any], dict[str, Any]]], dim: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One memory row per labelled decision with a usable key: the key, and each model's outcome (NaN: none)."""
    models = sorted({f["model"] for _, f in use})
    rows: dict[str, int] = {}
    keys: list[np.ndarray] = []
    outcomes: list[np.ndarray] = []
    for d, f in use:
        if d["id"] not in rows:
            k = decode_key(d.get("key") or "", dim)
            if k is None:
                continue
            rows[d["id"]] = len(keys)
            keys.append(k / max(float(np.linalg.norm(k)), 1e-12))
            outcomes.append(np.full(len(models), np.nan, np.float32))
        outcomes[rows[d["id"]]][models.index(f["model"])] = f["score"]
    if not keys:
        return np.zeros((0, dim), np.float32), np.zeros((0, len(models)), np.float32), models
    return np.stack(keys).astype(np.float32), np.stack(outcomes), models


def _drift_note(model: str, drift: float, labels: int) -> str:
    """The verdict's word on the largest drift, with the outcomes it rests on and whether it is within two standard
    errors of a mean of them (a score in [0, 1] has a variance of at most 1/4: 2 x 0.5 / sqrt(n))."""
    chance = ", within what that many can show by chance" if abs(drift) < 1.0 / math.sqrt(max(labels, 1)) else ""
    return f"; the largest calibration drift is {drift:+.3f} for {model} (from {labels} outcome{'s' * (labels != 1)}{chance})"


def _report(
    use: list[tuple[dict[str, Any], dict[str, Any]]],
    traffic: list[dict[str, Any]],
    per_model: dict[str, Any],
    skipped: Counter[str],
    retrain_share: float,
    rows_added: int,
) -> dict[str, Any]:
    ooc = [bool(d.get("out_of_coverage")) for d in traffic if d.get("out_of_coverage") is not None]
    share = float(np.mean(ooc)) if ooc else 0.0
    mix = Counter(d.get("chosen") for d in traffic)
    drift = {k: round(v["observed"] - v["predicted"], 4) for k, v in per_model.items() if v["predicted"] is not None}
    worst = max(drift.items(), key=lambda kv: abs(kv[1]), default=None)
    verdict = (
        f"retrain: {share:.0%} of the traffic is out of coverage (threshold {retrain_share:.0%}); the "
        f"router is seeing queries unlike its training data"
        if share > retrain_share
        else f"refresh is enough: {share:.0%} of the traffic is out of coverage (threshold {retrain_share:.0%})"
        + (_drift_note(worst[0], worst[1], int(per_model[worst[0]].get("labels", 0))) if worst else "")
    )
    return {
        "records_used": len(use),
        "records_skipped": dict(skipped),
        "memory_rows_added": rows_added,
        "decisions": len(traffic),
        "out_of_coverage_share": round(share, 4),
        "chosen_mix": {str(k): round(v / max(len(traffic), 1), 4) for k, v in mix.most_common()},
        "models": per_model,
        "calibration_drift": drift,
        "verdict": verdict,
    }


def _plot(use: Any, traffic: Any, width: int = 720, height: int = 360) -> bytes:
    """A PNG over time (up to 24 equal time buckets): observed minus predicted score of the labelled decisions
    (calibration drift, blue) and the out-of-coverage share of the traffic (orange). Drawn with Pillow."""
    import io

    from PIL import Image, ImageDraw

    times = [float(d["time"]) for d in traffic] + [float(d["time"]) for d, _ in use]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    nb = 24
    edges = np.linspace(t0, t1 + 1e-6, nb + 1)

    def series(points: list[tuple[float, float]]) -> list[float | None]:
        """Mean value per time bucket of (time, value) points; None for an empty bucket."""
        at = np.digitize([t for t, _ in points], edges[1:-1]) if points else np.zeros(0, int)
        vals = np.array([v for _, v in points], float)
        return [float(vals[at == b].mean()) if (at == b).any() else None for b in range(nb)]

    gap = series(
        [
            (float(d["time"]), f["score"] - d["candidates"][f["model"]][2])
            for d, f in use
            if f["model"] in d.get("candidates", {})
        ]
    )
    ooc = series(
        [(float(d["time"]), float(d["out_of_coverage"])) for d in traffic if d.get("out_of_coverage") is not None]
    )
    img = Image.new("RGB", (width, height), "white")
    g = ImageDraw.Draw(img)
    left, top, right, bottom = 60, 30, width - 20, height - 40
    g.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    mid = (top + bottom) / 2
    g.line([left, mid, right, mid], fill=(220, 220, 220))
    g.text(
        (left, 8), "observed - predicted score (blue, -0.5..0.5) | out-of-coverage share (orange, 0..1)", fill="black"
    )
    stamp = "%Y-%m-%d %H:%M"
    g.text((left, bottom + 6), time.strftime(stamp, time.gmtime(t0)) + " UTC", fill="black")
    g.text((right - 110, bottom + 6), time.strftime(stamp, time.gmtime(t1)), fill="black")
    g.text((left, bottom + 22), f"{nb} time buckets, {len(traffic)} decisions, {len(use)} with feedback", fill="black")
    for vals, colour, lo, hi in ((gap, (31, 119, 180), -0.5, 0.5), (ooc, (255, 127, 14), 0.0, 1.0)):
        pts = [
            (left + (right - left) * (i + 0.5) / nb, bottom - (bottom - top) * (min(max(v, lo), hi) - lo) / (hi - lo))
            for i, v in enumerate(vals)
            if v is not None
        ]
        if len(pts) > 1:
            g.line(pts, fill=colour, width=2)
        for x, y in pts:
            g.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
