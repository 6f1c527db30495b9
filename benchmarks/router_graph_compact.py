"""Would a router graph without shape plumbing be faster? The same network, written for a lean export, timed.

    python benchmarks/router_graph_compact.py [--out benchmarks/results/router_graph_compact.json]

The last note's first idea for the missed B=1 budget (retrieval + router graph <= 5% of the end to end): the
exported graph spends part of its time in Where / Expand / Reshape / Transpose / Shape nodes. `Compact` computes
exactly `LatentRouter.forward` (eval mode) with the masks as multiplications and additive biases, every multi-head
attention as a broadcast product summed per head by a constant [H, h] matrix (no head split or merge, no shape
arithmetic), the seeds' query projection folded to a constant, and broadcasts instead of expands. Both modules,
with the shipped bundle's dimensions and seeded random weights, are exported the way `lr-onnx export` exports the
router (dynamo, opset 18, offline BASIC optimisation) and timed in turns on one ONNX Runtime CPU thread (the
runtime's small-batch session). Not adopted: see the JSON.

What is left is the network's size, so the same export is also timed with 0, 1 and 2 communication layers
(`layers_b1`; 2 is method.md's L and the shipped router's).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lr_onnx.export.bundle.graphs import OPSET, _export, optimize_offline
from lr_onnx.export.train.model import NEG, LatentRouter, RouterConfig, stable_softplus
from lr_onnx.runtime.files import atomic_write_text
from lr_onnx.runtime.memory import COLUMNS
from lr_onnx.runtime.router import Router
from lr_onnx.runtime.sessions import ort, session_options

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ["mu", "sigma", "delta", "mu_tilde"]


class Compact(nn.Module):
    """`LatentRouter.forward` of `net` (its own parameters, eval mode) in ops that export without shape arithmetic."""

    def __init__(self, net: LatentRouter):
        super().__init__()
        self.net, cfg = net, net.cfg
        H, h = cfg.hidden, cfg.heads
        E = torch.zeros(H, h)
        for i in range(h):
            E[i * (H // h) : (i + 1) * (H // h), i] = 1.0
        self.register_buffer("E_scaled", E / math.sqrt(H // h))  # per-head sums of q * k, scaled
        self.register_buffer("E_T", E.T.contiguous())  # each head's weight spread back over its d columns
        s = net.seeding
        Wq, Wk, Wv = s.in_proj.weight.split(H, 0)
        bq, bk, bv = s.in_proj.bias.split(H, 0)
        self.register_buffer("seed_q", F.linear(s.seeds, Wq, bq).detach().unsqueeze(0))  # [1, C, H]: no input
        self.seed_k, self.seed_v = (Wk, bk), (Wv, bv)

    def attend(self, q, k, v, bias=None):  # q [B, Tq, H], k / v [B, Tk, H], bias [B, 1, Tk, 1] -> [B, Tq, H]
        logits = (q.unsqueeze(2) * k.unsqueeze(1)) @ self.E_scaled  # [B, Tq, Tk, h]
        if bias is not None:
            logits = logits + bias
        return ((torch.softmax(logits, dim=2) @ self.E_T) * v.unsqueeze(1)).sum(2)

    def layer(self, L, Z, M, am, kbias, sbias):
        H = M.shape[-1]
        R = torch.softmax(L.read_q(M) @ L.read_k(Z).transpose(1, 2) / math.sqrt(H), dim=-1)
        X = R @ L.read_v(Z)
        M = L.read_ln(M + L.read_mlp(torch.cat([M, X, M * X], dim=-1))) * am
        Qp, Kp, Vp = L.pair_qkv(M).split(H, dim=-1)
        mj, mk = M.unsqueeze(2), M.unsqueeze(1)
        diff = mj - mk
        zero = diff * 0.0  # broadcasts mj and mk to [B, K, K, H] exactly, with no Expand
        beta = L.pair_bias(torch.cat([mj + zero, mk + zero, diff, mj * mk], dim=-1))  # [B, K, K, h]
        logits = (Qp.unsqueeze(2) * Kp.unsqueeze(1)) @ self.E_scaled + beta + kbias
        att = torch.softmax(logits, dim=2) @ self.E_T
        M = L.pair_ln(M + L.pair_out((att * Vp.unsqueeze(1)).sum(2)))
        M = L.model_ffn_ln(M + L.model_ffn(M)) * am
        w = torch.softmax(L.score(M).squeeze(-1) / L.tau + sbias, dim=-1)
        Mw = M * w.unsqueeze(-1)
        Z = L.fb_ln(Z + L.fb_out(self.attend(L.fb_q(Z), L.fb_k(Mw), L.fb_v(Mw), kbias)))
        return L.capsule_ffn_ln(Z + L.capsule_ffn(Z)), M

    def forward(self, query, model_feat, avail):
        net, cfg = self.net, self.net.cfg
        lo, hi = cfg.image_slice
        has = query[:, cfg.has_image_col : cfg.has_image_col + 1] > 0.5
        image = torch.where(has, query[:, lo:hi], net.no_image.unsqueeze(0))
        q = (torch.cat([query[:, :lo], image, query[:, hi:]], dim=1) - net.q_mean) / net.q_std
        T = net.query_proj(net.query_ln(q)).reshape(-1, cfg.query_tokens, cfg.hidden)
        Z = net.seeding.out_proj(self.attend(self.seed_q, F.linear(T, *self.seed_k), F.linear(T, *self.seed_v)))
        af = avail.to(query.dtype)
        am, neg = af.unsqueeze(-1), (1.0 - af) * NEG
        kbias = neg.unsqueeze(1).unsqueeze(-1)  # [B, 1, K, 1]
        M = net.model_mlp(model_feat)
        if cfg.slices:
            prior = net.slice_prior(query, model_feat)
            M = M + net.prior_proj(prior.unsqueeze(-1))
        if cfg.memory:
            mem = net.memory.columns(model_feat)
            M = M + net.memory.proj(mem)
        M = M * am
        for L in net.layers:
            Z, M = self.layer(L, Z, M, am, kbias, neg)
        r = net.dist_head(M)
        z = r[..., 0] + net.prior_gain * prior if cfg.slices else r[..., 0]
        sigma = stable_softplus(r[..., 1]) + 1e-4
        zbar = Z.mean(dim=1, keepdim=True) + M * 0.0
        delta = cfg.residual_bound * torch.tanh(net.corr_head(torch.cat([M, zbar], dim=-1)).squeeze(-1))
        if cfg.memory:
            w = net.memory.blend * mem[..., 2]
            z = w * (z + net.memory.gain * mem[..., 0]) + (1 - w) * mem[..., 0]
            delta = w * delta
        mu = torch.sigmoid(z)
        mt = torch.clamp(mu + delta, 0.0, 1.0)
        return (
            torch.where(avail, mu, -1.0),
            torch.where(avail, sigma, 1.0),
            torch.where(avail, delta, 0.0),
            torch.where(avail, mt, -1.0),
        )


def feeds(cfg: RouterConfig, B: int, K: int, rng) -> dict:
    q = rng.standard_normal((B, cfg.query_dim)).astype(np.float32)
    q[:, cfg.has_image_col] = 1.0
    mf = rng.standard_normal((B, K, cfg.model_dim)).astype(np.float32)
    mf[..., -2] = rng.random((B, K))  # the memory's closeness column
    av = rng.random((B, K)) > 0.2
    av[:, 0] = True
    return {"query": q, "model_feat": mf, "avail": av}


def exported_session(module, sample: dict, path: Path):
    """`module` exported as `lr-onnx export` exports the router (dynamo, dynamic B and K, offline BASIC
    optimisation), as the runtime's single-threaded small-batch session."""
    from torch.export import Dim

    B, K = Dim("batch"), Dim("models")
    with torch.no_grad():
        _export(
            module, tuple(sample.values()), path, list(sample), OUTPUTS, ({0: B}, {0: B, 1: K}, {0: B, 1: K}), OPSET
        )
    optimize_offline(path)
    return ort().InferenceSession(str(path), session_options(threads=1), providers=["CPUExecutionProvider"])


