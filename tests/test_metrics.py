"""Routing metrics against the hand-computed anchors of method.md §8.9."""

from __future__ import annotations

import numpy as np
import pytest

from lr_onnx.export.evaluate.routing_metrics import (
    aiq,
    apgr,
    cpt,
    nauc,
    nauc_ref,
    oracle_choice,
    pareto_frontier,
    peak_score,
    qnc,
    rank_score,
    uncertainty,
)
from lr_onnx.runtime.policy import LAMBDA_GRID, choose

HAND = [(1, 0.50), (2, 0.70), (3, 0.65), (4, 0.80)]


def test_hand_example():
    assert pareto_frontier(HAND) == [(1, 0.5), (2, 0.7), (4, 0.8)]
    assert nauc(HAND) == pytest.approx(0.70)
    assert nauc_ref(HAND) == pytest.approx(0.68333, abs=1e-5)
    assert peak_score(HAND) == 0.8
    assert qnc(HAND, 0.8, 4) == pytest.approx(1.0)
    weak, strong = (1, 0.5), (4, 0.8)
    assert apgr(HAND, weak, strong) == pytest.approx(0.55556, abs=1e-5)
    assert cpt(HAND, weak, strong, 0.5) == pytest.approx(25.0)
    assert cpt(HAND, weak, strong, 0.8) == pytest.approx(60.0)
    assert aiq(HAND, 4) == pytest.approx(0.525)


def test_three_point_example_and_degenerate_cases():
    pts = [(0, 0.5), (0.5, 0.4), (1, 0.9)]
    assert nauc(pts) == pytest.approx(0.70)
    assert nauc_ref(pts) == pytest.approx(0.60)
    assert np.isnan(nauc([(1, 0.5)]))
    assert nauc_ref([(1, 0.5)]) == 0.5
    assert qnc(HAND, 0.9, 4) == float("inf")
    assert np.isnan(cpt(pts, (1, 0.5), (1, 0.9), 0.5))  # weak and strong cost the same: no cost axis


@pytest.mark.parametrize("acc,cost,expected", [(0.9, 0.009, 0.27817), (0.5, 0.001, 0.51641), (0.9, 0.001, 0.88623)])
def test_rank_score_check_values(acc, cost, expected):
    assert rank_score(acc, cost, 5e-4, 0.01) == pytest.approx(expected, abs=1e-5)


def test_oracle_breaks_ties_by_cost_then_index():
    Y = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 1]], float)
    C = np.array([[3, 1, 1], [2, 1, 5], [1, 2, 2]], float)
    A = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
    assert oracle_choice(Y, C, A).tolist() == [1, 1, -1]


def test_policy_masks_ties_and_no_route():
    s = np.array([[0.9, 0.9, 0.5], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    c = np.array([[1.0, 1.0, 0.0]] * 3)
    a = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
    assert choose(s, c, a, 0.0).tolist() == [0, 1, -1]
    assert choose(s, c, a, 1.0).tolist() == [2, 1, -1]
    assert len(LAMBDA_GRID) == 51 and LAMBDA_GRID[0] == 0 and LAMBDA_GRID[-1] == pytest.approx(1e4)


def test_uncertainty_quality_by_hand():
    """§8.8: ECE, Brier, NLL, coverage and Spearman on four entries worked out on paper."""
    mu = np.array([0.25, 0.15, 0.75, 0.92])
    y = np.array([0.0, 1.0, 1.0, 1.0])
    sigma = np.array([0.15, 0.2, 0.15, 0.5])
    u = uncertainty(mu, mu, sigma, y)
    assert u["bin_counts"] == [0, 1, 1, 0, 0, 0, 0, 1, 0, 1]
    assert u["ece"] == pytest.approx((0.25 + 0.85 + 0.25 + 0.08) / 4)  # one entry per bin here
    assert u["brier"] == pytest.approx((0.0625 + 0.7225 + 0.0625 + 0.0064) / 4)
    assert u["coverage_1.96sigma"] == 0.75  # 0.85 > 1.96 x 0.2
    assert u["spearman_sigma_abs_error"] == pytest.approx(-1 / 3)  # ranks [.5 2 .5 3] vs [1.5 3 1.5 0]
    assert u["gaussian_nll"] == pytest.approx(2.35019, abs=1e-5)


def test_per_dataset_lists_sources_only_for_merged_labels():
    """A merge's `source/task` labels get a row per source too; plain labels (the demo's: 'charts', 'math') are
    their own sources and are listed once, not again as `source:charts`."""
    from types import SimpleNamespace

    from lr_onnx.export.evaluate.report import per_dataset

    def run(labels):
        n = len(labels)
        Y = np.array([[1.0, 0.0], [0.0, 1.0]] * (n // 2))
        d = SimpleNamespace(dataset=labels, Y=Y, C=np.ones_like(Y), A=np.ones_like(Y, bool), model_names=["a", "b"])
        curve = [{"choice": np.zeros(n, int)}]
        return per_dataset(SimpleNamespace(data=d), np.arange(n), {"latentrouter": curve}, 0)

    plain = run(["charts", "math", "charts", "math"])
    assert sorted(plain) == ["charts", "math"]
    merged = run(["x/t1", "y/t2", "x/t3", "y/t2"])
    assert sorted(merged) == ["source:x", "source:y", "x/t1", "x/t3", "y/t2"]
    assert merged["source:x"]["rows"] == 2 and merged["source:x"]["latentrouter_score_lambda0"] == 1.0


def test_the_torch_baselines_train_on_one_thread_whatever_the_machine_has():
    """The MLP and IRT bars must not move with the thread count (a sum in another order trains other weights:
    0.744 against 0.768 at lambda 0 on a 400-query demo run with 1 and 2 threads); the caller's count is restored."""
    import torch

    from lr_onnx.export.evaluate.baselines import irt_scores, mlp_scores, single_threaded

    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        single_threaded(lambda: seen.append(torch.get_num_threads()))()
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert mlp_scores.__wrapped__ is not None and irt_scores.__wrapped__ is not None  # both are wrapped
