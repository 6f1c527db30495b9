"""`lr-onnx export`: a trained run becomes an ONNX bundle the slim runtime can serve.

A bundle is a plain folder: `image_encoder.onnx`, `text_encoder.onnx`, `router.onnx`
(capsules + communication + heads, dynamic batch B and candidate count K),
`tokenizer.json`, `manifest.json` (schema, sha256 of every file, graph inputs and
outputs, preprocessing, pool with prices / expected costs / standardised profiles,
lambda presets, training metrics, tool versions) and `parity.json`, the checks the
export ran on itself. Loading a bundle never executes code.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from ..runtime.bundle import MANIFEST, SCHEMA_VERSION
from ..runtime.errors import DataError
from ..runtime.profiles import ProfileSpace
from ..version import __version__
from .files import atomic_write_text, sha256_file, staged_output

OPSET = 18  # the torch 2.13 dynamo exporter implements >= 18; 17 needs a lossy down-conversion
PARITY_SHAPES = [(1, 1), (1, 10), (64, 16), (7, 33)]
# int8: MiniLM 8-bit, the CNN stays fp32; int8-full: the CNN too. Measured with the 8-slice router on 1000 demo
# test queries, the 8-bit text encoder alone changes 1.0% of the lambda-0 decisions, a static int8 CNN 4.4%, and
# even 5 of its 49 convs in int8 (feature cosine 0.99991) 0.9%: a quarter of the router's decisions are near-ties
# (top-2 mu_tilde within 0.01), which any encoder error flips (the slice-prior router: a fifth, int8-full 2.3% on
# 256 held-out queries). So `int8` keeps the CNN (13 MB, 3.7 ms) in fp32 to hold 98%.
PRECISIONS = ("fp32", "int8", "int8-full", "fp16")


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, opset: int) -> None:
    import torch

    prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=input_names,
                             output_names=output_names, opset_version=opset, external_data=False, verbose=False)
    prog.save(str(path))
    _strip_provenance(path)


def _strip_provenance(path: Path) -> None:
    """Drop the exporter's per-node metadata (Python stack traces with absolute paths of this machine):
    it leaks local paths into shipped bundles and makes rebuilds from another folder differ byte-wise."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
    onnx.save(m, str(path))


