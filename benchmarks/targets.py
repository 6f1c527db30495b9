"""Reproduce the README's router targets: train and evaluate over several seeds and datasets.

    python benchmarks/targets.py DATA_DIR OUT_DIR [--seeds 3] [--slices S]     one dataset
    python benchmarks/targets.py --grid OUT_DIR [--cells a,b] [--shared DIR]   the README's grid
    python benchmarks/targets.py --grid OUT_DIR --merge A.json B.json          cells run in other processes
    python benchmarks/targets.py --grid OUT_DIR --cells C --ablations NAME    add one ablation's row to cell C

Each seed trains LatentRouter (seed 20260308 + i), evaluates it against every
baseline on the test split, and the mean and standard deviation of each metric
are written to OUT_DIR/targets.json together with the pass/fail of each target:
LatentRouter's mean score at lambda 0 and mean nAUC are >= those of every other
method (task_lookup, which reads the dataset label, included; text_only only where
queries have images). `--grid` runs the cells of GRID (the demo benchmark at two
sizes and two data seeds, then the real sets and their merge), resumes finished
runs, and writes benchmarks/results/grid.json after every cell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lr_onnx.export.evaluate.report import ABLATIONS, METHODS, evaluate
from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.modality import choose_modality
from lr_onnx.export.train.trainer import TrainConfig, train
from lr_onnx.export.train.rundir import RunDir

BASE_SEED = 20260308
KEYS = ("nauc", "score_at_lambda0", "cost_at_lambda0", "qnc", "rank_score", "apgr", "peak_score")


def _num(x):
    return float("inf") if x == "inf" else (np.nan if x is None else float(x))


def clean(x):
    """JSON has no inf or NaN: write "inf" (e.g. QNC when best-single quality is never reached) and null."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def run(
    data_dir: Path,
    out: Path,
    seeds: int,
    slices: int,
    epochs: int,
    setting: str = "performance",
    ablation_seeds: int | None = None,
    ablations: tuple[str, ...] | None = None,
    earlier: dict | None = None,
) -> dict:
    """Train and evaluate `seeds` seeds; the retrained ablations (all, or the named `ablations`) on the first
    `ablation_seeds` of them (all by default); the memory-only and network-only halves and the baselines on every
    seed. `earlier`: a cell of an earlier run whose method rows stand where this run computes none (a run that
    retrains one new ablation adds its row to the cell instead of retraining every other)."""
    per_seed, modality = [], []
    ablation_seeds = seeds if ablation_seeds is None else ablation_seeds
    for i in range(seeds):
        run_dir = out / f"seed{i}"
        cfg = TrainConfig(seed=BASE_SEED + i, slices=slices, epochs=epochs, setting=setting)
        if not RunDir(run_dir).trained:
            train(data_dir, run_dir, cfg)
        modality.append(choose_modality(data_dir, run_dir))  # as `lr-onnx train` does (a no-op once chosen)
        per_seed.append(evaluate(run_dir, ablations=(ablations or True) if i < ablation_seeds else False))
    methods = list(dict.fromkeys(m for s in per_seed for m in s["methods"]))

    def stat(m, k):
        vals = [_num(s["methods"][m][k]) for s in per_seed if m in s["methods"]]
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}

    agg = {m: {k: stat(m, k) for k in KEYS} for m in methods}
    if earlier:  # the earlier cell's rows where this run has none, in the order evaluate computes them
        rows = {**earlier["methods"], **agg}
        methods = sorted(rows, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))
        agg = {m: rows[m] for m in methods}
    bs = per_seed[0]["best_single"]
    lr = agg["latentrouter"]
    has_images = bool(per_seed[0].get("has_images", True))
    rivals = [m for m in methods if m not in ("latentrouter", "random") and (has_images or m != "text_only")]
    margins = {
        key: {m: lr[key]["mean"] - agg[m][key]["mean"] for m in rivals if np.isfinite(agg[m][key]["mean"])}
        for key in ("score_at_lambda0", "nauc")
    }
    checks = {
        f"best_{'score_at_lambda0' if key == 'score_at_lambda0' else 'nauc'}_of_all_methods": all(
            v >= 0 for v in margins[key].values()
        )
        for key in margins
    }
    checks["score_at_lambda0_above_best_single"] = lr["score_at_lambda0"]["mean"] > bs["score"]
    # where LatentRouter trails a method, is the gap within one standard deviation over seeds (its own or the rival's)?
    misses = {
        key: {
            m: {
                "margin": round(v, 5),
                "std": round(max(lr[key]["std"], agg[m][key]["std"]), 5),
                "within_one_std": -v <= max(lr[key]["std"], agg[m][key]["std"]),
            }
            for m, v in margins[key].items()
            if v < 0
        }
        for key in margins
    }
    checks["every_miss_within_one_std"] = all(x["within_one_std"] for d in misses.values() for x in d.values())
    used = len(RunDir(out / "seed0").profiles()["space"]["centroids"])
    result = {
        "data": str(data_dir),
        "seeds": [BASE_SEED + i for i in range(seeds)],
        "ablation_seeds": ablation_seeds,
        "slices": slices,
        "slices_used": used,
        "epochs": epochs,
        "setting": setting,
        "best_single": bs,
        "oracle": per_seed[0]["oracle"],
        "methods": agg,
        "margins": margins,
        "misses": misses,
        "targets": checks,
        "rows": per_seed[0]["rows"],
        "modality": modality,  # per seed: whether validation kept the router's images (export.train.modality)
        "per_dataset_seed0": per_seed[0]["per_dataset"],
    }
    atomic_write_text(out / "targets.json", json.dumps(clean(result), indent=2, allow_nan=False) + "\n")
    return result


