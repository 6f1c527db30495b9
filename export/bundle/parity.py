"""The checks an export runs on the bundle it wrote: ONNX Runtime against PyTorch (parity.json), the memory graph
against numpy, the fused graph against the separate ones, and the golden fixture (golden.json)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...runtime.manifest import Manifest
from ..files import atomic_write_text

PARITY_SHAPES = [(1, 1), (1, 10), (64, 16), (7, 33)]


def _finite(x):
    """A float for JSON, or None where it is undefined (a degenerate frontier has no nAUC)."""
    return float(x) if x is not None and np.isfinite(x) else None


def bundle_router(bundle: Path, manifest: Manifest):
    """A `Router` on the bundle being written (its manifest has no file list yet: the files are listed unhashed, as
    every check here runs before the hashes are taken)."""
    from ...runtime.bundle import Bundle
    from ...runtime.router import Router

    from ...runtime.manifest import FileEntry

    files = {p.name: FileEntry("", p.stat().st_size) for p in bundle.iterdir() if p.is_file()}
    return Router(Bundle(bundle, replace(manifest, files=files), verify=False), provider="cpu")


def bundle_memory(bundle: Path, manifest: Manifest):
    """The memory as the bundle being built stores it (fp16 files), or None."""
    from ...runtime.memory import Memory

    entry = manifest.memory
    if entry is None:
        return None
    return Memory.from_files({k: (bundle / f).read_bytes() for k, f in entry.files.items()}, entry, str(bundle))


def bundle_model_feat(bundle: Path, manifest: Manifest, q: np.ndarray) -> np.ndarray:
    """`[B, K, P_in]` for the bundle's whole pool on raw features `q`, as `Router.score_features` builds it."""
    from ...runtime.profiles import model_features, pool_features

    mem = bundle_memory(bundle, manifest)
    prior = [p.prior for p in manifest.pool]
    cols = None if mem is None else mem.columns(q, manifest.model_names, prior=prior)
    return model_features(pool_features(manifest.pool), None, cols, rows=len(q))


