"""Refresh re-chooses how the capability memory is read, on the feedback it has just learned from (issue 26).

Training chooses the memory's reading (k neighbours, the pseudo-count kappa, the closeness scale tau) on its
validation split. After a shift, the traffic is no longer that split: on `dynamath` without half of its
subjects, validation chose k 256 with tau 0.1, and the feedback rows of the unseen subjects weighed little among
256 neighbours, so refresh closed 28% of the gap to a retrained router (`benchmarks/results/feedback.json`).
The feedback itself is labelled data from today's traffic, so `refresh` chooses the reading again on it: every
(k, kappa, tau) of `READING_GRID` (k at most what memory.onnx returns), each feedback row estimated from its
neighbours without itself, scored by the Brier score of the estimates on the logged outcomes (each row has the
chosen model's outcome only, so a routing score cannot be measured; the estimate's calibration can). The
current reading stays unless the best one beats it by `margin` standard errors of the paired per-outcome
difference, a one-sided test at ALPHA corrected for the number of readings tried (Bonferroni: 2.4 for the 6 of
a 16-neighbour search, 2.9 for all 30): in domain, where training chose well, the luckiest of near-equal readings
must not move it (at a plain 2 standard errors the best of 6 did, by 2.0-2.7, on 5 of 6 in-domain `blindtest`
stream orders looked at). s_ref follows k,
as at training. The retrieval space and each merged source's own reading stay as they are.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from .memory import READING_GRID, Memory, MemorySettings, grid_readings

MIN_OUTCOMES = 100  # logged outcomes needed before the reading is chosen again
MAX_ROWS = 2000  # the newest feedback rows it is chosen on (a search of each against every row)
ALPHA = 0.05  # per refresh, the chance that feedback no reading explains better still moves the reading


def margin(candidates: int) -> float:
    """Standard errors by which the best of `candidates` readings must beat the current one: one-sided at ALPHA,
    Bonferroni-corrected, since the best of many is the luckiest of many."""
    return NormalDist().inv_cdf(1.0 - ALPHA / max(candidates, 1))


def reread(mem: Memory, rows: np.ndarray, breadth: int) -> tuple[Memory, dict[str, Any] | None]:
    """`mem` read with the setting whose leave-one-out estimates on memory rows `rows` (the feedback rows) have the
    lowest Brier score, k at most `breadth`, if it beats the current reading by `margin` standard errors of the paired
    difference (else `mem` unchanged); and the record of the choice (None when the rows hold fewer than
    MIN_OUTCOMES outcomes)."""
    rows = np.asarray(rows, np.int64)[-MAX_ROWS:]
    known = mem.known[rows]
    if known.sum() < MIN_OUTCOMES or len(mem) < 2:
        return mem, None
    found = mem.neighbours(mem.keys[rows], breadth, exclude=rows)
    ks = [int(k) for k in READING_GRID["k"] if k <= breadth] or [int(min(READING_GRID["k"]))]

    def errors(st: MemorySettings) -> np.ndarray:
        """The squared error of each logged outcome's leave-one-out estimate under reading `st`."""
        m = Memory(mem.projection(), mem.keys, mem.outcomes, mem.models, st, mem.sources)
        est = 1.0 / (1.0 + np.exp(-m.columns(None, found=found)[..., 0]))
        return np.asarray(((est - mem.values[rows]) ** 2)[known], np.float64)

    now = errors(mem.settings)
    best = (float(now.mean()), mem.settings, now)
    readings = grid_readings(mem.settings, mem.keys, ks)
    for st in readings:
        e = errors(st)
        if e.mean() < best[0] - 1e-12:
            best = (float(e.mean()), st, e)
    gain = now - best[2]  # paired, per outcome: what the best reading gains on each
    need = margin(len(readings))
    sure = bool(gain.mean() > need * gain.std() / np.sqrt(len(gain)))
    chosen = best[1] if sure else mem.settings
    record = {
        "rows": len(rows),
        "outcomes": int(known.sum()),
        "before": mem.settings.to_dict(),
        "best": best[1].to_dict(),
        "after": chosen.to_dict(),
        "brier_before": round(float(now.mean()), 5),
        "brier_best": round(best[0], 5),
        "gain_standard_errors": round(float(gain.mean() / max(gain.std() / np.sqrt(len(gain)), 1e-12)), 2),
        "needed_standard_errors": round(need, 2),
        "changed": sure,
    }
    if not sure:
        return mem, record
    return Memory(mem.projection(), mem.keys, mem.outcomes, mem.models, chosen, mem.sources), record
