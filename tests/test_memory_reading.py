"""Refresh re-chooses how the memory is read, on its feedback rows (runtime/memory_reading.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lr_onnx.runtime.features import HAS_IMAGE_COL
from lr_onnx.runtime.memory import Memory, MemorySettings, reference_similarities
from lr_onnx.runtime.memory_reading import MIN_OUTCOMES, reread

D = 8


def _clustered(n_clusters=40, per=12, seed=0, **kw) -> Memory:
    """Small tight clusters; model a is right on about half of them (a coin per cluster), model b is a coin per row.
    Read broadly (k 256, kappa 10): the setting of a memory trained on other traffic."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, D))
    cluster = np.repeat(np.arange(n_clusters), per)
    keys = centres[cluster] / np.linalg.norm(centres[cluster], axis=1, keepdims=True)
    keys = keys + rng.normal(size=keys.shape) * 0.03
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    good = rng.random(n_clusters) < 0.5
    y = np.stack([rng.random(len(keys)) < np.where(good[cluster], 0.95, 0.05), rng.random(len(keys)) < 0.5], axis=1)
    proj = np.zeros((HAS_IMAGE_COL, D + 1), np.float32)
    proj[np.arange(D), 1 + np.arange(D)] = 1.0
    st = MemorySettings(**{"k": 256, "kappa": 10.0, "tau": 0.1, "image_weight": 1.0, "s_ref": 0.2, **kw})
    return Memory(proj, keys.astype(np.float32), y.astype(np.float32), ["a", "b"], st)


def test_a_memory_read_too_broadly_for_its_feedback_is_read_narrower():
    mem = _clustered()
    rows = np.arange(len(mem) - 300, len(mem))
    new, rec = reread(mem, rows, breadth=256)
    assert rec is not None and rec["rows"] == 300 and rec["outcomes"] == 600
    assert rec["changed"] and new.settings.k < 256 and new.settings.to_dict() == rec["after"] == rec["best"]
    assert rec["brier_best"] < rec["brier_before"] - 0.05  # the clusters' outcomes, not the global mean
    assert rec["gain_standard_errors"] > 2
    assert new.settings.s_ref == reference_similarities(mem.keys, [new.settings.k])[0]  # s_ref follows k
    assert new.settings.image_weight == mem.settings.image_weight and len(new) == len(mem)  # same retrieval space
    # the new reading estimates the rows' outcomes better, as the router reads them (a search wider than k)
    found = mem.neighbours(mem.keys[rows], 256, exclude=rows)
    err = {
        name: np.abs(1 / (1 + np.exp(-m.columns(None, found=found)[:, 0, 0])) - mem.outcomes[rows, 0]).mean()
        for name, m in (("old", mem), ("new", new))
    }
    assert err["new"] < err["old"]


def test_the_reading_never_reads_more_than_the_search_returns():
    mem = _clustered()
    new, rec = reread(mem, np.arange(len(mem)), breadth=32)
    assert rec is not None and new.settings.k <= 32


def test_a_reading_no_better_beyond_chance_is_kept():
    """Outcomes that are coins, read broadly (already about right): a reading that wins on them wins by luck, and the
    current one stays."""
    mem = _clustered()
    coins = np.random.default_rng(1).random(mem.outcomes.shape) < 0.5
    mem = Memory(mem.projection(), mem.keys, coins.astype(np.float32), mem.models, mem.settings)
    new, rec = reread(mem, np.arange(len(mem)), breadth=256)
    assert rec is not None and not rec["changed"] and new is mem and rec["after"] == rec["before"]
    assert rec["gain_standard_errors"] < 2


def test_too_little_feedback_keeps_the_reading():
    mem = _clustered()
    rows = np.arange(MIN_OUTCOMES // 2 - 1)  # two outcomes per row: just under MIN_OUTCOMES
    new, rec = reread(mem, rows, breadth=256)
    assert rec is None and new is mem


def test_columns_read_the_k_nearest_of_a_wider_search():
    mem = _clustered(k=16)
    q = mem.keys[:5]
    wide = mem.neighbours(q, 64)
    narrow = mem.neighbours(q, 16)
    assert np.allclose(mem.columns(None, found=wide), mem.columns(None, found=narrow), atol=1e-6)


def test_the_margin_grows_with_the_readings_tried():
    """The best of many near-equal readings is the luckiest of many: the margin is Bonferroni's, one-sided at ALPHA."""
    from lr_onnx.runtime.memory_reading import ALPHA, margin

    assert margin(1) == pytest.approx(1.645, abs=0.01)  # one candidate: a plain one-sided test at 5%
    assert margin(30) == pytest.approx(2.935, abs=0.01) and ALPHA == 0.05
    assert all(margin(m) < margin(m + 1) for m in range(1, 60))