def check_parity(net, bundle: Path, manifest: Manifest, held: dict, precision: str) -> dict:
    """ORT vs torch on held-out queries and on the required (B, K) shapes, plus the ONNX reference evaluator."""
    import torch
    from onnx.reference import ReferenceEvaluator

    from ...runtime.policy import LAMBDA_GRID, choose
    from ..train.encoding import encode_raw

    router = bundle_router(bundle, manifest)  # the ONNX side is the runtime's own Router on the bundle written
    sess = {"router": router.session("router")}
    rep: dict = {"precision": precision, "checker": "onnx.checker full_check passed for all graphs"}

    # router on random inputs of every required shape, fully masked rows included
    g = torch.Generator().manual_seed(0)
    shapes = []
    for B, K in PARITY_SHAPES:
        q = torch.randn(B, net.cfg.query_dim, generator=g)
        mf = torch.randn(B, K, net.cfg.model_dim, generator=g)
        a = torch.rand(B, K, generator=g) > 0.3
        a[0] = False
        with torch.no_grad():
            ref = [t.numpy() for t in net(q, mf, a)]
        got = sess["router"].run(None, {"query": q.numpy(), "model_feat": mf.numpy(), "avail": a.numpy()})
        diff = max(float(np.abs(x - y).max()) for x, y in zip(got, ref))
        shapes.append(
            {
                "B": B,
                "K": K,
                "max_abs_diff": diff,
                "finite": bool(all(np.isfinite(x).all() for x in got)),
                "masked_row_sentinels_ok": bool((got[3][0] == -1).all()),
            }
        )
    rep["router_shapes"] = shapes
    q = torch.randn(4, net.cfg.query_dim, generator=g)
    mf = torch.randn(4, 6, net.cfg.model_dim, generator=g)
    a = torch.rand(4, 6, generator=g) > 0.3
    feeds = {"query": q.numpy(), "model_feat": mf.numpy(), "avail": a.numpy()}
    refev = ReferenceEvaluator(str(bundle / "router.onnx")).run(None, feeds)
    ortv = sess["router"].run(None, feeds)
    rep["reference_evaluator_max_abs_diff"] = max(float(np.abs(x - y).max()) for x, y in zip(refev, ortv))

    # held-out queries end to end: torch encoders + torch router vs the ONNX graphs
    data, rows = held["data"], held["rows"]
    sub = _subset(data, rows)
    text_t, image_t = encode_raw(sub, progress=False)
    from ...runtime.features import n_words, query_features, without_images

    q_t = query_features(text_t, image_t, [len(p) for p in sub.images], [n_words(x) for x in sub.question])
    q_t = q_t if manifest.reads_images else without_images(q_t)  # what the router reads (Router.encode)
    raw = [
        router.encode_raw([router.prepare(p, q) for p, q in zip(sub.images[s : s + 64], sub.question[s : s + 64])])
        for s in range(0, sub.n, 64)
    ]
    text_o, image_o = np.concatenate([t for t, _ in raw]), np.concatenate([i for _, i in raw])
    nimg = [len(p) for p in sub.images]
    q_o = query_features(text_o, image_o, nimg, [n_words(x) for x in sub.question])
    q_o = q_o if manifest.reads_images else without_images(q_o)
    mf_t, mf_o = bundle_model_feat(bundle, manifest, q_t), bundle_model_feat(bundle, manifest, q_o)
    if manifest.memory is not None:
        rep["memory"] = check_memory_graph(bundle, manifest, q_o)
    avail = sub.A.copy()
    with torch.no_grad():
        ref = [t.numpy() for t in net(torch.from_numpy(q_t), torch.from_numpy(mf_t), torch.from_numpy(avail))]
    got = sess["router"].run(None, {"query": q_o, "model_feat": mf_o, "avail": avail})
    c_hat = mf_t[0, :, -1]
    decisions = [
        (
            choose(ref[3], np.broadcast_to(c_hat, ref[3].shape), avail, lam),
            choose(got[3], np.broadcast_to(c_hat, got[3].shape), avail, lam),
        )
        for lam in LAMBDA_GRID
    ]
    agree = [float((a == b).mean()) for a, b in decisions]
    # what a changed decision costs, in PyTorch's own utility at lambda 0 (LAMBDA_GRID[0]): near-ties flip cheaply
    best, took = decisions[0]
    changed = (best >= 0) & (best != took)
    rows_b = np.arange(sub.n)
    regret = (ref[3][rows_b, best] - ref[3][rows_b, np.maximum(took, 0)])[changed]
    top2 = np.sort(np.where(avail, ref[3], -np.inf), axis=1)[:, -2:]
    near_tie = float(np.mean((top2[:, 1] - top2[:, 0])[avail.sum(1) > 1] < 0.01)) if (avail.sum(1) > 1).any() else 0.0
    from ..evaluate.report import sweep
    from ..evaluate.routing_metrics import nauc

    Yh, Ch = np.nan_to_num(sub.Y), np.nan_to_num(sub.C)
    n_t = nauc([(p["cost"], p["score"]) for p in sweep(ref[3], Yh, Ch, avail, c_hat)])
    n_o = nauc([(p["cost"], p["score"]) for p in sweep(got[3], Yh, Ch, avail, c_hat)])
    rep["held_out"] = {
        "nauc_torch": _finite(n_t),
        "nauc_onnx": _finite(n_o),
        "nauc_change": _finite(n_o - n_t),
        "queries": int(sub.n),
        "with_images": int(sum(1 for p in sub.images if p)),
        "max_abs_diff": {
            n: float(np.abs(x - y).max()) for n, x, y in zip(("mu", "sigma", "delta", "mu_tilde"), got, ref)
        },
        "text_feature_cosine_min": float(_cos(text_t, text_o).min()),
        "image_feature_cosine_min": float(_cos(image_t[np.array(nimg) > 0], image_o[np.array(nimg) > 0]).min())
        if any(nimg) and manifest.reads_images  # a router that reads no images never encodes them
        else None,
        "decision_agreement_lambda0": agree[0],
        "decision_agreement_min_over_grid": min(agree),
        "changed_decision_regret_lambda0": {
            "mean": float(regret.mean()) if len(regret) else 0.0,
            "max": float(regret.max()) if len(regret) else 0.0,
        },
        "near_tie_share_lambda0": near_tie,
    }
    rep["bars"] = {
        "max_abs_diff": 1e-4 if precision == "fp32" else None,
        "agreement": 1.0 if precision == "fp32" else 0.98,
    }
    router_ok = all(s["max_abs_diff"] <= 1e-4 and s["finite"] and s["masked_row_sentinels_ok"] for s in shapes)
    if precision == "fp32":
        rep["passed"] = bool(router_ok and max(rep["held_out"]["max_abs_diff"].values()) <= 1e-4 and agree[0] == 1.0)
    else:
        rep["passed"] = bool(router_ok and agree[0] >= 0.98)
    if "memory" in rep:  # the search graph finds what numpy finds (ties aside)
        rep["passed"] = bool(
            rep["passed"]
            and rep["memory"]["similarity_max_abs_diff"] <= 1e-4
            and rep["memory"]["neighbour_overlap"] >= 0.99
        )
    return rep


