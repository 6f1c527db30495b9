"""Do the fast preprocessing's decisions match the previous preprocessing's? (issue 24, Part A)

The fast path (runtime/preprocess.py) changed two things: every JPEG whose short side is at least twice
the encoder's input is decoded at the DCT scale (1/2, 1/4, 1/8) that keeps it >= 224, where before only
photos above 448 px were drafted, and only to >= 448; and the normalisation is one table lookup per
channel into a preallocated tensor (bit-identical to normalising a pasted canvas: a unit test proves it).
This script routes the same queries with the shipped bundle through both, over the whole lambda grid:

    python benchmarks/preprocess_agreement.py [--shared ../shared/data] [--out benchmarks/results/preprocess_agreement.json]

Sets: the test rows of blindtest and dynamath (the default bundle's merged split; every image is a PNG)
and all 400 pages of inkbench (JPEG scans, never trained on: where the draft decoding actually differs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lr_onnx.export.data.format import load_dataset
from lr_onnx.export.data.merge import merge_datasets
from lr_onnx.export.data.splits import make_splits
from lr_onnx.export.files import atomic_write_text
from lr_onnx.runtime.policy import LAMBDA_GRID, choose
from lr_onnx.runtime.preprocess import ImageSpec, _RESAMPLE, open_image
from lr_onnx.runtime.router import Prepared, Router

REPO = Path(__file__).resolve().parents[1]


def legacy_tensor(src, spec: ImageSpec):
    """The preprocessing as of commit cd62862: drafts only above 2x the input size, to >= 2x; canvas paste."""
    img = Image.open(src)
    w, h = img.size
    if img.format == "JPEG" and min(w, h) > 2 * spec.size:
        img.draft("RGB", (spec.size * 2, spec.size * 2))
    img = open_image(img.convert("RGB") if img.mode != "RGB" else img)
    w2, h2 = img.size
    s = spec.size / max(w2, h2)
    nw, nh = max(1, round(w2 * s)), max(1, round(h2 * s))
    canvas = Image.new("RGB", (spec.size, spec.size), tuple(spec.pad))
    canvas.paste(img.resize((nw, nh), _RESAMPLE[spec.resample]), ((spec.size - nw) // 2, (spec.size - nh) // 2))
    x = (np.asarray(canvas, dtype=np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(
        spec.std, np.float32
    )
    return np.ascontiguousarray(x.transpose(2, 0, 1)), (w, h)


def compare(router: Router, rows: list[tuple[list[Path], str]], batch: int = 32) -> dict:
    spec = router.image_spec
    mt = {"new": [], "old": []}
    c_hat_all, avail_all = [], []
    for s in range(0, len(rows), batch):
        chunk = rows[s : s + batch]
        new = [router.prepare(imgs, q) for imgs, q in chunk]
        old = []
        for imgs, q in chunk:
            got = [legacy_tensor(p, spec) for p in imgs]
            old.append(Prepared(q, tuple(t for t, _ in got), tuple(sz for _, sz in got)))
        meta = [p.meta for p in new]
        cost = router.query_costs(meta, len(chunk))
        c_hat = cost / router.space.cost_scale
        avail = np.ones((len(chunk), len(router.names)), bool)
        for name, prep in (("new", new), ("old", old)):
            mt[name].append(router.score_features(router.encode(prep), avail, c_hat)["mu_tilde"])
        c_hat_all.append(c_hat)
        avail_all.append(avail)
        print(f"\r  {min(s + batch, len(rows))}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    new, old = np.concatenate(mt["new"]), np.concatenate(mt["old"])
    c_hat, avail = np.concatenate(c_hat_all), np.concatenate(avail_all)
    agree = [float(np.mean(choose(new, c_hat, avail, lam) == choose(old, c_hat, avail, lam))) for lam in LAMBDA_GRID]
    return {
        "n": len(rows),
        "agreement_lambda0": round(agree[0], 4),
        "agreement_min_over_grid": round(min(agree), 4),
        "max_abs_d_mu_tilde": float(np.abs(new - old).max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "preprocess_agreement.json"))
    ap.add_argument("--limit", type=int, default=0, help="at most this many queries per set (0: all)")
    a = ap.parse_args(argv)
    shared = Path(a.shared)
    router = Router.load(provider="cpu")
    res: dict = {
        "bundle": "assets/bundle",
        "bar": "agreement >= 0.995 at every lambda of the grid on the test rows of blindtest and dynamath (issue 24)",
        "sets": {},
    }
    with tempfile.TemporaryDirectory() as td:
        merged = Path(td) / "real"
        merge_datasets(merged, [shared / "blindtest", shared / "dynamath"], progress=False)
        data = load_dataset(merged)
        table, _ = make_splits(data)
        for label in ("blindtest", "dynamath"):
            rows = [
                (data.images[i], data.question[i])
                for i in range(data.n)
                if table[data.ids[i]][0] == "test" and data.dataset[i].startswith(label)
            ]
            rows = rows[: a.limit] if a.limit else rows
            print(f"{label}: {len(rows)} test queries", file=sys.stderr)
            res["sets"][f"{label}_test"] = compare(router, rows)
    ink = load_dataset(shared / "inkbench")
    rows = [(ink.images[i], ink.question[i]) for i in range(ink.n)]
    rows = rows[: a.limit] if a.limit else rows
    print(f"inkbench: {len(rows)} JPEG pages", file=sys.stderr)
    res["sets"]["inkbench_all_jpeg"] = compare(router, rows, batch=8)
    res["met"] = all(res["sets"][k]["agreement_min_over_grid"] >= 0.995 for k in ("blindtest_test", "dynamath_test"))
    res["note"] = (
        "inkbench is outside the bar and reported as measured: its large JPEG scans are now drafted to "
        "1/8 scale instead of 1/4 before the resize, which moves near-tie decisions of the default bundle "
        "(never trained on JPEGs or documents)"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(a.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