def medians_in_turns(sessions: dict, feed: dict, rounds: int) -> dict:
    """Median ms per run of each session on `feed`, the sessions timed in turns (a host that drifts slows all
    alike), the first tenth of the rounds left out as warm-up."""
    ts: dict = {n: [] for n in sessions}
    for _ in range(rounds):
        for n, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            ts[n].append(time.perf_counter() - t)
    return {n: float(np.median(v[rounds // 10 :])) * 1000 for n, v in ts.items()}


def layers_timing(cfg: RouterConfig, K: int, sample: dict, tmp: str, rounds: int, rng) -> dict:
    """B=1 time of the exported router with 0, 1 and 2 communication layers (seeded random weights), in turns."""
    from dataclasses import replace

    sessions = {
        layers: exported_session(
            LatentRouter(replace(cfg, layers=layers)).eval(), sample, Path(tmp) / f"L{layers}.onnx"
        )
        for layers in (0, 1, 2)
    }
    med = medians_in_turns(sessions, feeds(cfg, 1, K, rng), rounds)
    return {
        "models": K,
        **{f"layers_{n}_ms": round(m, 4) for n, m in med.items()},
        **{f"layers_{n}_over_2": round(med[n] / med[2], 3) for n in (0, 1)},
    }


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "router_graph_compact.json"))
    ap.add_argument("--rounds", type=int, default=400)
    args = ap.parse_args()
    router = Router.load()
    m = router.bundle.manifest
    K = len(router.names)
    cfg = RouterConfig(query_dim=m.query_dim, model_dim=m.model_dim, memory=COLUMNS if router.has_memory else 0)
    torch.manual_seed(0)
    net = LatentRouter(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the initial zeros and ones, so every path matters
        if cfg.memory:
            net.memory.blend.fill_(0.75)
    compact = Compact(net).eval()
    rng = np.random.default_rng(0)
    sample = {k: torch.from_numpy(v) for k, v in feeds(cfg, 3, 5, rng).items()}
    with torch.no_grad():
        torch_diff = max(float((a - b).abs().max()) for a, b in zip(net(*sample.values()), compact(*sample.values())))
    report: dict = {"bundle_dims": {"query_dim": m.query_dim, "model_dim": m.model_dim, "pool": K}}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, module in (("exported", net), ("compact", compact)):
            sessions[name] = exported_session(module, sample, Path(tmp) / f"{name}.onnx")
            report[f"{name}_nodes_in_file"] = len(onnx.load(str(Path(tmp) / f"{name}.onnx")).graph.node)
        report["torch_max_abs_diff"] = torch_diff
        report["timings"] = []
        for b, k in ((1, K), (1, 16), (64, K)):
            f = feeds(cfg, b, k, rng)
            outs = {n: s.run(None, f) for n, s in sessions.items()}
            med = medians_in_turns(sessions, f, args.rounds if b == 1 else max(20, args.rounds // 10))
            report["timings"].append(
                {
                    "batch": b,
                    "models": k,
                    "exported_ms": round(med["exported"], 4),
                    "compact_ms": round(med["compact"], 4),
                    "compact_over_exported": round(med["compact"] / med["exported"], 3),
                    "onnx_max_abs_diff": max(float(np.abs(x - y).max()) for x, y in zip(*outs.values())),
                }
            )
        report["layers_b1"] = layers_timing(cfg, K, sample, tmp, args.rounds, rng)
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
