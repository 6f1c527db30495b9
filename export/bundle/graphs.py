"""The bundle's graphs, exported from PyTorch: the encoders, the router and the fused graph (`lr-onnx export`).

Each graph is traced with the dynamo exporter, stripped of provenance (so rebuilds are byte-identical), its
GELUs put in the form ONNX Runtime fuses (`fusable_gelu`), and optimised offline at ONNX Runtime's portable BASIC
level."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...runtime.manifest import needed_graphs
from ..train.encoding import IMAGE_SPEC

OPSET = 18  # the torch 2.13 dynamo exporter implements >= 18; 17 needs a lossy down-conversion


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, opset: int) -> None:
    import torch

    # the exporter's own notes (a torchvision op it cannot register, a Split it leaves unfolded) are not the user's
    # business: no graph here uses torchvision, and ONNX Runtime folds what is left at load time
    for name in ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding"):
        logging.getLogger(name).setLevel(logging.ERROR)
    prog = torch.onnx.export(
        module,
        args,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    prog.save(str(path))
    _post_process(path)


def _post_process(path: Path) -> None:
    """Drop the exporter's per-node metadata (Python stack traces with absolute paths of this machine: it leaks
    local paths into shipped bundles and makes rebuilds from another folder differ byte-wise), and put each exact
    GELU in the form ONNX Runtime fuses (`fusable_gelu`)."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
    fusable_gelu(m.graph)
    onnx.save(m, str(path))


