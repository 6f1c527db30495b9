"""`lr-onnx export`: a trained run becomes an ONNX bundle the slim runtime can serve.

A bundle is a plain folder: `image_encoder.onnx` (none for a text-only router: `train --text-only`, or validation chose text),
`text_encoder.onnx`, `router.onnx` (capsules + communication + heads, dynamic batch B and candidate count K),
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
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...runtime.manifest import (
    MANIFEST,
    Coverage,
    FileEntry,
    GraphEntry,
    LambdaSpec,
    Manifest,
    MemoryEntry,
    PoolEntry,
    Preset,
    needed_graphs,
)
from ...runtime.errors import DataError
from ...runtime.features import TEXT_ONLY
from ...runtime.profiles import ProfileSpace
from ...version import __version__
from ..train.encoding import IMAGE_SPEC
from ..files import atomic_write_text, sha256_file, staged_output
from .graphs import OPSET, FusedRouter, export_graphs, graph_dims
from .parity import check_fused, check_parity, write_golden
from .quantise import PRECISIONS, quantize_encoders, to_fp16


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    opset: int = OPSET,
    parity_queries: int = 256,
    fused: bool = False,
    progress: bool = True,
) -> dict:
    """Export `run_dir` to the bundle folder `out` (must not exist); returns parity.json's content."""
    import onnx
    import torch

    from ..train.encoders import minilm_dir
    from ..train.encoding import ENCODER_VERSION, TEXT_SPEC
    from ..train.trainer import load_router

    if precision not in PRECISIONS:
        raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    run_dir = Path(run_dir)
    net, cfg = load_router(run_dir)
    text_only = bool(cfg["train"].get("text_only"))  # --text-only, or validation chose text
    if fused and text_only:
        raise DataError(
            f"{run_dir}: its router reads no images, and --fused takes pixels; export without --fused "
            f"(the bundle then never runs its image encoder)"
        )
    from ..train.pool import read_profiles, run_memory

    prof = read_profiles(run_dir)
    added = [m["name"] for m in prof["models"] if m.get("added_with")]
    if fused and added and net.cfg.memory:
        raise DataError(
            f"{run_dir}: --fused bakes in one answer for every model, but {', '.join(added)} joined after training "
            f"and the runtime answers for it with the memory's estimate instead; export without --fused, or retrain"
        )
    t0 = time.perf_counter()
    with staged_output(out) as tmp:
        export_graphs(net, tmp, opset, image=not text_only)
        memory = run_memory(run_dir, prof) if net.cfg.memory else None  # rebuilt once, for every graph below
        if fused:
            FusedRouter.export(
                net,
                tmp / "fused.onnx",
                opset,
                memory,
                [m["name"] for m in prof["models"]],
                [r[0] for r in prof["raw_profiles"]],
            )
        held_out = _held_out(cfg, parity_queries, [m["name"] for m in prof["models"]])
        if precision in ("int8", "int8-full"):
            quantize_encoders(tmp, held_out["calib_pixels"], image=precision == "int8-full" and not text_only)
        elif precision == "fp16":
            to_fp16(tmp, image=not text_only)
        shutil.copyfile(minilm_dir() / "tokenizer.json", tmp / "tokenizer.json")
        if memory is not None:
            from .memory_graph import build_memory_graph

            build_memory_graph(memory, tmp / "memory.onnx", opset)
        graph_files = (
            [f"{g}.onnx" for g in needed_graphs(not text_only)]
            + (["fused.onnx"] if fused else [])
            + (["memory.onnx"] if memory is not None else [])
        )
        for name in graph_files:
            onnx.checker.check_model(str(tmp / name), full_check=True)
        space = ProfileSpace.from_dict(prof["space"])
        metrics = _metrics_summary(run_dir)
        presets = metrics.pop("presets", {})
        pool = pool_entries(prof, space)
        cov = coverage_threshold(held_out, space, text_only)
        blend = (cfg.get("memory") or {}).get("blend", {}).get("chosen")
        manifest = Manifest(
            created_by={
                "lr_onnx": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": _ort_version(),
                "python": platform.python_version(),
            },
            precision=precision,
            opset=opset,
            setting=cfg["train"]["setting"],
            encoder_version=ENCODER_VERSION,
            graphs={name.removesuffix(".onnx"): GraphEntry(name, **graph_dims(tmp / name)) for name in graph_files},
            image=IMAGE_SPEC,
            text=TEXT_SPEC,
            query_dim=net.cfg.query_dim,
            query_features=TEXT_ONLY if text_only else None,
            model_dim=net.cfg.model_dim,
            pool=tuple(pool),
            profile_space=space,
            cost_estimator=prof.get("cost_estimator", "calib_mean"),
            lambdas=LambdaSpec(
                metrics.get("lambda_val", 0.0),
                {k: Preset(p["lambda"], {x: v for x, v in p.items() if x != "lambda"}) for k, p in presets.items()},
            ),
            coverage=Coverage(cov.pop("threshold"), cov),
            training_metrics=metrics,
            memory=None
            if memory is None
            else MemoryEntry.from_written(memory.write(tmp), None if blend is None else float(blend)),
        )
        parity = check_parity(net, tmp, manifest, held_out, precision)
        if fused:
            parity["fused"] = check_fused(tmp, manifest, held_out)
        write_golden(net, tmp, manifest, precision)
        # parity.json is written before the hashes, so the manifest lists it too (a closed bundle: every file
        # the runtime may open is listed and verified); it holds no timings, so rebuilds stay byte-identical
        atomic_write_text(tmp / "parity.json", json.dumps(parity, indent=2, allow_nan=False) + "\n")
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = replace(
            manifest, files={f: FileEntry(sha256_file(tmp / f), (tmp / f).stat().st_size) for f in files}
        )
        written = manifest.to_dict()
        Manifest.from_dict(
            written, tmp
        )  # what the runtime will accept: a bad number is an export error, not a load error
        atomic_write_text(tmp / MANIFEST, json.dumps(written, indent=2) + "\n")
    return dict(parity, export_seconds=round(time.perf_counter() - t0, 1))


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ModuleNotFoundError:
        return None