def _dims(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {"inputs": {i.name: shape(i) for i in m.graph.input}, "outputs": {o.name: shape(o) for o in m.graph.output}}


def optimize_offline(path: Path) -> None:
    """Save the graph as ONNX Runtime optimises it at the BASIC level (constant folding, redundant-node
    elimination): plain ONNX ops only, so the file stays portable across machines and providers.
    Hardware-specific levels (EXTENDED / ALL layouts, fusions) are left to each session at load time."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".opt.onnx")
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def export_graphs(net, out: Path, opset: int = OPSET) -> None:
    """Write the three fp32 graphs; assert that B (and K, T) stayed symbolic."""
    import torch
    from torch.export import Dim

    from .encoders import load_image_encoder, load_text_encoder

    B = Dim("batch")
    with torch.no_grad():
        K = Dim("models")
        _export(net, (torch.randn(3, net.cfg.query_dim), torch.randn(3, 5, net.cfg.model_dim), torch.rand(3, 5) > 0.2),
                out / "router.onnx", ["query", "model_feat", "avail"], ["mu", "sigma", "delta", "mu_tilde"],
                ({0: B}, {0: B, 1: K}, {0: B, 1: K}), opset)
        _export(load_image_encoder(), (torch.randn(2, 3, 224, 224),), out / "image_encoder.onnx", ["pixels"],
                ["image_features"], ({0: B},), opset)
        T = Dim("tokens", min=2, max=512)
        ids = torch.randint(0, 1000, (2, 7))
        _export(load_text_encoder(), (ids, torch.ones_like(ids)), out / "text_encoder.onnx",
                ["input_ids", "attention_mask"], ["text_features"], ({0: B, 1: T}, {0: B, 1: T}), opset)
    for name in ("router.onnx", "image_encoder.onnx", "text_encoder.onnx"):
        optimize_offline(out / name)
    for name, sym in (("router.onnx", {"query": [0], "model_feat": [0, 1], "avail": [0, 1]}),
                      ("image_encoder.onnx", {"pixels": [0]}),
                      ("text_encoder.onnx", {"input_ids": [0, 1], "attention_mask": [0, 1]})):
        dims = _dims(out / name)["inputs"]
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

        from ..runtime.memory import P_CLIP, block_weights
        from .encoders import load_image_encoder, load_text_encoder

        class Memory(nn.Module):
            def __init__(self):
                super().__init__()
                st = memory.settings
                cols = [memory.models.index(m) if m in memory.models else -1 for m in pool]
                known = np.stack([memory.known[:, c] if c >= 0 else np.zeros(len(memory), bool) for c in cols], 1)
                values = np.stack([memory.values[:, c] if c >= 0 else np.zeros(len(memory), np.float32) for c in cols], 1)
                g = np.array([memory.global_mean[c] if c >= 0 else p for c, p in zip(cols, prior)], np.float32)
                weight = block_weights(st.image_weight)
                for name, a in (("weight", weight), ("center", memory.center), ("proj", memory.proj),
                                ("keys", memory.keys), ("known", known.astype(np.float32)), ("values", values),
                                ("g", g)):
                    self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(a, np.float32)))
                self.k, self.kappa, self.tau, self.s_ref = min(st.k, len(memory)), st.kappa, st.tau, st.s_ref
                self.has = torch.tensor([c >= 0 for c in cols])

            def forward(self, q):                                           # q [B, D_q] -> [B, K, 3]
                x = (q[:, :self.center.shape[0]] * self.weight - self.center) @ self.proj
                e = x / torch.clamp(x.norm(dim=1, keepdim=True), min=1e-12)
                sims, idx = torch.topk(e @ self.keys.T, self.k, dim=1)
                w = torch.clamp(torch.exp((torch.clamp(sims, min=-1.0) - self.s_ref) / self.tau), max=1.0)
                ev = (w.unsqueeze(-1) * self.known[idx]).sum(1)           # [B, K]
                ys = (w.unsqueeze(-1) * self.values[idx]).sum(1)
                est = torch.clamp((ys + self.kappa * self.g) / (ev + self.kappa), P_CLIP, 1 - P_CLIP)
                lg = torch.log(est) - torch.log1p(-est)
                close = w.mean(dim=1, keepdim=True).expand(-1, est.shape[1])
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
                if self.memory is not None:   # profile, the memory's columns, cost (runtime.profiles.model_features)
                    model_feat = torch.cat([model_feat[..., :-1], self.memory(q), model_feat[..., -1:]], dim=-1)
                return self.router(q, model_feat, avail)

        return Fused().eval()

    @staticmethod
    def export(net, path: Path, opset: int, memory=None, pool: list[str] | None = None, prior=None) -> None:
        import torch
        from torch.export import Dim

        B, T = Dim("batch"), Dim("tokens", min=2, max=512)
        K = len(pool) if memory is not None else 5      # with a memory the pool is fixed: its columns are constants
        width = net.cfg.model_dim - (net.cfg.memory if memory is not None else 0)
        ids = torch.randint(0, 1000, (3, 7))
        args = (torch.randn(3, 3, 224, 224), torch.tensor([1.0, 0.0, 1.0]), ids, torch.ones_like(ids),
                torch.tensor([5.0, 7.0, 3.0]), torch.randn(3, K, width), torch.rand(3, K) > 0.2)
        k_dim = None if memory is not None else Dim("models")
        mf_dims, av_dims = ({0: B}, {0: B}) if memory is not None else ({0: B, 1: k_dim}, {0: B, 1: k_dim})
        with torch.no_grad():
            _export(FusedRouter.module(net, memory, pool, prior), args, path,
                    ["pixels", "has_image", "input_ids", "attention_mask", "n_words", "model_feat", "avail"],
                    ["mu", "sigma", "delta", "mu_tilde"],
                    ({0: B}, {0: B}, {0: B, 1: T}, {0: B, 1: T}, {0: B}, mf_dims, av_dims), opset)


def quantize_text_encoder(src: Path, dst: Path) -> None:
    """MiniLM to 8 bits: MatMul weights in blocks of 64 (MatMulNBits, int8 compute), embedding table int8.

    Measured on 300 demo questions (cosine to fp32 mean / min, ms at B=1, MB): fp32 1.000 / 1.000,
    2.9, 90.5; dynamic int8 per-channel reduce_range 0.9906 / 0.9665, 0.9, 23.0; this 0.9991 / 0.9978,
    1.05, 23.5 (block 32: 0.9993 / 0.9980 but 24.2 MB; block 128: 0.9984 / 0.9948).
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    for h in root.handlers[:]:             # that module calls logging.basicConfig(INFO) on import: undo it
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(
        block_size=64, is_symmetric=True, bits=8, accuracy_level=4))
    q.process()
    mid = dst.with_name(dst.stem + ".nbits.onnx")
    q.model.save_model_to_file(str(mid), False)
    root.setLevel(logging.ERROR)             # its "consider pre-processing" hint is for activation quantisation
    try:
        quantize_dynamic(str(mid), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["Gather"])
    finally:
        root.setLevel(level)
    mid.unlink()