def fusable_gelu(graph) -> int:
    """Rewrite each exact GELU the exporter emits as Div(x, sqrt 2), Erf, Add(1), Mul(0.5), Mul(x) into
    ... Add(1), Mul(x), Mul(0.5), the order ONNX Runtime's GeluFusion matches (the same product, reassociated:
    outputs agree to ~1e-7). Fused, the router graph runs 326 nodes instead of 381: 0.92x at B=1, 0.88x at B=64
    (`benchmarks/results/router_graph_profile*.json`, `gelu_fusion_cost.json`); other providers see the same
    standard ops. Returns how many it
    rewrote."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not t.dims}
    made = {o: n for n in graph.node for o in n.output}
    used: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            used.setdefault(i, []).append(n)

    def only(name: str, op: str):
        nxt = used.get(name, [])
        return nxt[0] if len(nxt) == 1 and nxt[0].op_type == op else None

    def const(names, value: float) -> str | None:
        hit = [i for i in names if i in consts and np.isclose(float(consts[i]), value, rtol=1e-6)]
        return hit[0] if hit else None

    rewrote = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = made.get(erf.input[0])
        add = only(erf.output[0], "Add")
        half = add and only(add.output[0], "Mul")
        tail = half and only(half.output[0], "Mul")
        if div is None or div.op_type != "Div" or const(div.input[1:], np.sqrt(2.0)) is None or not tail:
            continue
        x, c05 = div.input[0], const(half.input, 0.5)
        if const(add.input, 1.0) is None or c05 is None or x not in tail.input:
            continue
        out = tail.output[0]  # the first Mul now takes x, the second the 0.5: the nodes keep their places
        half.input[:], half.output[:] = [x, add.output[0]], [out + "_times_x"]
        tail.input[:] = [half.output[0], c05]
        rewrote += 1
    return rewrote


def graph_dims(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {"inputs": {i.name: shape(i) for i in m.graph.input}, "outputs": {o.name: shape(o) for o in m.graph.output}}


def optimize_offline(path: Path) -> None:
    """Save the graph as ONNX Runtime optimises it at the BASIC level (constant folding, redundant-node
    elimination): plain ONNX ops only, so the file stays portable across machines and providers.
    Hardware-specific levels (EXTENDED / ALL layouts, fusions) are left to each session at load time."""
    from ...runtime.sessions import save_optimized

    tmp = path.with_suffix(".opt.onnx")
    save_optimized(path, tmp)
    tmp.replace(path)


def export_graphs(net, out: Path, opset: int = OPSET, *, image: bool = True) -> None:
    """Write the fp32 graphs (the image encoder only if `image`: a router that reads no images needs none);
    assert that B (and K, T) stayed symbolic."""
    import torch
    from torch.export import Dim

    from ..train.encoders import load_image_encoder, load_text_encoder

    B = Dim("batch")
    with torch.no_grad():
        K = Dim("models")
        _export(
            net,
            (torch.randn(3, net.cfg.query_dim), torch.randn(3, 5, net.cfg.model_dim), torch.rand(3, 5) > 0.2),
            out / "router.onnx",
            ["query", "model_feat", "avail"],
            ["mu", "sigma", "delta", "mu_tilde"],
            ({0: B}, {0: B, 1: K}, {0: B, 1: K}),
            opset,
        )
        if image:
            _export(
                load_image_encoder(),
                (torch.randn(2, 3, IMAGE_SPEC.size, IMAGE_SPEC.size),),
                out / "image_encoder.onnx",
                ["pixels"],
                ["image_features"],
                ({0: B},),
                opset,
            )
        T = Dim("tokens", min=2, max=512)
        ids = torch.randint(0, 1000, (2, 7))
        _export(
            load_text_encoder(),
            (ids, torch.ones_like(ids)),
            out / "text_encoder.onnx",
            ["input_ids", "attention_mask"],
            ["text_features"],
            ({0: B, 1: T}, {0: B, 1: T}),
            opset,
        )
    symbolic = {  # the axes of each graph's inputs that must stay dynamic
        "router": {"query": [0], "model_feat": [0, 1], "avail": [0, 1]},
        "image_encoder": {"pixels": [0]},
        "text_encoder": {"input_ids": [0, 1], "attention_mask": [0, 1]},
    }
    for graph in needed_graphs(image):
        name, sym = f"{graph}.onnx", symbolic[graph]
        optimize_offline(out / name)
        dims = graph_dims(out / name)["inputs"]
        for inp, axes in sym.items():
            for ax in axes:
                if not isinstance(dims[inp][ax], str):
                    raise RuntimeError(f"{name}: input {inp} axis {ax} was exported static ({dims[inp]})")


class FusedRouter:
    """Builds the optional end-to-end graph: pixels + token ids + pool -> scores (for GPU serving, or an app in
    another language: decoded pixels, token ids and this one graph).

    One image per query (`has_image` 0 means text-only; its pixels are ignored); the query features are
    assembled in-graph exactly as `runtime.features.query_features` does. With a capability memory, the
    graph carries it too (its keys and outcomes as constants, the search as MatMul + TopK, the estimate as
    Gather and sums, as `runtime.memory.Memory.columns` computes it): `model_feat` is then the pool's
    profiles and costs only, `[B, K, W + 1]`, in the bundle's pool order.
    """

    @staticmethod
    def module(net, memory=None, pool: list[str] | None = None, prior=None):
        import torch
        from torch import nn

        from ...runtime.memory import P_CLIP, block_weights
        from ...runtime.memory_sources import VOTE_K
        from ..train.encoders import load_image_encoder, load_text_encoder

        class Memory(nn.Module):
            def __init__(self):
                super().__init__()
                st = memory.settings
                cols = [memory.models.index(m) if m in memory.models else -1 for m in pool]
                known = np.stack([memory.known[:, c] if c >= 0 else np.zeros(len(memory), bool) for c in cols], 1)
                values = np.stack(
                    [memory.values[:, c] if c >= 0 else np.zeros(len(memory), np.float32) for c in cols], 1
                )
                g = np.array([memory.global_mean[c] if c >= 0 else p for c, p in zip(cols, prior)], np.float32)
                weight = block_weights(st.image_weight)
                for name, a in (
                    ("weight", weight),
                    ("center", memory.center),
                    ("proj", memory.proj),
                    ("keys", memory.keys),
                    ("known", known.astype(np.float32)),
                    ("values", values),
                    ("g", g),
                ):
                    self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(a, np.float32)))
                self.k = min(memory.search_k, len(memory))
                # the settings a query may read with: one per source (runtime.memory_sources), then the memory's own
                src = memory.sources
                sts = ([] if src is None else list(src.settings)) + [st]
                onehot = np.zeros((len(memory), len(sts) - 1), np.float32)
                if src is not None:
                    rows = np.flatnonzero(src.of_row >= 0)
                    onehot[rows, src.of_row[rows]] = 1.0
                for name, a in (
                    ("src_onehot", onehot),
                    ("ks", np.array([min(x.k, self.k) for x in sts], np.float32)),
                    ("kappas", np.array([x.kappa for x in sts], np.float32)),
                    ("taus", np.array([x.tau for x in sts], np.float32)),
                    ("s_refs", np.array([x.s_ref for x in sts], np.float32)),
                ):
                    self.register_buffer(name, torch.from_numpy(a))
                self.n_src = len(sts) - 1

            def forward(self, q):  # q [B, D_q] -> [B, K, 3]
                x = (q[:, : self.center.shape[0]] * self.weight - self.center) @ self.proj
                e = x / torch.clamp(x.norm(dim=1, keepdim=True), min=1e-12)
                sims, idx = torch.topk(e @ self.keys.T, self.k, dim=1)  # nearest first
                code = torch.full((q.shape[0],), self.n_src, dtype=torch.long)  # the memory's own setting
                if self.n_src:  # the source most of the VOTE_K nearest rows come from (Sources.vote)
                    votes = self.src_onehot[idx[:, :VOTE_K]].sum(1)  # [B, S]
                    code = torch.where(votes.max(dim=1).values > 0, votes.argmax(dim=1), code)
                k = self.ks[code].unsqueeze(1)
                s_ref, tau, kappa = self.s_refs[code].unsqueeze(1), self.taus[code].unsqueeze(1), self.kappas[code]
                read = (torch.arange(self.k).unsqueeze(0) < k).float()  # the first k of each query's neighbours
                w = torch.clamp(torch.exp((torch.clamp(sims, min=-1.0) - s_ref) / tau), max=1.0) * read
                ev = (w.unsqueeze(-1) * self.known[idx]).sum(1)  # [B, K]
                ys = (w.unsqueeze(-1) * self.values[idx]).sum(1)
                kappa = kappa.unsqueeze(1)
                est = torch.clamp((ys + kappa * self.g) / (ev + kappa), P_CLIP, 1 - P_CLIP)
                lg = torch.log(est) - torch.log1p(-est)
                close = (w.sum(dim=1, keepdim=True) / k).expand(-1, est.shape[1])
                return torch.stack([lg, torch.log1p(ev), close], dim=-1)

        class Fused(nn.Module):
            def __init__(self):
                super().__init__()
                self.img, self.txt, self.router = load_image_encoder(), load_text_encoder(), net
                self.memory = Memory() if memory is not None else None

            def forward(self, pixels, has_image, input_ids, attention_mask, n_words, model_feat, avail):
                t = self.txt(input_ids, attention_mask)
                t = t / torch.clamp(t.norm(dim=1, keepdim=True), min=1e-12)
                i = self.img(pixels)
                i = i / torch.clamp(i.norm(dim=1, keepdim=True), min=1e-12)
                i = i / torch.clamp(i.norm(dim=1, keepdim=True), min=1e-12)  # pooled over one image, re-normalised
                h = has_image.unsqueeze(1)
                side = torch.cat([h, torch.log1p(h), torch.log1p(n_words.unsqueeze(1))], dim=1)
                q = torch.cat([t, i * h, side], dim=1)
                if self.memory is not None:  # profile, the memory's columns, cost (runtime.profiles.model_features)
                    model_feat = torch.cat([model_feat[..., :-1], self.memory(q), model_feat[..., -1:]], dim=-1)
                return self.router(q, model_feat, avail)

        return Fused().eval()

    @staticmethod
    def export(net, path: Path, opset: int, memory=None, pool: list[str] | None = None, prior=None) -> None:
        import torch
        from torch.export import Dim

        B, T = Dim("batch"), Dim("tokens", min=2, max=512)
        K = len(pool) if memory is not None else 5  # with a memory the pool is fixed: its columns are constants
        width = net.cfg.model_dim - (net.cfg.memory if memory is not None else 0)
        ids = torch.randint(0, 1000, (3, 7))
        args = (
            torch.randn(3, 3, IMAGE_SPEC.size, IMAGE_SPEC.size),
            torch.tensor([1.0, 0.0, 1.0]),
            ids,
            torch.ones_like(ids),
            torch.tensor([5.0, 7.0, 3.0]),
            torch.randn(3, K, width),
            torch.rand(3, K) > 0.2,
        )
        k_dim = None if memory is not None else Dim("models")
        mf_dims, av_dims = ({0: B}, {0: B}) if memory is not None else ({0: B, 1: k_dim}, {0: B, 1: k_dim})
        with torch.no_grad():
            _export(
                FusedRouter.module(net, memory, pool, prior),
                args,
                path,
                ["pixels", "has_image", "input_ids", "attention_mask", "n_words", "model_feat", "avail"],
                ["mu", "sigma", "delta", "mu_tilde"],
                ({0: B}, {0: B}, {0: B, 1: T}, {0: B, 1: T}, {0: B}, mf_dims, av_dims),
                opset,
            )