TIE = 1e-5  # similarities this close to the k-th nearest count as tied with it


def check_memory_graph(bundle: Path, manifest: Manifest, q: np.ndarray) -> dict:
    """memory.onnx (ONNX Runtime) against the numpy search it replaces, on held-out query features."""
    from ...runtime.sessions import new_session

    mem = bundle_memory(bundle, manifest)
    sess = new_session(bundle / "memory.onnx", provider="cpu")
    sims, idx = sess.run(None, {"query": q.astype(np.float32), "keys": mem.keys})
    ref_s, ref_i = mem.neighbours(mem.embed(q), mem.search_k)
    # numpy's neighbours that the graph returns too, or that tie with the k-th nearest: among rows as near as the
    # k-th, which are kept is the search's own choice (text-only memories hold many identical questions)
    tied = ref_s >= ref_s.min(axis=1, keepdims=True) - TIE
    same = np.mean([np.mean([j in set(a) or t for j, t in zip(b, tb)]) for a, b, tb in zip(idx, ref_i, tied)])
    ref_s = -np.sort(-ref_s, axis=1)
    names = manifest.model_names
    cols = mem.columns(None, names, found=(sims, idx))
    ref_cols = mem.columns(q, names)
    return {
        "similarity_max_abs_diff": float(np.abs(sims - ref_s).max()),
        "neighbour_overlap": float(same),
        "columns_max_abs_diff": float(np.abs(cols - ref_cols).max()),
        "rows": len(mem),
        "dim": mem.dim,
        "k": mem.search_k,
    }


