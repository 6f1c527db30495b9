"""`lr-onnx data demo`: the multimodal demo routing benchmark the default router is trained on.

Images and questions are real (rendered or photographed, each with its correct
answer); model outcomes are SIMULATED by `skills.py`. Query i is generated from
`default_rng([seed, i])` alone, so the output does not depend on the number of
worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np

from ..format import write_dataset
from ...files import staged_output
from .render import make_chart, make_document, make_math, make_table
from .scenes import make_photo, make_spatial, make_text
from .skills import POOL, load_skills, pool_registry, simulate

FAMILIES = {  # one generator per task family (render.py, scenes.py)
    "documents": make_document,
    "charts": make_chart,
    "tables": make_table,
    "math": make_math,
    "photos": make_photo,
    "spatial": make_spatial,
    "text": make_text,
}

TEXT_SHARE = 0.12
IMAGE_FAMILIES = [f for f in FAMILIES if f != "text"]
LEVELS = ((0.35, "easy"), (0.65, "medium"), (9.0, "hard"))


def level_of(d: float) -> str:
    return next(name for cut, name in LEVELS if d < cut)


def _render_one(args) -> dict:
    i, seed, out = args
    rng = np.random.default_rng([seed, i])
    family = "text" if rng.random() < TEXT_SHARE else IMAGE_FAMILIES[int(rng.integers(len(IMAGE_FAMILIES)))]
    s = FAMILIES[family](rng)
    rec = {
        "i": i,
        "family": family,
        "subtype": s.subtype,
        "question": s.question,
        "answer": s.answer,
        "generic": s.generic,
        "d_text": round(s.d_text, 4),
        "d_clutter": round(s.d_clutter, 4),
        "attrs": s.attrs,
        "images": [],
        "size": None,
        "bytes": 0,
    }
    if s.image is not None:
        rel = f"images/{i:05d}.{s.fmt}"
        path = os.path.join(out, rel)
        if s.fmt == "jpg":
            s.image.save(path, "JPEG", quality=85)
        else:
            s.image.save(path, "PNG", compress_level=6)
        rec.update(images=[rel], size=s.image.size, bytes=os.path.getsize(path))
    return rec


def build_demo(
    out: str | os.PathLike,
    *,
    n: int = 12000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    skills: str | os.PathLike | None = None,
) -> dict:
    """Generate the benchmark into `out` (must not exist); return a summary of what was written.

    `skills`: the mllm-skills table (default: `default_skills_path()`, the project's shared data)."""
    from tqdm import tqdm

    table = load_skills(skills)  # read (and refused, if missing) before any rendering
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    with staged_output(out) as tmp:
        (tmp / "images").mkdir()
        jobs = [(i, seed, str(tmp)) for i in range(n)]
        bar = tqdm(total=n, desc="rendering", unit="q", disable=not progress, leave=False)
        recs = []
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for r in pool.imap(_render_one, jobs, chunksize=64):
                    recs.append(r)
                    bar.update()
        else:
            for j in jobs:
                recs.append(_render_one(j))
                bar.update()
        bar.close()

        fam = [r["family"] for r in recs]
        d_text = np.array([r["d_text"] for r in recs])
        d_clutter = np.array([r["d_clutter"] for r in recs])
        words = np.array([len(r["question"].split()) for r in recs], dtype=float)
        names, Y, C, Tok, Lat, report = simulate(
            fam, [r["subtype"] for r in recs], d_text, d_clutter, words, [r["size"] for r in recs], seed, table
        )
        records = []
        for i, r in enumerate(recs):
            d = r["d_clutter"] if r["family"] == "text" else (r["d_text"] + r["d_clutter"]) / 2
            records.append(
                {
                    "id": f"demo-{i:05d}",
                    "question": r["question"],
                    "images": r["images"],
                    "dataset": r["family"],
                    "outcomes": {
                        m: {
                            "score": float(Y[i, k]),
                            "cost": float(f"{C[i, k]:.4g}"),
                            "latency_ms": float(Lat[i, k]),
                            "tokens": int(Tok[i, k]),
                        }
                        for k, m in enumerate(names)
                    },
                    "meta": {
                        "answer": r["answer"],
                        "subtype": r["subtype"],
                        "generic": r["generic"],
                        "level": level_of(d),
                        "difficulty": round(d, 4),
                        "d_text": r["d_text"],
                        "d_clutter": r["d_clutter"],
                        **r["attrs"],
                    },
                }
            )
        write_dataset(tmp, pool_registry(table), records)
        calib = {k: v for k, v in report.items() if k != "P"}
        (tmp / "calibration.json").write_text(json.dumps(calib, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(n, seed, report, table), encoding="utf-8")
        n_img = sum(1 for r in recs if r["images"])
        mean_kb = sum(r["bytes"] for r in recs) / max(n_img, 1) / 1024
    return {
        "queries": n,
        "images": n_img,
        "mean_image_kb": mean_kb,
        "models": len(names),
        "seconds": time.perf_counter() - t0,
    }


def _readme(n: int, seed: int, report: dict, skills: dict) -> str:
    from . import skills as sk

    rows = []
    for m in POOL:
        cells = []
        for f in sk.FAMILY_SOURCE:
            t = report["targets"][m][f]
            cells.append(f"{t:.2f}{'*' if report['imputed'][m][f] else ''} / {report['realised'][m][f]:.2f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    head = "| model | " + " | ".join(sk.FAMILY_SOURCE) + " |\n|---|" + "---|" * len(sk.FAMILY_SOURCE)
    prices = "\n".join(
        f"| {m} | {skills['models'][m]['price_in_per_mtok']} | {skills['models'][m]['price_out_per_mtok']}"
        f" | {POOL[m]['read']} | {POOL[m]['out_tokens']} |"
        for m in POOL
    )
    return f"""# lr-onnx demo routing benchmark ({n} queries, seed {seed})

Generated by `lr-onnx data demo`. **The images, questions and answers are real; the model
outcomes (score, cost, latency, tokens) are SIMULATED.** No model was run. Use this set to test
and demonstrate multimodal routing, never to rank the named models.

## Queries
Seven families in `dataset`: documents (receipts, pages, forms), charts (bar and line charts of
real monthly share prices from matplotlib's `Stocks.csv`, pie charts), tables, math (geometry
diagrams), photos (crops of the sample photographs shipped with scikit-image, scikit-learn and
matplotlib), spatial (layouts of coloured shapes), and text-only questions ({TEXT_SHARE:.0%}).
Every query's correct answer is in `meta.answer`; `meta` also records the visual difficulty
(`d_text`: font size, blur, resolution; `d_clutter`: items, rows, series, distractors), the level
(easy / medium / hard) and whether the question is generic. `meta` and `dataset` are metadata:
they are never router inputs.

## Outcome model (simulated)
{sk.__doc__.split("OUTCOMES ARE SIMULATED.", 1)[1].strip()}

## Calibration: target (published family mean, `*` = imputed) / realised mean accuracy
Targets come from `skills.json` (real published accuracies, sources inside; "tables" uses the mean
of documents_ocr and charts, "photos" uses general). See `calibration.json` for exact numbers.

{head}
{chr(10).join(rows)}

## Pool, prices (USD per 1M tokens, as used by VL-RouterBench) and simulation attributes
| model | price in | price out | read (small-print robustness, assumed) | mean output tokens (assumed) |
|---|---|---|---|---|
{prices}

## Licences
Rendered images are generated by lr-onnx (MIT). Photos are crops of sample images shipped with
scikit-image (BSD-3-Clause; see `skimage/data/README.txt` for each image's source and licence),
scikit-learn (`china.jpg`, `flower.jpg`) and matplotlib (`grace_hopper.jpg`); chart series are
matplotlib's `Stocks.csv` sample data (Yahoo Finance).
"""
