"""The estimators of the memory experiments (benchmarks/memory_variants.py): their numbers are quoted in
docs/results.md, so each must do what its docstring says on data where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DYNAMATH

from lr_onnx.runtime.features import HAS_IMAGE_COL
from lr_onnx.runtime.memory import Memory, MemorySettings
from memory_per_source import vote
from memory_variants import eb_kappa, ridge, shrunk, summary
from newmodel import spread_by_difficulty
from resplit import grouped_split, resplit


def test_ridge_recovers_a_linear_outcome_per_model_on_its_own_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    w = rng.normal(size=(5, 2))
    Y = X @ w + np.array([0.3, 0.7])
    A = np.ones_like(Y, bool)
    A[::2, 1] = False  # model 1 answered half the rows
    Y[~A] = 99.0  # never read
    W = ridge(X, Y, A, alpha=1e-6)
    assert np.allclose(W[:-1], w, atol=1e-4) and np.allclose(W[-1], [0.3, 0.7], atol=1e-4)
    lonely = np.zeros_like(A)
    lonely[0, 0] = True  # fewer than two rows: no fit, zero weights
    assert not ridge(X, Y, lonely, alpha=1.0)[:, 0].any()


def test_eb_kappa_trusts_neighbours_only_for_a_model_whose_outcomes_vary_by_neighbourhood():
    rng = np.random.default_rng(1)
    n, k = 200, 10
    cluster = np.arange(n) // 100  # two neighbourhoods of 100 rows
    outcomes = np.stack([cluster.astype(float), rng.integers(0, 2, n).astype(float)], 1).astype(np.float32)
    mem = Memory(
        np.zeros((HAS_IMAGE_COL, 3), np.float32),
        np.eye(n, 2, dtype=np.float32),
        outcomes,
        ["a", "b"],
        MemorySettings(k=k, s_ref=0.5),
    )
    idx = np.stack(
        [rng.choice(np.flatnonzero((cluster == cluster[i]) & (np.arange(n) != i)), k, replace=False) for i in range(n)]
    )
    kappa = eb_kappa(mem, (np.ones((n, k)), idx), mem.settings)
    # "a" is 0 in one neighbourhood and 1 in the other: its local mean is all signal, a tiny pseudo-count.
    # "b" is a coin flip everywhere: its local means are noise, a large pseudo-count keeps its global mean.
    assert kappa[0] <= 0.3 + 1e-9 and kappa[1] > 20
    est = shrunk(np.full((1, 2), 10.0), np.array([[10.0, 10.0]]), kappa, mem.global_mean)
    assert est[0, 0] > 0.95 and abs(est[0, 1] - mem.global_mean[1]) < 0.2


def test_summary_is_each_variant_against_current():
    def cell(s0, na):
        point = {"score_at_lambda0": s0, "nauc": na}
        return {"test_split": point, "resplit_mean": point}

    cells = {
        "x": {"current": cell(0.5, 0.5), "v": cell(0.6, 0.4)},
        "y": {"current": cell(0.5, 0.5), "v": cell(0.5, 0.7)},
    }
    row = summary(cells)["v"]
    assert row["test_split_score_at_lambda0_mean_diff"] == 0.05 and row["test_split_score_at_lambda0_cells_ahead"] == 1
    assert row["resplit_mean_nauc_mean_diff"] == 0.05 and row["resplit_mean_nauc_cells_ahead"] == 1
    assert "current" not in summary(cells)


def test_the_neighbour_vote_names_the_source_most_neighbours_come_from():
    near = np.array([["a"] * 10 + ["b"] * 6, ["b"] * 9 + ["a"] * 7, ["a"] * 8 + ["b"] * 8, ["c"] * 16])
    assert vote(near, ["a", "b"]).tolist() == ["a", "b", "a", "a"]  # a tie, or no known source: the first name


def test_the_label_prior_is_each_labels_mean_shrunk_to_the_global_mean_and_the_label_is_voted():
    from memory_label_prior import LABEL_ROWS, label_means, voted

    outcomes = np.array([[1, 0], [1, 0], [0, 1], [0, np.nan]], np.float32)
    mem = Memory(
        np.zeros((HAS_IMAGE_COL, 3), np.float32), np.eye(4, 2, dtype=np.float32), outcomes, ["a", "b"], MemorySettings()
    )
    table = label_means(mem, np.array(["x", "x", "y", "y"]), ["x", "y"])
    g = mem.global_mean  # a: 0.5 over 4 rows, b: 1/3 over 3
    assert np.allclose(table[0], (np.array([2.0, 0.0]) + LABEL_ROWS * g) / (2 + LABEL_ROWS))
    assert np.allclose(table[1], (np.array([0.0, 1.0]) + LABEL_ROWS * g) / (np.array([2, 1]) + LABEL_ROWS))
    row_label = np.array([0, 0, 1, 1, 1])
    idx = np.array([[0, 1, 2], [2, 3, 0]])  # nearest first: two of three say label 0, then label 1
    assert voted(row_label, idx, 2).tolist() == [0, 1]


def test_sums_at_reads_the_k_nearest_with_the_settings_train_would_use():
    from lr_onnx.export.train.memory import reference_similarity
    from memory_variants import current, local_sums, sums_at

    rng = np.random.default_rng(3)
    keys = rng.normal(size=(60, 4)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    outcomes = rng.integers(0, 2, (60, 2)).astype(np.float32)
    mem = Memory(np.zeros((HAS_IMAGE_COL, 5), np.float32), keys, outcomes, ["a", "b"], MemorySettings(k=16))
    sims = keys[:5] @ keys.T
    order = np.argsort(-sims, axis=1)
    found = (np.take_along_axis(sims, order, 1), order)
    ev, ys = sums_at(mem, found, 1.0, 8, 0.1)
    st = MemorySettings(8, 1.0, 0.1, 1.0, reference_similarity(keys, 8))
    _, ev2, ys2 = local_sums(mem, (found[0][:, :8], found[1][:, :8]), st)
    assert np.array_equal(ev, ev2) and np.array_equal(ys, ys2) and ev.shape == (5, 2)
    c = current(ev, ys, mem, 1.0, 8, 0.1, 3.0)
    assert c["settings"] == (1.0, 8, 0.1, 3.0) and np.allclose(c["est"], shrunk(ev, ys, 3.0, mem.global_mean))


def test_the_added_model_alternatives_fit_what_their_docstrings_say():
    """benchmarks/newmodel_alternatives.py: the leave-one-out ridge keeps a real signal and shrinks pure noise."""
    from newmodel_alternatives import ridge_loo

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4))
    w, b = ridge_loo(X, X @ np.array([1.0, -0.5, 0.0, 0.0]) + 0.2 + rng.normal(scale=0.05, size=200))
    assert np.allclose(w, [1.0, -0.5, 0.0, 0.0], atol=0.05) and abs(b - 0.2) < 0.05
    w, b = ridge_loo(X, rng.normal(size=200) + 3.0)  # nothing to explain: small weights, about the mean
    assert np.abs(w).max() < 0.15 and abs(b - 3.0) < 0.3


@pytest.mark.shared_data("dynamath")
def test_resplit_reproduces_dynamaths_official_split_with_its_seed_and_never_splits_a_group(tmp_path):
    """benchmarks/resplit.py redraws a split by the dataset README's procedure: with the README's seed it must give
    the official split row for row, or a resplit diagnostic would measure the procedure rather than the luck."""
    official = [json.loads(ln) for ln in (DYNAMATH / "queries.jsonl").read_text().splitlines() if ln.strip()]
    assert grouped_split(official, 20261202) == {r["meta"]["group"]: r["split"] for r in official}
    counts = resplit(DYNAMATH, tmp_path / "s1", seed=1)
    again = [json.loads(ln) for ln in (tmp_path / "s1" / "queries.jsonl").read_text().splitlines()]
    by_group: dict[str, set] = {}
    for r in again:
        by_group.setdefault(r["meta"]["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values()) and sum(counts.values()) == len(official)
    assert [r["split"] for r in again] != [r["split"] for r in official]  # another seed, another split
    assert (tmp_path / "s1" / "images").resolve() == (DYNAMATH / "images").resolve()


def test_spread_by_difficulty_spans_each_slices_easy_and_hard_rows():
    """benchmarks/newmodel.py's pick variant: a slice's picks sit at spaced quantiles of the trained models' mean
    outcome per row: of 30 rows and 3 picks, one from each third, however the seed falls."""
    slices = np.repeat(np.arange(4), 30)
    rows = np.arange(120)
    difficulty = np.random.default_rng(0).random(120)  # distinct, independent of the slices
    for seed in range(5):
        got = spread_by_difficulty(rows, slices, 4, 12, seed, difficulty)
        assert len(got) == 12 and got == spread_by_difficulty(rows, slices, 4, 12, seed, difficulty)
        for s in range(4):
            mine = sorted(difficulty[r] for r, t in got if t == s)
            ranks = [np.mean(difficulty[slices == s] < d) for d in mine]  # the picks' quantiles within their slice
            assert len(mine) == 3 and ranks[0] < 1 / 3 <= ranks[1] < 2 / 3 <= ranks[2]


def test_the_compact_router_computes_what_latentrouter_computes():
    """benchmarks/router_graph_compact.py times `Compact` against the exported LatentRouter as the same function:
    it must be, on every output, with models masked out and with the memory blend and slice prior in play."""
    torch = pytest.importorskip("torch")
    from router_graph_compact import Compact, feeds

    from lr_onnx.export.train.model import LatentRouter, RouterConfig

    torch.manual_seed(3)
    for cfg in (RouterConfig(model_dim=75, memory=3), RouterConfig(model_dim=75, slices=8), RouterConfig(layers=1)):
        net = LatentRouter(cfg).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            if cfg.memory:
                net.memory.blend.fill_(0.6)
        f = {k: torch.from_numpy(v) for k, v in feeds(cfg, 4, 7, np.random.default_rng(0)).items()}
        assert not f["avail"].all()  # some models masked out
        with torch.no_grad():
            for a, b in zip(net(*f.values()), Compact(net)(*f.values())):
                assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