# The README's grid: name -> (how to get the data, training seeds). Demo data seeds are not the README's 0.
GRID = {
    "demo_n3000_s11": (("demo", 3000, 11), 2),
    "demo_n3000_s23": (("demo", 3000, 23), 2),
    "demo_n12000_s11": (("demo", 12000, 11), 2),
    "demo_n12000_s23": (("demo", 12000, 23), 2),
    "blindtest": (("shared", "blindtest"), 3),
    "dynamath": (("shared", "dynamath"), 3),
    "real_merged": (("merge", "blindtest", "dynamath"), 3),
    "dcrouter": (("shared", "dcrouter"), 3),
    "vqarad": (("shared", "vqarad"), 3),
    "inkbench": (("shared", "inkbench"), 3),
}
REAL_FIRST = ["blindtest", "dynamath", "real_merged", "vqarad", "inkbench", "dcrouter"]


def grid_data(spec: tuple, out: Path, shared: Path) -> Path:
    """The cell's dataset folder: a shared set read in place, or a demo draw / merge built under OUT/data."""
    kind = spec[0]
    if kind == "shared":
        return shared / spec[1]
    target = out / "data" / ("_".join(str(x) for x in spec))
    if not (target / "queries.jsonl").is_file():
        if kind == "demo":
            from lr_onnx.export.data.demo import build_demo

            build_demo(target, n=spec[1], seed=spec[2], progress=False)
        else:
            from lr_onnx.export.data.merge import merge_datasets

            merge_datasets(target, [shared / name for name in spec[1:]], progress=False)
    return target


def merge(results: Path, others: list[Path], out: Path) -> dict:
    """Cells of other results files (grid runs split over processes) into `results`, each with its seeds' modality
    choices read from their run folders under `out` (files written before `run` recorded them)."""
    grid = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {"cells": {}}
    for other in others:
        for name, cell in json.loads(other.read_text(encoding="utf-8"))["cells"].items():
            runs = [out / name / f"seed{i}" for i in range(len(cell["seeds"]))]
            cell.setdefault("modality", [RunDir(r).config().get("modality") for r in runs])
            grid["cells"][name] = cell
    grid["all_targets_met"] = all(all(c["targets"].values()) for c in grid["cells"].values())
    atomic_write_text(results, json.dumps(grid, indent=2, allow_nan=False) + "\n")
    return grid


