"""`lr-onnx data check`: what a routing dataset holds and whether it is a fair routing test.

Read-only: the split is read from `splits.csv` when one exists, otherwise computed
in memory exactly as training would create it.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from .format import RoutingData
from ..evaluate.routing_metrics import best_single, oracle_choice, random_router, routed_means, single_models
from ...runtime.errors import DataError
from .splits import SPLITS_FILE, check_trainable, make_splits, read_splits, split_masks

# Thresholds of a fair multimodal routing benchmark (issue: demo benchmark properties).
MIN_ORACLE_GAP = 0.15
MIN_DIFFICULTY_GAP = 0.20
MIN_GENERIC_SHARE = 0.30
MIN_TEXT_ONLY_SHARE = 0.10
MAX_MEAN_IMAGE_KB = 100.0


def reference_block(data: RoutingData, rows: np.ndarray) -> dict:
    """Per-model means, best single, oracle and random router on a subset of rows."""
    Y, C, A = data.Y[rows], data.C[rows], data.A[rows]
    names = data.model_names
    stats = single_models(Y, C, A)
    b = best_single(Y, C, A)
    oq, oc = routed_means(Y, C, oracle_choice(Y, C, A))
    rq, rc = random_router(Y, C, A)
    return {
        "rows": int(len(rows)),
        "unroutable": int((~A.any(axis=1)).sum()),
        "per_model": {
            n: {"score": _r(s["score"]), "cost": _r(s["cost"]), "coverage": _r(s["coverage"])}
            for n, s in zip(names, stats)
        },
        "best_single": (
            {"name": names[b], "score": _r(stats[b]["score"]), "cost": _r(stats[b]["cost"])} if b >= 0 else None
        ),
        "oracle": {"score": _r(oq), "cost": _r(oc)},
        "random": {"score": _r(rq), "cost": _r(rc)},
    }


def summarize(data: RoutingData) -> dict:
    """Everything `data check` reports, as a JSON-ready dict."""
    split_path = data.root / SPLITS_FILE
    if split_path.exists():
        table, policy = read_splits(split_path, data.ids), "file"
    else:
        table, policy = make_splits(data)
    masks = split_masks(data, table)
    all_rows = np.arange(data.n)
    out = {
        "path": str(data.root),
        "queries": data.n,
        "models": data.model_names,
        "datasets": dict(sorted(Counter(data.dataset).items())),
        "images": {
            "queries_with_images": int(sum(1 for im in data.images if im)),
            "text_only_queries": int(sum(1 for im in data.images if not im)),
            "files_referenced": data.image_refs,
            "files_missing": data.missing_images,
        },
        "splits": {
            "policy": policy if policy != "file" else f"from {SPLITS_FILE}",
            **{s: int(masks[s].sum()) for s in ("train", "val", "test", "fit", "cal")},
        },
    }
    out.update(reference_block(data, all_rows))
    out["per_split"] = {
        s: reference_block(data, np.flatnonzero(masks[s])) for s in ("train", "val", "test") if masks[s].any()
    }
    ds_arr = np.array(data.dataset)
    out["coverage"] = {
        name: {ds: _r(float(data.A[ds_arr == ds, k].mean())) for ds in out["datasets"]}
        for k, name in enumerate(data.model_names)
    }
    try:  # the same check `train` makes, so a dataset it would refuse is flagged here first
        check_trainable(data, masks, data.root)
        out["trainable"] = {"ok": True, "reason": None}
    except DataError as e:
        out["trainable"] = {"ok": False, "reason": str(e)}
    if any(isinstance(m, dict) and "level" in m for m in data.meta):  # difficulty metadata: the demo's design
        out["properties"] = demo_properties(data)
    return out


def demo_properties(data: RoutingData) -> dict:
    """The properties that make a multimodal dataset a fair routing test, each measured.

    Cells are (dataset, visual difficulty level) with the level read from each
    query's `meta.level` (metadata, never a model input).
    """
    names = data.model_names
    levels = [(m or {}).get("level", "n/a") for m in data.meta]
    cells: dict[str, list[int]] = {}
    for i, (ds, lv) in enumerate(zip(data.dataset, levels)):
        cells.setdefault(f"{ds}/{lv}", []).append(i)
    stats = single_models(data.Y, data.C, data.A)
    mean_cost = np.array([s["cost"] for s in stats])
    cheap = [names[k] for k in range(data.k) if mean_cost[k] <= np.nanmedian(mean_cost)]
    best_of_cell = {}
    for cell, rows in sorted(cells.items()):
        st = single_models(data.Y[rows], data.C[rows], data.A[rows])
        b = best_single(data.Y[rows], data.C[rows], data.A[rows])
        best_of_cell[cell] = {"model": names[b], "score": _r(st[b]["score"]), "n": len(rows)}
    winners = {v["model"] for v in best_of_cell.values()}
    cheap_cells = {c: v["model"] for c, v in best_of_cell.items() if v["model"] in cheap}

    b = best_single(data.Y, data.C, data.A)
    oq, _ = routed_means(data.Y, data.C, oracle_choice(data.Y, data.C, data.A))
    gap = oq - stats[b]["score"]

    # Difficulty effect: mean accuracy over models and rows, easiest vs hardest level, image queries only.
    with_image = np.array([bool(im) for im in data.images])
    lv = np.array(levels)
    row_mean = np.nanmean(np.where(data.A, data.Y, np.nan), axis=1)
    per_family = {}
    for ds in sorted(set(data.dataset)):
        sel = np.array([d == ds for d in data.dataset])
        e, h = sel & (lv == "easy"), sel & (lv == "hard")
        if e.any() and h.any():
            per_family[ds] = {
                "easy": _r(row_mean[e].mean()),
                "hard": _r(row_mean[h].mean()),
                "gap": _r(row_mean[e].mean() - row_mean[h].mean()),
            }
    e, h = with_image & (lv == "easy"), with_image & (lv == "hard")
    diff_gap = float(row_mean[e].mean() - row_mean[h].mean()) if e.any() and h.any() else float("nan")

    generic = np.array([bool((m or {}).get("generic")) for m in data.meta])
    text_only = ~with_image
    sizes = [os.path.getsize(p) for im in data.images for p in im]
    mean_kb = float(np.mean(sizes) / 1024) if sizes else 0.0

    return {
        "no_model_best_everywhere": {
            "holds": len(winners) > 1,
            "winners": sorted(winners),
            "best_per_cell": best_of_cell,
        },
        "cheap_model_best_somewhere": {"holds": bool(cheap_cells), "cheap_models": cheap, "cells": cheap_cells},
        "oracle_minus_best_single": {
            "holds": bool(gap >= MIN_ORACLE_GAP),
            "value": _r(gap),
            "threshold": MIN_ORACLE_GAP,
        },
        "difficulty_moves_accuracy": {
            "holds": bool(diff_gap >= MIN_DIFFICULTY_GAP),
            "easy_minus_hard": _r(diff_gap),
            "threshold": MIN_DIFFICULTY_GAP,
            "per_dataset": per_family,
        },
        "generic_questions": {
            "holds": bool(generic.mean() >= MIN_GENERIC_SHARE),
            "share": _r(generic.mean()),
            "threshold": MIN_GENERIC_SHARE,
        },
        "text_only_queries": {
            "holds": bool(text_only.mean() >= MIN_TEXT_ONLY_SHARE),
            "share": _r(text_only.mean()),
            "threshold": MIN_TEXT_ONLY_SHARE,
        },
        "mean_image_kb": {
            "holds": bool(mean_kb <= MAX_MEAN_IMAGE_KB),
            "value": _r(mean_kb),
            "threshold": MAX_MEAN_IMAGE_KB,
        },
    }


def format_report(s: dict) -> str:
    """The human-readable `data check` table."""
    lines = [f"{s['path']}: {s['queries']} queries, {len(s['models'])} models, {len(s['datasets'])} datasets"]
    im = s["images"]
    lines.append(
        f"images: {im['queries_with_images']} queries with images, {im['text_only_queries']} text-only, "
        f"{im['files_referenced']} files referenced, {im['files_missing']} missing"
    )
    sp = s["splits"]
    lines.append(
        f"split ({sp['policy']}): train {sp['train']} (fit {sp['fit']}, cal {sp['cal']}), "
        f"val {sp['val']}, test {sp['test']}"
    )
    lines.append("datasets: " + ", ".join(f"{k} {v}" for k, v in s["datasets"].items()))
    lines.append("")
    splits = list(s["per_split"])
    head = f"{'model':34s} " + " ".join(f"{sp + ' score':>11s} {sp + ' cost':>11s}" for sp in ["all", *splits])
    lines.append(head)
    for name in s["models"]:
        cells = [s["per_model"][name]] + [s["per_split"][sp]["per_model"][name] for sp in splits]
        lines.append(f"{name[:34]:34s} " + " ".join(f"{_f(c['score']):>11s} {_g(c['cost']):>11s}" for c in cells))
    lines.append("")
    for label, block in [("all", s), *[(sp, s["per_split"][sp]) for sp in splits]]:
        b = block["best_single"]
        lines.append(
            f"[{label}] best single {b['name']} {_f(b['score'])} at {_g(b['cost'])}; "
            f"oracle {_f(block['oracle']['score'])} at {_g(block['oracle']['cost'])}; "
            f"random {_f(block['random']['score'])}; unroutable {block['unroutable']}"
        )
    lines.append("")
    lines.append("coverage (share of queries with an observed outcome):")
    full = all(v == 1.0 for m in s["coverage"].values() for v in m.values())
    if full:
        lines.append("  every model has an outcome on every query")
    else:
        dss = list(s["datasets"])
        lines.append(f"  {'model':30s} " + " ".join(f"{d[:10]:>10s}" for d in dss))
        for name, row in s["coverage"].items():
            lines.append(f"  {name[:30]:30s} " + " ".join(f"{row[d]:>10.2f}" for d in dss))
    if not s["trainable"]["ok"]:
        lines.append("")
        lines.append(f"note: lr-onnx train would refuse this dataset: {s['trainable']['reason']}")
    if "properties" in s:
        lines.append("")
        lines.append("routing-benchmark properties:")
        for key, p in s["properties"].items():
            mark = "ok  " if p["holds"] else "FAIL"
            detail = {k: v for k, v in p.items() if k not in ("holds", "best_per_cell", "per_dataset")}
            lines.append(f"  [{mark}] {key}: {detail}")
        lines.append("  best model per (dataset/difficulty) cell:")
        for cell, v in s["properties"]["no_model_best_everywhere"]["best_per_cell"].items():
            lines.append(f"    {cell:28s} {v['model']:28s} {v['score']:.3f} (n={v['n']})")
    return "\n".join(lines)


def _r(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(f"{float(x):.6g}")


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"
