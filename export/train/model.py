"""LatentRouter (method.md §2): routing capsules, capability tokens, latent communication, heads.

Reads top-down: config, the small blocks, then `LatentRouter`. Shapes use method.md's
letters: B batch, K models, C capsules, Q query tokens, H hidden, h heads, d = H/h.
Written for ONNX export with dynamic B and K: no data-dependent Python control flow,
masking only through `torch.where` with the finite NEG (never -inf).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4  # finite mask value, representable in fp16 (§2.4)


@dataclass
class RouterConfig:
    query_dim: int = 1667  # D_q: text 384 + image 1280 + 3 side features (§2.1)
    model_dim: int = 16  # P_in: standardised profile (S + 7) + normalised cost; 16 for method.md S = 8
    hidden: int = 48  # H (§2.6; the reference class default is 96)
    query_tokens: int = 4  # Q
    capsules: int = 7  # C
    layers: int = 2  # L; 0 gives the no-communication ablation (A0)
    heads: int = 4  # h
    dropout: float = 0.1
    residual_bound: float = 0.05  # b, bound of the capsule correction delta
    feedback_temperature: float = 0.25  # tau_fb
    slices: int = 0  # S of the slice prior (lr-onnx addition, `SlicePrior`); 0 = off, as in method.md
    slice_temperature: float = 0.05  # tau_s of the soft slice membership
    memory: int = 0  # capability-memory columns in model_feat (runtime.memory.COLUMNS; 0 = off)
    image_slice: tuple[int, int] = (384, 1664)  # where the image vector sits in q (for the no-image embedding)
    has_image_col: int = 1664

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RouterConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RouterConfig keys: {sorted(unknown)}")
        d = dict(d)
        d["image_slice"] = tuple(d.get("image_slice", cls.image_slice))
        return cls(**d)


def mlp(i: int, hidden: int, o: int, dropout: float) -> nn.Sequential:
    """LN -> Linear -> GELU(erf) -> Dropout -> Linear, the shape of every MLP in §2."""
    return nn.Sequential(nn.LayerNorm(i), nn.Linear(i, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, o))


def heads_split(x: torch.Tensor, h: int) -> torch.Tensor:  # [B, T, H] -> [B, h, T, d]
    B, T, H = x.shape
    return x.reshape(B, T, h, H // h).transpose(1, 2)


def heads_merge(x: torch.Tensor) -> torch.Tensor:  # [B, h, T, d] -> [B, T, H]
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)


def stable_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


class CapsuleSeeding(nn.Module):
    """Z0 = MHA(query=S, key=T, value=T): learned seeds attend over the query tokens (§2.3.3)."""

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        H = cfg.hidden
        self.h = cfg.heads
        self.seeds = nn.Parameter(torch.randn(cfg.capsules, H) * 0.02)  # S [C, H]
        self.in_proj = nn.Linear(H, 3 * H)  # packed W_in (q, k, v)
        self.out_proj = nn.Linear(H, H)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, T: torch.Tensor) -> torch.Tensor:  # T [B, Q, H] -> Z [B, C, H]
        H = T.shape[-1]
        Wq, Wk, Wv = self.in_proj.weight.split(H, 0)
        bq, bk, bv = self.in_proj.bias.split(H, 0)
        S = self.seeds.unsqueeze(0).expand(T.shape[0], -1, -1)  # [B, C, H]
        q = heads_split(F.linear(S, Wq, bq), self.h)  # [B, h, C, d]
        k = heads_split(F.linear(T, Wk, bk), self.h)  # [B, h, Q, d]
        v = heads_split(F.linear(T, Wv, bv), self.h)
        att = self.drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1))
        return self.out_proj(heads_merge(att @ v))  # [B, C, H]


class SlicePrior(nn.Module):
    """Each model's calibration score on the query's own slices, as one logit per (query, model).

    A profile holds a model's shrunk score on every k-means slice (§3.2-3.3), but the network
    is never told which slice the query is in. This block says so: the query's soft membership
    (cosine to the frozen centroids at temperature tau_s) mixes the model's slice scores into a
    prior. It reads only the profile, so a model added later (§3.5) gets a prior with no retraining.
    """

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        S, self.dim, self.tau = cfg.slices, cfg.has_image_col, cfg.slice_temperature
        self.register_buffer("centroids", torch.zeros(S, self.dim))  # [S, D_e], unit length
        self.register_buffer("score_mean", torch.zeros(S))  # standardisation of the profile's
        self.register_buffer("score_std", torch.ones(S))  # slice-score columns 2..S+1

    def forward(self, query: torch.Tensor, model_feat: torch.Tensor) -> torch.Tensor:  # -> [B, K]
        e = query[:, : self.dim]
        e = e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)
        w = torch.softmax(e @ self.centroids.T / self.tau, dim=-1)  # [B, S]
        S = self.centroids.shape[0]
        scores = model_feat[..., 1 : S + 1] * self.score_std + self.score_mean  # [B, K, S] raw shrunk scores
        p = torch.clamp((scores * w.unsqueeze(1)).sum(dim=-1), 1e-3, 1 - 1e-3)
        return torch.log(p) - torch.log1p(-p)


class MemoryBlend(nn.Module):
    """The capability memory's estimate as the default answer, the network as a correction (lr-onnx, issue 21).

    model_feat carries, before its cost column, the memory's columns for each (query, model): the
    estimate as a logit, log1p(evidence) and the query's closeness to the memory (runtime/memory.py).
    They enter each model token through their own Linear(3, H) and the estimate's logit adds to the mu
    logit with a learned gain. The final logit is then

        (1 - w) x memory logit + w x network logit,   w = blend x closeness,

    with `blend` chosen on validation after training (0 = the memory alone) and closeness falling to 0
    for a query far from every labelled one: there the answer is each model's shrunk global mean, and
    the bounded correction delta is scaled by w too. mu never saturates on a query the data cannot speak for.
    """

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        self.n = cfg.memory
        self.proj = nn.Linear(cfg.memory, cfg.hidden)
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("blend", torch.tensor(1.0))

    def columns(self, model_feat: torch.Tensor) -> torch.Tensor:  # [B, K, n]: the columns before the cost
        W = model_feat.shape[-1]
        return model_feat[..., W - 1 - self.n : W - 1]


class CommunicationLayer(nn.Module):
    """One latent communication layer (§2.4): capsule read, masked pairwise attention, decision feedback."""

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        H, p = cfg.hidden, cfg.dropout
        self.h, self.tau = cfg.heads, cfg.feedback_temperature
        # a. model-conditioned capsule read
        self.read_q, self.read_k, self.read_v = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.read_mlp = mlp(3 * H, 2 * H, H, p)
        self.read_ln = nn.LayerNorm(H)
        # b. pairwise model-token attention with pair bias
        self.pair_qkv = nn.Linear(H, 3 * H)
        self.pair_bias = mlp(4 * H, H, cfg.heads, p)
        self.pair_out = nn.Linear(H, H)
        self.pair_ln = nn.LayerNorm(H)
        self.model_ffn = mlp(H, 4 * H, H, p)
        self.model_ffn_ln = nn.LayerNorm(H)
        # c. decision-aware capsule feedback
        self.score = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, 1))
        self.fb_q, self.fb_k, self.fb_v = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.fb_out = nn.Linear(H, H)
        self.fb_ln = nn.LayerNorm(H)
        self.capsule_ffn = mlp(H, 4 * H, H, p)
        self.capsule_ffn_ln = nn.LayerNorm(H)
        self.drop = nn.Dropout(p)

    def forward(self, Z: torch.Tensor, M: torch.Tensor, avail: torch.Tensor):
        H = M.shape[-1]
        a = avail.unsqueeze(-1)  # [B, K, 1]
        # a. each model token reads the capsules (single head, no mask)
        R = torch.softmax(self.read_q(M) @ self.read_k(Z).transpose(1, 2) / math.sqrt(H), dim=-1)  # [B, K, C]
        X = R @ self.read_v(Z)  # [B, K, H]
        M = self.read_ln(M + self.drop(self.read_mlp(torch.cat([M, X, M * X], dim=-1))))
        M = torch.where(a, M, torch.zeros_like(M))

        # b. model tokens attend to each other over available models, with a learned pair bias
        Qp, Kp, Vp = (heads_split(t, self.h) for t in self.pair_qkv(M).split(H, dim=-1))  # [B, h, K, d]
        K = M.shape[1]
        mj = M.unsqueeze(2).expand(-1, -1, K, -1)  # [B, K, K, H] attending j
        mk = M.unsqueeze(1).expand(-1, K, -1, -1)  # [B, K, K, H] attended k
        beta = self.pair_bias(torch.cat([mj, mk, mj - mk, mj * mk], dim=-1)).permute(0, 3, 1, 2)  # [B, h, K, K]
        logits = Qp @ Kp.transpose(-1, -2) / math.sqrt(Qp.shape[-1]) + beta
        logits = torch.where(avail[:, None, None, :], logits, torch.full_like(logits, NEG))
        M = self.pair_ln(M + self.drop(self.pair_out(heads_merge(torch.softmax(logits, dim=-1) @ Vp))))
        M = self.model_ffn_ln(M + self.drop(self.model_ffn(M)))
        M = torch.where(a, M, torch.zeros_like(M))

        # c. capsules attend to the models the current scores favour
        s = self.score(M).squeeze(-1)  # [B, K]
        w = torch.softmax(torch.where(avail, s / self.tau, torch.full_like(s, NEG)), dim=-1)
        Mw = M * w.unsqueeze(-1)
        Fq, Fk, Fv = (
            heads_split(self.fb_q(Z), self.h),
            heads_split(self.fb_k(Mw), self.h),
            heads_split(self.fb_v(Mw), self.h),
        )
        fl = Fq @ Fk.transpose(-1, -2) / math.sqrt(Fq.shape[-1])  # [B, h, C, K]
        fl = torch.where(avail[:, None, None, :], fl, torch.full_like(fl, NEG))
        Z = self.fb_ln(Z + self.drop(self.fb_out(heads_merge(torch.softmax(fl, dim=-1) @ Fv))))
        Z = self.capsule_ffn_ln(Z + self.drop(self.capsule_ffn(Z)))
        return Z, M


class LatentRouter(nn.Module):
    """query [B, D_q], model_feat [B, K, P_in], avail bool [B, K] -> mu, sigma, delta, mu_tilde [B, K]."""

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        self.cfg = cfg
        D, P, H = cfg.query_dim, cfg.model_dim, cfg.hidden
        # standardisation constants fitted on the training split, folded into the graph (§2.1)
        self.register_buffer("q_mean", torch.zeros(D))
        self.register_buffer("q_std", torch.ones(D))
        lo, hi = cfg.image_slice
        self.no_image = nn.Parameter(torch.zeros(hi - lo))  # learned stand-in for the image of text-only queries
        self.query_ln = nn.LayerNorm(D)
        self.query_proj = nn.Linear(D, cfg.query_tokens * H)
        self.seeding = CapsuleSeeding(cfg)
        self.model_mlp = mlp(P, H, H, cfg.dropout)
        if cfg.slices:
            self.slice_prior = SlicePrior(cfg)
            self.prior_proj = nn.Linear(1, H)  # the prior enters each model token ...
            self.prior_gain = nn.Parameter(torch.tensor(1.0))  # ... and the mu logit directly
        if cfg.memory:
            self.memory = MemoryBlend(cfg)
        self.layers = nn.ModuleList(CommunicationLayer(cfg) for _ in range(cfg.layers))
        self.dist_head = mlp(H, H, 2, cfg.dropout)
        self.corr_head = mlp(2 * H, H, 1, cfg.dropout)

    def core_parameter_count(self) -> int:
        """Trainable parameters of the method's network (§2.8), without the no-image embedding."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "no_image")

    def encode_query(self, query: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.image_slice
        has_image = query[:, self.cfg.has_image_col : self.cfg.has_image_col + 1] > 0.5  # [B, 1]
        image = torch.where(has_image, query[:, lo:hi], self.no_image.unsqueeze(0).expand(query.shape[0], -1))
        query = torch.cat([query[:, :lo], image, query[:, hi:]], dim=1)
        return (query - self.q_mean) / self.q_std

    def forward(self, query: torch.Tensor, model_feat: torch.Tensor, avail: torch.Tensor):
        cfg = self.cfg
        q = self.encode_query(query)  # [B, D_q]
        T = self.query_proj(self.query_ln(q)).reshape(q.shape[0], cfg.query_tokens, cfg.hidden)  # [B, Q, H]
        Z = self.seeding(T)  # [B, C, H]
        a = avail.unsqueeze(-1)
        M = self.model_mlp(model_feat)
        if cfg.slices:
            prior = self.slice_prior(query, model_feat)  # [B, K] logit
            M = M + self.prior_proj(prior.unsqueeze(-1))
        if cfg.memory:
            mem = self.memory.columns(model_feat)  # [B, K, 3]
            M = M + self.memory.proj(mem)
        M = torch.where(a, M, torch.zeros_like(M))  # [B, K, H]
        for layer in self.layers:
            Z, M = layer(Z, M, avail)
        r = self.dist_head(M)  # [B, K, 2]
        z = r[..., 0] + self.prior_gain * prior if cfg.slices else r[..., 0]
        sigma = stable_softplus(r[..., 1]) + 1e-4
        zbar = Z.mean(dim=1, keepdim=True).expand(-1, M.shape[1], -1)  # [B, K, H]
        delta = cfg.residual_bound * torch.tanh(self.corr_head(torch.cat([M, zbar], dim=-1)).squeeze(-1))
        if cfg.memory:
            w = self.memory.blend * mem[..., 2]  # [B, K] trust in the network
            z = w * (z + self.memory.gain * mem[..., 0]) + (1 - w) * mem[..., 0]
            delta = w * delta
        mu = torch.sigmoid(z)
        mu_tilde = torch.clamp(mu + delta, 0.0, 1.0)
        neg1 = torch.full_like(mu, -1.0)
        return (
            torch.where(avail, mu, neg1),
            torch.where(avail, sigma, torch.ones_like(sigma)),
            torch.where(avail, delta, torch.zeros_like(delta)),
            torch.where(avail, mu_tilde, neg1),
        )
