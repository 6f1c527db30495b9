"""A training run's folder (`lr-onnx train --out RUN`): the one place that knows its files.

    config.json          the training and router configuration, the data folder, the memory's settings
    profiles.json        the pool: names, raw profiles, expected costs, the profile space, added models
    weights.safetensors  the router's weights
    metrics.json         `lr-onnx evaluate`'s results
    memory_selection.json, curves.json, preprocessing.json, splits.csv, ablations/, report.md, frontier.png

Readers get a clear `DataError` naming the folder when a file is missing or broken, instead of a KeyError or a
JSON traceback; writers replace whole files atomically (`runtime.files`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import DataError
from ..files import atomic_write_text

CONFIG, PROFILES, WEIGHTS, METRICS = "config.json", "profiles.json", "weights.safetensors", "metrics.json"
PER_MODEL = ("models", "raw_profiles", "e_bar", "cost_model")  # profiles.json's lists with one entry per pool model


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, path: str | Path) -> "RunDir":
        return path if isinstance(path, RunDir) else cls(Path(path))

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def trained(self) -> bool:
        """Weights and configuration are there: a finished `lr-onnx train`."""
        return self.weights.is_file() and self.file(CONFIG).is_file()

    def read_json(self, name: str, *, required: bool = True):
        p = self.file(name)
        if not p.is_file():
            if required:
                raise DataError(f"{self.path}: no {name} (not a run folder from lr-onnx train)")
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{p}: cannot be read ({type(e).__name__}); retrain or restore it") from None

    def write_json(self, name: str, obj, *, indent: int | None = 2, allow_nan: bool = True) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")

    def config(self) -> dict:
        return self.read_json(CONFIG)

    def metrics(self) -> dict | None:
        """`lr-onnx evaluate`'s metrics.json, None before the run is evaluated."""
        return self.read_json(METRICS, required=False)

    def profiles(self) -> dict:
        """profiles.json, every per-model list checked for one entry per model (a list that stopped short would
        silently drop models wherever the lists are zipped together)."""
        prof = self.read_json(PROFILES)
        lengths = {k: len(prof[k]) for k in PER_MODEL if isinstance(prof.get(k), list)}
        if len(set(lengths.values())) > 1:
            raise DataError(
                f"{self.file(PROFILES)}: its per-model lists disagree on the pool size ("
                + ", ".join(f"{k} {n}" for k, n in lengths.items())
                + "); re-add the models or retrain"
            )
        return prof

    def write_profiles(self, prof: dict) -> None:
        self.write_json(PROFILES, prof)