def run_grid(
    out: Path,
    cells: list[str],
    shared: Path,
    results: Path,
    slices: int,
    epochs: int,
    ablation_seeds: int | None = None,
    ablations: tuple[str, ...] | None = None,
) -> dict:
    grid = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {"cells": {}}
    for name in cells:
        spec, seeds = GRID[name]
        t0 = time.perf_counter()
        res = run(
            grid_data(spec, out, shared),
            out / name,
            seeds,
            slices,
            epochs,
            ablation_seeds=ablation_seeds,
            ablations=ablations,
            earlier=grid["cells"].get(name) if ablations else None,
        )
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if ablations and name in grid["cells"]:  # rows added to an earlier cell: its own time stands
            earlier = grid["cells"][name]
            res["rows_added"] = sorted(set(earlier.get("rows_added", [])) | set(ablations))
            res["seconds"] = earlier.get("seconds", res["seconds"])
        res["real_outcomes"] = spec[0] != "demo"
        if name == "real_merged":
            lr, tl = res["methods"]["latentrouter"], res["methods"]["task_lookup"]
            res["targets"]["score_at_lambda0_>=_task_lookup_+_0.01"] = (
                lr["score_at_lambda0"]["mean"] >= tl["score_at_lambda0"]["mean"] + 0.01
            )
            res["targets"]["qnc_<=_0.5"] = lr["qnc"]["mean"] <= 0.5
        grid["cells"][name] = {k: v for k, v in clean(res).items() if k != "per_dataset_seed0"}
        grid["all_targets_met"] = all(all(c["targets"].values()) for c in grid["cells"].values())
        atomic_write_text(results, json.dumps(grid, indent=2, allow_nan=False) + "\n")
        print(f"{name}: " + ", ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in res["targets"].items()), flush=True)
    return grid


RIVALS_SHOWN = ("memory_only", "network_only", "knn", "mlp", "irt", "mf", "task_lookup")


def grid_table(grid: dict) -> str:
    """The README's grid table from grid.json: per cell, LatentRouter and the strongest other method on score at
    lambda 0 and on nAUC (means over seeds, +/- the std), the margins, and the misses' standing against one std."""
    rows = [
        "| cell | outcomes | seeds | LatentRouter score@0 | best other | margin | LatentRouter nAUC | best other | "
        "margin | best single |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in grid["cells"].items():
        m, lr = c["methods"], c["methods"]["latentrouter"]
        cells = [name, "real" if c.get("real_outcomes") else "simulated", str(len(c["seeds"]))]
        for key in ("score_at_lambda0", "nauc"):
            rivals = {k: v for k, v in c["margins"][key].items()}
            worst = min(rivals, key=rivals.get)
            cells += [
                f"{lr[key]['mean']:.3f} ± {lr[key]['std']:.3f}",
                f"{worst} {m[worst][key]['mean']:.3f}",
                f"{rivals[worst]:+.3f}",
            ]
        cells.append(f"{c['best_single']['score']:.3f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", type=Path, nargs="*", metavar="[DATA_DIR] OUT_DIR")
    ap.add_argument("--table", action="store_true", help="print the README's grid table from --results and exit")
    ap.add_argument("--grid", action="store_true", help="run the README's grid of cells into OUT_DIR")
    ap.add_argument(
        "--cells",
        default=",".join(REAL_FIRST + [c for c in GRID if c not in REAL_FIRST]),
        help="comma-separated grid cells (default: all, real sets first)",
    )
    ap.add_argument(
        "--shared",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data",
        help="the project's shared data folder (default: ../shared/data beside the checkout)",
    )
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/grid.json"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--slices",
        type=int,
        default=TrainConfig().slices,
        help="k-means slices before the |R_cal| / 50 cap (the used count is written as slices_used)",
    )
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument(
        "--ablation-seeds",
        type=int,
        default=None,
        help="retrain the ablations on only the first N seeds of each cell (default: every seed)",
    )
    ap.add_argument(
        "--ablations",
        default=None,
        help="comma-separated: retrain only these ablations (default: all); with --grid, every other row of the "
        "cell is kept from --results, so a new ablation is added to the grid without retraining the rest",
    )
    ap.add_argument(
        "--setting",
        choices=["performance", "cost"],
        default="performance",
        help="training utility: score, or score - 0.03 x normalised realised cost (method.md §4.1)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="with --grid OUT_DIR: copy these results files' cells into --results and exit",
    )
    a = ap.parse_args(argv)
    if a.table:
        print(grid_table(json.loads(a.results.read_text(encoding="utf-8"))))
        return
    if len(a.dirs) != (1 if a.grid else 2):
        ap.error("give OUT_DIR with --grid, DATA_DIR OUT_DIR without")
    a.data_dir, a.out_dir = (None, a.dirs[0]) if a.grid else a.dirs
    named = tuple(a.ablations.split(",")) if a.ablations else None
    unknown = [n for n in named or () if n not in dict(ABLATIONS)]
    if unknown:
        ap.error(f"unknown ablation(s) {', '.join(unknown)}; ablations: {', '.join(dict(ABLATIONS))}")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    if a.grid and a.merge:
        merge(a.results, a.merge, a.out_dir)
        return
    if a.grid:
        unknown = [c for c in a.cells.split(",") if c not in GRID]
        if unknown:
            ap.error(f"unknown cell(s) {', '.join(unknown)}; cells: {', '.join(GRID)}")
        run_grid(a.out_dir, a.cells.split(","), a.shared, a.results, a.slices, a.epochs, a.ablation_seeds, named)
        return
    res = run(a.data_dir, a.out_dir, a.seeds, a.slices, a.epochs, a.setting, a.ablation_seeds, named)
    for name, m in res["methods"].items():
        print(
            f"{name:18s} nAUC {m['nauc']['mean']:.4f} ± {m['nauc']['std']:.4f}   "
            f"score@0 {m['score_at_lambda0']['mean']:.4f} ± {m['score_at_lambda0']['std']:.4f}   "
            f"QNC {m['qnc']['mean']:.3f}"
        )
    for k, v in res["targets"].items():
        print(f"[{'ok' if v else 'FAIL'}] {k}")


if __name__ == "__main__":
    main()