def quantize_encoders(out: Path, calib_pixels: np.ndarray, *, image: bool = True) -> None:
    """int8 encoders: 8-bit weights for MiniLM, static QDQ per-channel for the CNN (if `image`)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = out / "text_encoder.fp32.onnx"
    shutil.move(out / "text_encoder.onnx", tmp)
    quantize_text_encoder(tmp, out / "text_encoder.onnx")
    tmp.unlink()
    if not image:
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"pixels": calib_pixels[i:i + 1]} for i in range(len(calib_pixels))])

        def get_next(self):
            return next(self.items, None)

    src, pre = out / "image_encoder.fp32.onnx", out / "image_encoder.pre.onnx"
    shutil.move(out / "image_encoder.onnx", src)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    # Measured on 120 demo images (cosine to fp32 mean / min, ms at B=1; fp32 3.7 ms): MinMax + reduce_range
    # 0.886 / 0.619; Percentile 99.99 with the stem and head convs kept fp32 0.992 / 0.961, 2.1 ms; Entropy
    # 0.990 / 0.965; the first third of the convs (the high-resolution, few-channel layers) kept fp32:
    # 0.9973 / 0.991, 1.7 ms (the Q/DQ pairs cost more than they save there); the last half kept fp32
    # instead: 0.993 / 0.960.
    import onnx

    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    quantize_static(str(pre), str(out / "image_encoder.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"CalibPercentile": 99.99}, nodes_to_exclude=convs[:len(convs) // 3] + [convs[-1]])
    src.unlink()
    pre.unlink()


def to_fp16(out: Path) -> None:
    """fp16 encoders for GPU serving (the router stays fp32, as for int8); LayerNorm, Softmax, Sigmoid and
    the softplus/GELU pieces stay fp32. The converter appends its input casts after their consumers, so
    the nodes are put back in topological order before saving (`onnx.checker` rejects the graph otherwise)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        m = onnx.load(str(out / name))
        m16 = convert_float_to_float16(m, keep_io_types=True, op_block_list=[
            "LayerNormalization", "Softmax", "Sigmoid", "Softplus", "Log", "Exp", "Erf"])
        OnnxModel(m16).topological_sort()
        del m16.graph.value_info[:]  # some stale fp16 annotations around the kept-fp32 ops; types are re-inferred
        onnx.save(m16, str(out / name))