def check_fused(bundle: Path, manifest: Manifest, held: dict | None = None) -> dict:
    """The fused graph against the three separate graphs (same pixels, tokens and pool): on the golden queries, and
    on up to 16 held-out one-image test queries (near the memory's rows, so its in-graph search is exercised)."""
    from ...runtime.features import IMAGE_DIM, n_words, pool_images, query_features
    from ...runtime.manage import _golden_image
    from ...runtime.preprocess import image_tensor, load_tokenizer, open_image, tokenize
    from ...runtime.profiles import model_features, pool_features

    from ...runtime.sessions import new_session

    s = {
        n: new_session(bundle / f"{n}.onnx", provider="cpu")
        for n in ("fused", "image_encoder", "text_encoder", "router")
    }
    spec = manifest.image
    tok = load_tokenizer(bundle / "tokenizer.json", manifest.text)
    golden = np.repeat(image_tensor(open_image(_golden_image()), spec)[None], len(GOLDEN_QUESTIONS), 0)
    cases = {"golden": ([q for q, _ in GOLDEN_QUESTIONS], golden, np.array([h for _, h in GOLDEN_QUESTIONS], float))}
    if held is not None:
        d = held["data"]
        rows = [i for i in held["rows"] if len(d.images[i]) == 1][:16]
        if rows:
            px = np.stack([image_tensor(open_image(d.images[i][0]), spec) for i in rows])
            cases["held_out"] = ([d.question[i] for i in rows], px, np.ones(len(rows)))
    out = {}
    for name, (qs, px, has) in cases.items():
        has = has.astype(np.float32)
        ids, mask = tokenize(tok, qs)
        words = np.array([n_words(q) for q in qs], np.float32)
        text = s["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
        img = s["image_encoder"].run(None, {"pixels": px})[0]
        image = np.stack(
            [pool_images(img[j : j + 1]) if h else np.zeros(IMAGE_DIM, np.float32) for j, h in enumerate(has)]
        )
        q = query_features(text, image, has.astype(int), words)
        mf = bundle_model_feat(bundle, manifest, q)  # the memory's columns (numpy) from the separate graphs' features
        avail = np.ones(mf.shape[:2], bool)
        own = model_features(pool_features(manifest.pool), None, None, rows=len(qs)) if manifest.memory else mf
        fused = s["fused"].run(
            None,
            {
                "pixels": px,
                "has_image": has,
                "input_ids": ids,
                "attention_mask": mask,
                "n_words": words,
                "model_feat": own,
                "avail": avail,
            },
        )[3]
        sep = s["router"].run(None, {"query": q, "model_feat": mf, "avail": avail})[3]
        out[name] = float(np.abs(fused - sep).max())
        if manifest.memory is not None:
            out[f"{name}_mean_memory_closeness"] = float(mf[:, 0, -2].mean())
    return {"max_abs_diff_vs_separate_graphs": max(v for k, v in out.items() if "closeness" not in k), **out}


GOLDEN_QUESTIONS = [
    ("What is 12 * 13?", False),
    ("What does this image show?", True),
    ("What is the value shown?", True),
    ("Which city is the capital of France?", False),
]
GOLDEN_TOLERANCE = {"fp32": 1e-4, "fp16": 0.05, "int8": 0.1, "int8-full": 0.3}


def write_golden(net, bundle: Path, manifest: Manifest, precision: str) -> None:
    """golden.json: PyTorch's mu_tilde on fixed queries, for `lr-onnx doctor` to re-check with ONNX Runtime."""
    import torch

    from ...runtime.features import n_words, pool_images, query_features, without_images
    from ...runtime.manage import _golden_image
    from ...runtime.preprocess import image_tensor, load_tokenizer, open_image, tokenize
    from ..train.encoders import load_image_encoder, load_text_encoder

    spec = manifest.image
    tok = load_tokenizer(bundle / "tokenizer.json", manifest.text)
    qs = [q for q, _ in GOLDEN_QUESTIONS]
    ids, mask = tokenize(tok, qs)
    with torch.no_grad():
        text = load_text_encoder()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        px = image_tensor(open_image(_golden_image()), spec)[None]
        img_vec = pool_images(load_image_encoder()(torch.from_numpy(px)).numpy())
        image = np.stack([img_vec if has else np.zeros_like(img_vec) for _, has in GOLDEN_QUESTIONS])
        q = query_features(text, image, [int(h) for _, h in GOLDEN_QUESTIONS], [n_words(x) for x in qs])
        q = q if manifest.reads_images else without_images(q)  # what the router reads (Router.encode)
        mf = torch.from_numpy(bundle_model_feat(bundle, manifest, q))
        mt = net(torch.from_numpy(q), mf, torch.ones(mf.shape[:2], dtype=torch.bool))[3].numpy()
    golden = {
        "queries": [{"question": x, "image": h} for x, h in GOLDEN_QUESTIONS],
        "mu_tilde": mt.tolist(),
        "pool": manifest.model_names,
        "tolerance": GOLDEN_TOLERANCE[precision],
    }
    atomic_write_text(bundle / "golden.json", json.dumps(golden, indent=2) + "\n")


def _cos(a, b):
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)


def _subset(data, rows):
    from ..data.format import RoutingData

    pick = list(rows)
    return RoutingData(
        root=data.root,
        ids=[data.ids[i] for i in pick],
        split=[data.split[i] for i in pick],
        dataset=[data.dataset[i] for i in pick],
        question=[data.question[i] for i in pick],
        images=[data.images[i] for i in pick],
        models=data.models,
        Y=data.Y[pick],
        C=data.C[pick],
        A=data.A[pick],
        Lat=data.Lat[pick],
        Tok=data.Tok[pick],
        meta=[data.meta[i] for i in pick],
    )