def _metrics_summary(run_dir: Path) -> dict:
    from ..train.rundir import RunDir

    m = RunDir.of(run_dir).metrics()
    if m is None:
        return {}
    lr = m["methods"]["latentrouter"]
    return {
        "split": m["split"],
        "score_at_lambda0": lr["score_at_lambda0"],
        "cost_at_lambda0": lr["cost_at_lambda0"],
        "nauc": lr["nauc"],
        "qnc": lr["qnc"],
        "lambda_val": lr.get("lambda_val", 0.0),
        "presets": lr.get("presets", {}),
        "best_single": m["best_single"],
        "oracle": m["oracle"],
    }


def _held_out(cfg: dict, n: int, pool: list[str]) -> dict:
    """Test-split queries of the training data: pixels of their first images, questions, raw features; the outcome
    columns in the order of the run's pool (a model removed from the run is dropped, one added from another file
    has no outcome here)."""

    from ...runtime.preprocess import preprocess_image
    from ..data.format import load_dataset
    from ..data.splits import ensure_splits, split_masks

    data = load_dataset(cfg["data"]).for_pool(pool)
    masks = split_masks(data, ensure_splits(data))
    test = np.flatnonzero(masks["test"])
    rows = test[np.unique(np.linspace(0, len(test) - 1, min(n, len(test))).astype(int))] if len(test) else test
    # spread over the whole test split: merged data lists its sources one after the other
    calib = [i for i in np.flatnonzero(masks["train"]) if data.images[i]][:128]  # quantisation never sees test
    pixels = (
        np.stack([preprocess_image(data.images[i][0], IMAGE_SPEC) for i in calib])
        if calib
        else np.zeros((1, 3, IMAGE_SPEC.size, IMAGE_SPEC.size), np.float32)
    )
    return {
        "data": data,
        "rows": rows,
        "calib_pixels": pixels,
        "train_rows": np.flatnonzero(masks["train"]),
    }


COVERAGE_PERCENTILE = 1.0


def pool_entries(prof: dict, space: ProfileSpace) -> list[PoolEntry]:
    """The manifest's pool from a run's profiles.json: prices, expected costs, profiles (raw and standardised),
    per-query cost rules, and `added_with` for a model added after training (the Router answers for it apart)."""
    c_hat = np.asarray(prof["e_bar"], float) / space.cost_scale
    std = space.standardise(np.asarray(prof["raw_profiles"], float))
    return [
        PoolEntry(
            name=m["name"],
            price_in_per_mtok=m.get("price_in_per_mtok"),
            price_out_per_mtok=m.get("price_out_per_mtok"),
            expected_cost_usd=float(e),
            cost_hat=float(c),
            raw_profile=tuple(r),
            profile=tuple(s.tolist()),
            **(
                {"image_tokens": cm["image_tokens"], "output_tokens": cm["output_tokens"]}
                if cm and cm.get("output_tokens") is not None
                else {}
            ),
            # a model added to the run after training: the Router answers for it as the run does (pool.py)
            extra={"added_with": m["added_with"]} if m.get("added_with") else {},
        )
        for m, e, c, r, s, cm in zip(
            prof["models"],
            prof["e_bar"],
            c_hat,
            prof["raw_profiles"],
            std,
            prof.get("cost_model") or [None] * len(prof["models"]),
        )
    ]


def coverage_threshold(held: dict, space: ProfileSpace, text_only: bool) -> dict:
    """The out-of-coverage threshold: the 1st percentile of the training queries' best cosine similarity to
    the slice centroids (their own distribution; test rows never enter), with a few quantiles for the record;
    on the features the run's router reads (`text_only`: without images)."""
    from ...runtime.profiles import slice_embedding
    from ..train.trainer import run_features

    q = run_features(held["data"], text_only, progress=False)[held["train_rows"]]
    best = (slice_embedding(q) @ space.centroids.T).max(axis=1)
    return {
        "threshold": float(np.percentile(best, COVERAGE_PERCENTILE)),
        "percentile": COVERAGE_PERCENTILE,
        "train_similarity": {f"p{p}": round(float(np.percentile(best, p)), 4) for p in (1, 5, 50)},
        "train_queries": int(len(best)),
    }
