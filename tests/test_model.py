"""LatentRouter shapes, masking and the architecture anchor (method.md §2.8)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lr_onnx.export.train.model import LatentRouter, RouterConfig  # noqa: E402
from lr_onnx.runtime.policy import choose  # noqa: E402


@pytest.mark.parametrize("D,P", [(1667, 16), (398, 55)])
def test_parameter_count_formula(D, P):
    m = LatentRouter(RouterConfig(query_dim=D, model_dim=P, image_slice=(0, 1), has_image_col=0))
    assert m.core_parameter_count() == 194 * D + 50 * P + 205_261
    if (D, P) == (398, 55):
        assert m.core_parameter_count() == 285_223  # the reference toy network


def test_slice_prior_adds_its_projection_and_gain_only():
    H = RouterConfig().hidden
    base = LatentRouter(RouterConfig()).core_parameter_count()
    assert LatentRouter(RouterConfig(slices=5)).core_parameter_count() == base + 2 * H + 1  # buffers are not parameters


@pytest.fixture(scope="module", params=[0, 4], ids=["plain", "slice-prior"])
def net(request):
    torch.manual_seed(0)
    m = LatentRouter(RouterConfig(slices=request.param)).eval()
    if request.param:
        c = torch.randn(request.param, 1664)
        m.slice_prior.centroids.copy_(c / c.norm(dim=1, keepdim=True))
        m.slice_prior.score_mean.fill_(0.6)
        m.slice_prior.score_std.fill_(0.1)
    return m


def _prior_net(S=3):
    m = LatentRouter(RouterConfig(slices=S)).eval()
    m.slice_prior.centroids.copy_(torch.eye(S, 1664))  # slice s = direction s of the embedding
    m.slice_prior.score_mean.fill_(0.5)
    m.slice_prior.score_std.fill_(0.1)
    return m


def test_slice_prior_is_the_models_score_on_the_querys_slice():
    """Hand-computed: a query on slice 1 gets logit(score on slice 1); half-way between 0 and 1, the mean of both."""
    m = _prior_net()
    raw = torch.tensor([[0.2, 0.9, 0.4], [0.7, 0.3, 0.5]])  # [K=2, S=3] raw shrunk slice scores
    mf = torch.zeros(2, 2, 16)
    mf[:, :, 1:4] = (raw - 0.5) / 0.1  # standardised, as in model_feat
    q = torch.zeros(2, 1667)
    q[0, 1] = 3.0  # exactly slice 1 (the norm does not matter)
    q[1, 0] = q[1, 1] = 1.0  # cosine 0.707 to slices 0 and 1, 0 to slice 2
    with torch.no_grad():
        prior = m.slice_prior(q, mf)
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    torch.testing.assert_close(prior[0], logit(raw[:, 1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prior[1], logit((raw[:, 0] + raw[:, 1]) / 2), atol=1e-4, rtol=1e-4)


def test_slice_prior_reads_the_profile_so_an_added_model_gets_one():
    """Raising a model's score on the query's slice raises its prior (and nobody else's): no retraining needed."""
    m = _prior_net()
    mf = torch.zeros(1, 3, 16)
    q = torch.zeros(1, 1667)
    q[0, 2] = 1.0
    with torch.no_grad():
        before = m.slice_prior(q, mf)
        mf[0, 1, 3] = 2.0  # model 1, slice 2: 0.5 -> 0.7
        after = m.slice_prior(q, mf)
    assert after[0, 1] > before[0, 1] + 0.8 and torch.equal(after[0, [0, 2]], before[0, [0, 2]])


def _inputs(B, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 1667, generator=g)
    q[:, 1664] = (torch.rand(B, generator=g) > 0.5).float()
    return q, torch.randn(B, K, 16, generator=g), torch.rand(B, K, generator=g) > 0.3


@pytest.mark.parametrize("B,K", [(1, 1), (1, 9), (7, 33), (64, 16)])
def test_shapes_ranges_and_sentinels(net, B, K):
    q, mf, a = _inputs(B, K)
    with torch.no_grad():
        mu, sigma, delta, mt = net(q, mf, a)
    for t in (mu, sigma, delta, mt):
        assert t.shape == (B, K) and torch.isfinite(t).all()
    assert ((mu[a] > 0) & (mu[a] < 1)).all() and (sigma[a] > 0).all() and (delta.abs() <= 0.05 + 1e-7).all()
    assert (mu[~a] == -1).all() and (mt[~a] == -1).all() and (sigma[~a] == 1).all() and (delta[~a] == 0).all()


def test_fully_masked_rows_are_finite_and_never_routed(net):
    q, mf, a = _inputs(4, 6)
    a[1] = False
    with torch.no_grad():
        out = net(q, mf, a)
    assert all(torch.isfinite(t).all() for t in out)
    choice = choose(out[3].numpy(), np.zeros((4, 6)), a.numpy(), 0.0)
    assert choice[1] == -1
    assert all(a[i, c] for i, c in enumerate(choice) if c >= 0)


def test_masked_model_never_wins_and_cannot_influence_others(net):
    q, mf, a = _inputs(8, 5, seed=1)
    a[:, 2] = False
    with torch.no_grad():
        base = net(q, mf, a)[3]
        mf2 = mf.clone()
        mf2[:, 2] = 100.0  # anything in an unavailable model's features
        other = net(q, mf2, a)[3]
    torch.testing.assert_close(base, other)
    assert (choose(base.numpy(), np.zeros((8, 5)), a.numpy(), 0.0) != 2).all()


def test_removing_a_model_equals_masking_it(net):
    """Shrinking the pool by deleting a column gives the same scores as masking it."""
    q, mf, a = _inputs(5, 6, seed=2)
    a[:] = True
    a_masked = a.clone()
    a_masked[:, 3] = False
    keep = [0, 1, 2, 4, 5]
    with torch.no_grad():
        masked = net(q, mf, a_masked)[3][:, keep]
        removed = net(q, mf[:, keep], a[:, keep])[3]
    torch.testing.assert_close(masked, removed, atol=1e-5, rtol=1e-5)


def test_batch_rows_are_independent(net):
    q, mf, a = _inputs(6, 4, seed=3)
    with torch.no_grad():
        full = net(q, mf, a)[3]
        one = net(q[2:3], mf[2:3], a[2:3])[3]
    torch.testing.assert_close(full[2:3], one, atol=1e-6, rtol=1e-5)


def test_nll_clamps_sigma_at_the_floor_and_nowhere_else():
    """A collapsed sigma cannot blow the NLL up: hand-computed value at the floor, and the default floor is 0.05."""
    import math

    from lr_onnx.export.train.losses import losses
    from lr_onnx.export.train.trainer import TrainConfig

    mu = torch.tensor([[0.0, 0.5]])
    sigma = torch.tensor([[1e-4, 0.3]], requires_grad=True)
    y = torch.tensor([[1.0, 0.5]])
    avail = torch.tensor([[True, True]])
    w = {"nll": 1.0, "pair": 0.0, "list": 0.0, "util": 0.0, "mean": 0.0, "res": 0.0}
    args = (mu, sigma, torch.zeros(1, 2), mu, y, y, avail, torch.zeros(1, 2), 0.0, w)
    _, t = losses(*args, sigma_floor=0.05)
    want = ((0.5 * (1 / 0.05) ** 2 + math.log(0.05)) + (0 + math.log(0.3))) / 2
    assert float(t["nll"].detach()) == pytest.approx(want, rel=1e-5)
    _, raw = losses(*args)  # the method's 1e-4: 5e7
    assert float(raw["nll"].detach()) > 1e7
    t["nll"].backward()
    assert sigma.grad[0, 0] == 0 and sigma.grad[0, 1] != 0  # below the floor: no pull further down
    assert TrainConfig().nll_sigma_floor == 0.05


def _memory_net(blend: float):
    torch.manual_seed(0)
    m = LatentRouter(RouterConfig(model_dim=19, memory=3)).eval()  # 15 profile columns, 3 memory, 1 cost
    m.memory.blend.fill_(blend)
    return m


def _memory_feat(est, closeness):
    """model_feat [1, K, 19] with the memory's estimate (as a logit) and closeness in place."""
    est = torch.tensor(est)
    mf = torch.randn(1, len(est), 19)
    mf[0, :, 15] = torch.log(est / (1 - est))
    mf[0, :, 16] = 1.0
    mf[0, :, 17] = closeness
    return mf


def test_memory_adds_its_projection_and_gain_only():
    H = RouterConfig().hidden
    base = LatentRouter(RouterConfig(model_dim=19)).core_parameter_count()
    assert LatentRouter(RouterConfig(model_dim=19, memory=3)).core_parameter_count() == base + 3 * H + H + 1


@pytest.mark.parametrize("blend,closeness", [(0.0, 1.0), (1.0, 0.0), (0.5, 0.0)])
def test_memory_is_the_answer_where_the_network_may_not_correct_it(blend, closeness):
    """blend 0 (chosen on validation) or a query far from the memory (closeness 0): mu is the memory's estimate,
    and the bounded correction delta vanishes too: out of coverage nothing saturates beyond what the data says."""
    m = _memory_net(blend)
    est = [0.3, 0.62, 0.91]
    with torch.no_grad():
        mu, _, delta, mt = m(torch.randn(1, 1667), _memory_feat(est, closeness), torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(mu[0], torch.tensor(est), atol=1e-5, rtol=0)
    assert torch.all(delta == 0) and torch.equal(mt, mu)


def test_the_network_corrects_the_memory_in_proportion_to_closeness():
    m = _memory_net(1.0)
    est = [0.3, 0.62, 0.91]
    q = torch.randn(1, 1667)
    with torch.no_grad():
        mus = [m(q, _memory_feat(est, c), torch.ones(1, 3, dtype=torch.bool))[0][0] for c in (0.0, 0.5, 1.0)]
    gaps = [float((mu - torch.tensor(est)).abs().max()) for mu in mus]
    assert gaps[0] < 1e-6 < gaps[1]