def export_bundle(run_dir: str | Path, out: str | Path, *, precision: str = "fp32", opset: int = OPSET,
                  parity_queries: int = 256, fused: bool = False, progress: bool = True) -> dict:
    """Export `run_dir` to the bundle folder `out` (must not exist); returns parity.json's content."""
    import onnx
    import torch

    from .encoders import minilm_dir
    from .features import ENCODER_VERSION, IMAGE_SPEC, TEXT_SPEC
    from .train import load_router

    if precision not in PRECISIONS:
        raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    run_dir = Path(run_dir)
    net, cfg = load_router(run_dir)
    if cfg["train"].get("text_only"):
        raise DataError(f"{run_dir} is a --text-only ablation run: its router expects query features with the image "
                        f"removed, which the runtime never produces; export a run trained without --text-only")
    from .pool import read_profiles, run_memory

    prof = read_profiles(run_dir)
    t0 = time.perf_counter()
    with staged_output(out) as tmp:
        export_graphs(net, tmp, opset)
        memory = run_memory(run_dir, prof) if net.cfg.memory else None   # rebuilt once, for every graph below
        if fused:
            FusedRouter.export(net, tmp / "fused.onnx", opset, memory, [m["name"] for m in prof["models"]],
                               [r[0] for r in prof["raw_profiles"]])
        held_out = _held_out(cfg, parity_queries, [m["name"] for m in prof["models"]])
        if precision in ("int8", "int8-full"):
            quantize_encoders(tmp, held_out["calib_pixels"], image=precision == "int8-full")
        elif precision == "fp16":
            to_fp16(tmp)
        shutil.copyfile(minilm_dir() / "tokenizer.json", tmp / "tokenizer.json")
        if memory is not None:
            from .memory_graph import build_memory_graph

            build_memory_graph(memory, tmp / "memory.onnx", opset)
        graph_files = ["router.onnx", "image_encoder.onnx", "text_encoder.onnx"] + (["fused.onnx"] if fused else []) \
            + (["memory.onnx"] if memory is not None else [])
        for name in graph_files:
            onnx.checker.check_model(str(tmp / name), full_check=True)
        space = ProfileSpace.from_dict(prof["space"])
        c_hat = np.asarray(prof["e_bar"], float) / space.cost_scale
        std = space.standardise(np.asarray(prof["raw_profiles"], float))
        metrics = _metrics_summary(run_dir)
        presets = metrics.pop("presets", {})
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": {"lr_onnx": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": _ort_version(), "python": platform.python_version()},
            "precision": precision, "opset": opset, "setting": cfg["train"]["setting"],
            "encoder_version": ENCODER_VERSION,
            "graphs": {name.removesuffix(".onnx"): {"file": name, **_dims(tmp / name)} for name in graph_files},
            "preprocessing": {"image": IMAGE_SPEC.to_dict(), "text": {**TEXT_SPEC.to_dict(),
                                                                       "tokenizer_file": "tokenizer.json"}},
            "query_dim": net.cfg.query_dim, "model_dim": net.cfg.model_dim,
            "pool": [{"name": m["name"], "price_in_per_mtok": m.get("price_in_per_mtok"),
                      "price_out_per_mtok": m.get("price_out_per_mtok"), "expected_cost_usd": float(e),
                      "cost_hat": float(c), "raw_profile": r, "profile": s.tolist(),
                      **({"image_tokens": cm["image_tokens"], "output_tokens": cm["output_tokens"]}
                         if cm and cm.get("output_tokens") is not None else {})}
                     for m, e, c, r, s, cm in zip(prof["models"], prof["e_bar"], c_hat, prof["raw_profiles"], std,
                                                  prof.get("cost_model") or [None] * len(prof["models"]))],
            "profile_space": space.to_dict(),
            "cost_estimator": prof.get("cost_estimator", "calib_mean"),
            "lambda": {"default": metrics.get("lambda_val", 0.0), "presets": presets},
            "coverage": coverage_threshold(held_out, space),
            "training_metrics": metrics,
        }
        if memory is not None:
            blend = (cfg.get("memory") or {}).get("blend", {}).get("chosen")
            manifest["memory"] = {**memory.write(tmp), **({"blend": float(blend)} if blend is not None else {})}
        parity = check_parity(net, tmp, manifest, held_out, precision)
        if fused:
            parity["fused"] = check_fused(tmp, manifest, held_out)
        write_golden(net, tmp, manifest, precision)
        # parity.json is written before the hashes, so the manifest lists it too (a closed bundle: every file
        # the runtime may open is listed and verified); it holds no timings, so rebuilds stay byte-identical
        atomic_write_text(tmp / "parity.json", json.dumps(parity, indent=2, allow_nan=False) + "\n")
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest["files"] = {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return dict(parity, export_seconds=round(time.perf_counter() - t0, 1))


def bundle_memory(bundle: Path, manifest: dict):
    """The memory as the bundle being built stores it (fp16 files), or None."""
    from ..runtime.memory import FILES, Memory

    entry = manifest.get("memory")
    if entry is None:
        return None
    return Memory.from_files({k: (bundle / entry["files"][k]).read_bytes() for k in FILES}, entry, str(bundle))


def bundle_model_feat(bundle: Path, manifest: dict, q: np.ndarray) -> np.ndarray:
    """`[B, K, P_in]` for the bundle's whole pool on raw features `q`, as `Router.score_features` builds it."""
    from ..runtime.profiles import model_features, pool_features

    mem = bundle_memory(bundle, manifest)
    names = [p["name"] for p in manifest["pool"]]
    cols = None if mem is None else mem.columns(q, names, prior=[p["raw_profile"][0] for p in manifest["pool"]])
    return model_features(pool_features(manifest), None, cols, rows=len(q))


def _finite(x):
    """A float for JSON, or None where it is undefined (a degenerate frontier has no nAUC)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ModuleNotFoundError:
        return None


def _metrics_summary(run_dir: Path) -> dict:
    p = run_dir / "metrics.json"
    if not p.is_file():
        return {}
    m = json.loads(p.read_text())
    lr = m["methods"]["latentrouter"]
    return {"split": m["split"], "score_at_lambda0": lr["score_at_lambda0"], "cost_at_lambda0": lr["cost_at_lambda0"],
            "nauc": lr["nauc"], "qnc": lr["qnc"], "lambda_val": lr.get("lambda_val", 0.0),
            "presets": lr.get("presets", {}),
            "best_single": m["best_single"], "oracle": m["oracle"]}


def _held_out(cfg: dict, n: int, pool: list[str]) -> dict:
    """Test-split queries of the training data: pixels of their first images, questions, raw features; the outcome
    columns in the order of the run's pool (a model removed from the run is dropped, one added from another file
    has no outcome here)."""
    from dataclasses import replace

    from ..runtime.preprocess import preprocess_image
    from .data import load_dataset
    from .features import IMAGE_SPEC
    from .splits import ensure_splits, split_masks

    data = load_dataset(cfg["data"])
    if data.model_names != pool:
        idx = [data.model_names.index(m) if m in data.model_names else -1 for m in pool]

        def cols(a, fill):
            return np.stack([a[:, j] if j >= 0 else np.full(len(a), fill, a.dtype) for j in idx], axis=1)

        data = replace(data, models=[data.models[j] if j >= 0 else {"name": m} for j, m in zip(idx, pool)],
                       **{f: cols(getattr(data, f), False if f == "A" else np.nan) for f in ("Y", "C", "A", "Lat", "Tok")})
    masks = split_masks(data, ensure_splits(data))
    test = np.flatnonzero(masks["test"])
    rows = test[np.unique(np.linspace(0, len(test) - 1, min(n, len(test))).astype(int))] if len(test) else test
    # spread over the whole test split: merged data lists its sources one after the other
    calib = [i for i in np.flatnonzero(masks["train"]) if data.images[i]][:128]  # quantisation never sees test
    pixels = np.stack([preprocess_image(data.images[i][0], IMAGE_SPEC) for i in calib]) if calib \
        else np.zeros((1, 3, 224, 224), np.float32)
    return {"data": data, "rows": rows, "calib_pixels": pixels, "train_rows": np.flatnonzero(masks["train"])}


COVERAGE_PERCENTILE = 1.0


def coverage_threshold(held: dict, space: ProfileSpace) -> dict:
    """The out-of-coverage threshold: the 1st percentile of the training queries' best cosine similarity to
    the slice centroids (their own distribution; test rows never enter), with a few quantiles for the record."""
    from ..runtime.profiles import slice_embedding
    from .features import encode_dataset

    q = encode_dataset(held["data"], progress=False)[held["train_rows"]]
    best = (slice_embedding(q) @ space.centroids.T).max(axis=1)
    return {"threshold": float(np.percentile(best, COVERAGE_PERCENTILE)), "percentile": COVERAGE_PERCENTILE,
            "train_similarity": {f"p{p}": round(float(np.percentile(best, p)), 4) for p in (1, 5, 50)},
            "train_queries": int(len(best))}


def check_parity(net, bundle: Path, manifest: dict, held: dict, precision: str) -> dict:
    """ORT vs torch on held-out queries and on the required (B, K) shapes, plus the ONNX reference evaluator."""
    import onnxruntime as ort
    import torch
    from onnx.reference import ReferenceEvaluator

    from ..runtime.policy import LAMBDA_GRID, choose
    from .features import encode_raw

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = {n: ort.InferenceSession(str(bundle / f"{n}.onnx"), opts, providers=["CPUExecutionProvider"])
            for n in ("router", "image_encoder", "text_encoder")}
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
        shapes.append({"B": B, "K": K, "max_abs_diff": diff, "finite": bool(all(np.isfinite(x).all() for x in got)),
                       "masked_row_sentinels_ok": bool((got[3][0] == -1).all())})
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
    from ..runtime.features import n_words, pool_images, query_features
    from ..runtime.preprocess import ImageSpec, TextSpec, load_tokenizer, preprocess_image, tokenize

    spec_i = ImageSpec.from_dict(manifest["preprocessing"]["image"])
    tok = load_tokenizer(bundle / "tokenizer.json", TextSpec(**{k: v for k, v in manifest["preprocessing"]["text"].items()
                                                                 if k in ("tokenizer_file", "max_tokens")}))
    text_o = np.zeros_like(text_t)
    for s in range(0, sub.n, 64):
        ids, mask = tokenize(tok, sub.question[s:s + 64])
        text_o[s:s + 64] = sess["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    image_o = np.zeros_like(image_t)
    for i, paths in enumerate(sub.images):
        if paths:
            px = np.stack([preprocess_image(p, spec_i) for p in paths])
            image_o[i] = pool_images(sess["image_encoder"].run(None, {"pixels": px})[0])
    nimg, words = [len(p) for p in sub.images], [n_words(x) for x in sub.question]
    q_t = query_features(text_t, image_t, nimg, words)
    q_o = query_features(text_o, image_o, nimg, words)
    mf_t, mf_o = bundle_model_feat(bundle, manifest, q_t), bundle_model_feat(bundle, manifest, q_o)
    if "memory" in manifest:
        rep["memory"] = check_memory_graph(bundle, manifest, q_o)
    avail = sub.A.copy()
    with torch.no_grad():
        ref = [t.numpy() for t in net(torch.from_numpy(q_t), torch.from_numpy(mf_t), torch.from_numpy(avail))]
    got = sess["router"].run(None, {"query": q_o, "model_feat": mf_o, "avail": avail})
    c_hat = mf_t[0, :, -1]
    decisions = [(choose(ref[3], np.broadcast_to(c_hat, ref[3].shape), avail, lam),
                  choose(got[3], np.broadcast_to(c_hat, got[3].shape), avail, lam)) for lam in LAMBDA_GRID]
    agree = [float((a == b).mean()) for a, b in decisions]
    # what a changed decision costs, in PyTorch's own utility at lambda 0 (LAMBDA_GRID[0]): near-ties flip cheaply
    best, took = decisions[0]
    changed = (best >= 0) & (best != took)
    rows_b = np.arange(sub.n)
    regret = (ref[3][rows_b, best] - ref[3][rows_b, np.maximum(took, 0)])[changed]
    top2 = np.sort(np.where(avail, ref[3], -np.inf), axis=1)[:, -2:]
    near_tie = float(np.mean((top2[:, 1] - top2[:, 0])[avail.sum(1) > 1] < 0.01)) if (avail.sum(1) > 1).any() else 0.0
    from .evaluate import sweep
    from .metrics import nauc

    Yh, Ch = np.nan_to_num(sub.Y), np.nan_to_num(sub.C)
    n_t = nauc([(p["cost"], p["score"]) for p in sweep(ref[3], Yh, Ch, avail, c_hat)])
    n_o = nauc([(p["cost"], p["score"]) for p in sweep(got[3], Yh, Ch, avail, c_hat)])
    rep["held_out"] = {
        "nauc_torch": _finite(n_t), "nauc_onnx": _finite(n_o), "nauc_change": _finite(n_o - n_t),
        "queries": int(sub.n), "with_images": int(sum(1 for p in sub.images if p)),
        "max_abs_diff": {n: float(np.abs(x - y).max()) for n, x, y in zip(("mu", "sigma", "delta", "mu_tilde"), got, ref)},
        "text_feature_cosine_min": float(_cos(text_t, text_o).min()),
        "image_feature_cosine_min": float(_cos(image_t[np.array(nimg) > 0], image_o[np.array(nimg) > 0]).min())
        if any(nimg) else None,
        "decision_agreement_lambda0": agree[0], "decision_agreement_min_over_grid": min(agree),
        "changed_decision_regret_lambda0": {"mean": float(regret.mean()) if len(regret) else 0.0,
                                            "max": float(regret.max()) if len(regret) else 0.0},
        "near_tie_share_lambda0": near_tie,
    }
    rep["bars"] = {"max_abs_diff": 1e-4 if precision == "fp32" else None,
                   "agreement": 1.0 if precision == "fp32" else 0.98}
    router_ok = all(s["max_abs_diff"] <= 1e-4 and s["finite"] and s["masked_row_sentinels_ok"] for s in shapes)
    if precision == "fp32":
        rep["passed"] = bool(router_ok and max(rep["held_out"]["max_abs_diff"].values()) <= 1e-4 and agree[0] == 1.0)
    else:
        rep["passed"] = bool(router_ok and agree[0] >= 0.98)
    if "memory" in rep:   # the search graph finds what numpy finds (ties aside)
        rep["passed"] = bool(rep["passed"] and rep["memory"]["similarity_max_abs_diff"] <= 1e-4
                             and rep["memory"]["neighbour_overlap"] >= 0.99)
    return rep


def check_memory_graph(bundle: Path, manifest: dict, q: np.ndarray) -> dict:
    """memory.onnx (ONNX Runtime) against the numpy search it replaces, on held-out query features."""
    import onnxruntime as ort

    mem = bundle_memory(bundle, manifest)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle / "memory.onnx"), so, providers=["CPUExecutionProvider"])
    sims, idx = sess.run(None, {"query": q.astype(np.float32), "keys": mem.keys})
    ref_s, ref_i = mem.neighbours(mem.embed(q), mem.settings.k)
    ref_s = -np.sort(-ref_s, axis=1)
    same = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(idx.tolist(), ref_i.tolist())])
    names = [p["name"] for p in manifest["pool"]]
    cols = mem.columns(None, names, found=(sims, idx))
    ref_cols = mem.columns(q, names)
    return {"similarity_max_abs_diff": float(np.abs(sims - ref_s).max()), "neighbour_overlap": float(same),
            "columns_max_abs_diff": float(np.abs(cols - ref_cols).max()), "rows": len(mem), "dim": mem.dim,
            "k": mem.settings.k}


def check_fused(bundle: Path, manifest: dict, held: dict | None = None) -> dict:
    """The fused graph against the three separate graphs (same pixels, tokens and pool): on the golden queries, and
    on up to 16 held-out one-image test queries (near the memory's rows, so its in-graph search is exercised)."""
    import onnxruntime as ort

    from ..runtime.features import IMAGE_DIM, n_words, pool_images, query_features
    from ..runtime.manage import _golden_image
    from ..runtime.preprocess import ImageSpec, TextSpec, image_tensor, load_tokenizer, open_image, tokenize
    from ..runtime.profiles import model_features, pool_features

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = {n: ort.InferenceSession(str(bundle / f"{n}.onnx"), so, providers=["CPUExecutionProvider"])
         for n in ("fused", "image_encoder", "text_encoder", "router")}
    spec = ImageSpec.from_dict(manifest["preprocessing"]["image"])
    tok = load_tokenizer(bundle / "tokenizer.json", TextSpec(max_tokens=manifest["preprocessing"]["text"]["max_tokens"]))
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
        image = np.stack([pool_images(img[j:j + 1]) if h else np.zeros(IMAGE_DIM, np.float32) for j, h in enumerate(has)])
        q = query_features(text, image, has.astype(int), words)
        mf = bundle_model_feat(bundle, manifest, q)   # the memory's columns (numpy) from the separate graphs' features
        avail = np.ones(mf.shape[:2], bool)
        own = model_features(pool_features(manifest), None, None, rows=len(qs)) if "memory" in manifest else mf
        fused = s["fused"].run(None, {"pixels": px, "has_image": has, "input_ids": ids, "attention_mask": mask,
                                      "n_words": words, "model_feat": own, "avail": avail})[3]
        sep = s["router"].run(None, {"query": q, "model_feat": mf, "avail": avail})[3]
        out[name] = float(np.abs(fused - sep).max())
        if "memory" in manifest:
            out[f"{name}_mean_memory_closeness"] = float(mf[:, 0, -2].mean())
    return {"max_abs_diff_vs_separate_graphs": max(v for k, v in out.items() if "closeness" not in k), **out}


GOLDEN_QUESTIONS = [("What is 12 * 13?", False), ("What does this image show?", True),
                    ("What is the value shown?", True), ("Which city is the capital of France?", False)]
GOLDEN_TOLERANCE = {"fp32": 1e-4, "fp16": 0.05, "int8": 0.1, "int8-full": 0.3}


def write_golden(net, bundle: Path, manifest: dict, precision: str) -> None:
    """golden.json: PyTorch's mu_tilde on fixed queries, for `lr-onnx doctor` to re-check with ONNX Runtime."""
    import torch

    from ..runtime.features import n_words, pool_images, query_features
    from ..runtime.manage import _golden_image
    from ..runtime.preprocess import ImageSpec, TextSpec, image_tensor, load_tokenizer, open_image, tokenize
    from .encoders import load_image_encoder, load_text_encoder

    spec = ImageSpec.from_dict(manifest["preprocessing"]["image"])
    tok = load_tokenizer(bundle / "tokenizer.json", TextSpec(max_tokens=manifest["preprocessing"]["text"]["max_tokens"]))
    qs = [q for q, _ in GOLDEN_QUESTIONS]
    ids, mask = tokenize(tok, qs)
    with torch.no_grad():
        text = load_text_encoder()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        px = image_tensor(open_image(_golden_image()), spec)[None]
        img_vec = pool_images(load_image_encoder()(torch.from_numpy(px)).numpy())
        image = np.stack([img_vec if has else np.zeros_like(img_vec) for _, has in GOLDEN_QUESTIONS])
        q = query_features(text, image, [int(h) for _, h in GOLDEN_QUESTIONS], [n_words(x) for x in qs])
        mf = torch.from_numpy(bundle_model_feat(bundle, manifest, q))
        mt = net(torch.from_numpy(q), mf, torch.ones(mf.shape[:2], dtype=torch.bool))[3].numpy()
    golden = {"queries": [{"question": x, "image": h} for x, h in GOLDEN_QUESTIONS], "mu_tilde": mt.tolist(),
              "pool": [p["name"] for p in manifest["pool"]], "tolerance": GOLDEN_TOLERANCE[precision]}
    atomic_write_text(bundle / "golden.json", json.dumps(golden, indent=2) + "\n")


def _cos(a, b):
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)


def _subset(data, rows):
    from .data import RoutingData

    pick = list(rows)
    return RoutingData(root=data.root, ids=[data.ids[i] for i in pick], split=[data.split[i] for i in pick],
                       dataset=[data.dataset[i] for i in pick], question=[data.question[i] for i in pick],
                       images=[data.images[i] for i in pick], models=data.models, Y=data.Y[pick], C=data.C[pick],
                       A=data.A[pick], Lat=data.Lat[pick], Tok=data.Tok[pick], meta=[data.meta[i] for i in pick])
