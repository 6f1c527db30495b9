"""Whether a run's router reads images: chosen on validation (issue 21).

Image features help where the answer depends on the picture (blindtest's line crossings) and mislead where the
image encoder knows nothing of the domain: on vqarad's radiology scans the router trained without them beat the
one trained with them on every seed. So `lr-onnx train`, on data with images, trains the router a second time on
the questions alone (`runtime.features.without_images`, the `--text-only` run) and keeps it only if it routes
validation queries better by a paired one-sided test at 5% (`Z`): each query's utility under the text-only router
minus under the router with images. Small validation splits are noisy (inkbench has 40 pages), and a plain "higher
mean wins" traded images away on one seed in three there for nothing. The other router stays in the run as its
ablation (`ablations/text_only`, or `ablations/with_images` when text won), so `evaluate` compares the two without
retraining. A bundle exported from a text-only run says so in its manifest (`query_features`), and its router never
runs the image encoder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from statistics import NormalDist

import numpy as np

from ..data.format import load_dataset
from .rundir import CONFIG, RunDir

if TYPE_CHECKING:  # annotations only: the trainer imports torch lazily, and so does this module
    from .trainer import TrainConfig

Z = NormalDist().inv_cdf(0.95)  # text only must beat images by this many standard errors (one-sided, 5%)
CHOICE = "modality"  # config.json: {"chosen": "images" | "text", "val_utility": {...}}
ABLATION = {"images": "with_images", "text": "text_only"}  # the run's ablation folder for each choice
RUN_FILES = (  # what `train` writes: moved whole when the choice swaps a run with its text-only twin
    "weights.safetensors",
    "profiles.json",
    "curves.json",
    "memory_selection.json",
    "preprocessing.json",
    "splits.csv",
    "splits.meta.json",
    CONFIG,
)
STALE = ("metrics.json", "report.md", "frontier.png")  # an evaluation of the run before the swap


def choose_modality(data_dir: str | Path, run_dir: str | Path, progress: bool = True) -> dict | None:
    """Train RUN's text-only twin (unless there) and keep it instead of RUN's router if it routes validation better
    (`paired_validation`, `Z`); the choice is recorded in config.json under `modality` and made once. None where
    there is nothing to choose: the data has no images, or the run was trained text-only on purpose (`--text-only`)."""
    from .trainer import TrainConfig, train

    run = RunDir.of(run_dir)
    cfg = run.config()
    if cfg.get(CHOICE) is not None:
        return cfg[CHOICE]
    if cfg["train"].get("text_only") or not any(load_dataset(data_dir).images):
        return None
    twin = run.path / "ablations" / ABLATION["text"]
    tcfg = TrainConfig.of_run(cfg["train"])
    if not RunDir(twin).trained:
        train(data_dir, twin, replace(tcfg, text_only=True), progress=progress)
    record = paired_validation(data_dir, run.path, twin, tcfg)
    chosen = "text" if record["z"] > Z else "images"
    if chosen == "text":
        _swap(run.path, twin, run.path / "ablations" / ABLATION["images"])
    record = {"chosen": chosen, **record, "z_needed": round(Z, 4)}
    run.write_json(CONFIG, {**run.config(), CHOICE: record})
    return record


def paired_validation(data_dir: str | Path, images: Path, text: Path, tcfg: "TrainConfig") -> dict:
    """Each router's mean routed utility on the validation rows (`val_utility`), and the paired z of text minus
    images (`z`: the mean difference over its standard error; 0 where they never differ)."""
    from .trainer import attach_run_memory, load_router, load_training_set, routed_utility

    got = {}
    for name, folder in (("images", images), ("text", text)):
        net, rcfg = load_router(folder)
        P = load_training_set(data_dir, slices=tcfg.slices, text_only=name == "text", progress=False)
        P = attach_run_memory(P, rcfg)
        val = np.flatnonzero(P.masks["val"] & P.data.A.any(axis=1))
        got[name] = routed_utility(net, P, val, P.utility(tcfg.w_c), tcfg.w_c)
    d = got["text"] - got["images"]
    return {
        "val_utility": {k: round(float(v.mean()), 6) for k, v in got.items()},
        "val_rows": int(len(d)),
        "z": round(paired_z(d), 4),
    }


def paired_z(d: np.ndarray) -> float:
    """The paired z of per-query differences `d`: their mean over its standard error (0 where they never differ)."""
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()) / se if se > 0 else 0.0


def _swap(run: Path, twin: Path, keep: Path) -> None:
    """The text-only twin's files become the run's; the run's own move to `keep`. The ablations trained with images
    (and any evaluation) are removed: `evaluate` retrains them as the text-only router's."""
    keep.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run / name).is_file():
            os.replace(run / name, keep / name)
    for name in RUN_FILES[::-1]:  # weights last: until they land the folder reads as untrained, never as a mix
        if (twin / name).is_file():
            os.replace(twin / name, run / name)
    shutil.rmtree(twin)
    for sub in (run / "ablations").iterdir():
        if sub.is_dir() and sub != keep:
            shutil.rmtree(sub)
    for name in STALE:
        (run / name).unlink(missing_ok=True)
