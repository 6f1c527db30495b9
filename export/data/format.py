"""Load and validate a routing dataset in the native lr-onnx format (method.md §6.2).

A dataset is a folder with `queries.jsonl` (one query per line, with every model's
observed outcome) and `models.json` (the registry, in routing order). Everything
else in lr-onnx (converters, demo generator, training, evaluation) meets data
only through this module. It needs numpy and the standard library, nothing more.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ...runtime.errors import DataError
from ...runtime.validate import loads_json, model_name, text

QUERIES_FILE = "queries.jsonl"
MODELS_FILE = "models.json"
SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "validation": "val", "test": "test"}


@dataclass
class RoutingData:
    """The common in-memory table of §6.1: one row per query, one column per model.

    `Y`, `C`, `Lat`, `Tok` are `[N, K]` float64 with NaN where unknown;
    `A[i, k]` is True when model k's outcome on query i is observed (finite score
    and cost), i.e. when k may be chosen for i.
    """

    root: Path
    ids: list[str]
    split: list[str | None]
    dataset: list[str]
    question: list[str]
    images: list[list[Path]]
    models: list[dict]
    Y: np.ndarray
    C: np.ndarray
    A: np.ndarray
    Lat: np.ndarray
    Tok: np.ndarray
    meta: list[dict | None]
    missing_images: int = 0
    image_refs: int = 0
    line_of: dict[str, int] = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return [m["name"] for m in self.models]

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return len(self.models)

    @property
    def has_split(self) -> bool:
        return any(s is not None for s in self.split)

    def without(self, names) -> "RoutingData":
        """The same queries with the named models' columns removed (the new-model protocol trains this way)."""
        unknown = set(names) - set(self.model_names)
        if unknown:
            raise DataError(f"not in the pool: {', '.join(sorted(unknown))}")
        keep = [j for j, m in enumerate(self.model_names) if m not in set(names)]
        return replace(
            self,
            models=[self.models[j] for j in keep],
            **{f: getattr(self, f)[:, keep] for f in ("Y", "C", "A", "Lat", "Tok")},
        )

    def for_pool(self, names: list[str]) -> "RoutingData":
        """The same queries with the outcome columns in the order of a pool: a model this data has no column for
        gets none (unavailable, NaN), a model the pool lacks is dropped (a bundle's or a run's pool against it)."""
        if self.model_names == list(names):
            return self
        idx = [self.model_names.index(m) if m in self.model_names else -1 for m in names]

        def cols(a: np.ndarray, fill) -> np.ndarray:
            return (
                np.stack([a[:, j] if j >= 0 else np.full(len(a), fill, a.dtype) for j in idx], axis=1)
                if idx
                else a[:, :0]
            )

        return replace(
            self,
            models=[self.models[j] if j >= 0 else {"name": m} for j, m in zip(idx, names)],
            **{f: cols(getattr(self, f), False if f == "A" else np.nan) for f in ("Y", "C", "A", "Lat", "Tok")},
        )


def load_models(path: Path) -> list[dict]:
    """Read `models.json`: a list of `{"name": str, "price_in_per_mtok"?: float, ...}`."""
    if not path.is_file():
        raise DataError(f"{path}: not found (a native dataset needs {MODELS_FILE} next to {QUERIES_FILE})")
    models = loads_json(path.read_bytes(), str(path), err=DataError)
    if not isinstance(models, list) or not models:
        raise DataError(f"{path}: expected a non-empty JSON list of model objects")
    seen: set[str] = set()
    for j, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"].strip():
            raise DataError(f"{path}: entry {j} needs a non-empty string 'name'")
        model_name(m["name"], f"{path}: entry {j} 'name'", err=DataError)
        if m["name"] in seen:
            raise DataError(f"{path}: duplicate model name '{m['name']}'")
        seen.add(m["name"])
        for key in ("price_in_per_mtok", "price_out_per_mtok"):
            v = m.get(key)
            if v is not None and (not _is_number(v) or not math.isfinite(v) or v < 0):
                raise DataError(f"{path}: model '{m['name']}': {key} must be a number >= 0, got {v!r}")
    return models


def jsonl_objects(path: Path):
    """(line number, "file:line", object) for each non-blank line; malformed lines raise `DataError`."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            rec = loads_json(raw, where, err=DataError)
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, where, rec


def load_dataset(root: str | os.PathLike, *, strict_images: bool = False) -> RoutingData:
    """Load and validate a native dataset folder; raise `DataError` with file:line on any fault.

    A missing image file is counted and the query keeps its other images (or
    becomes text-only); with `strict_images=True` it is an error instead.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (a native dataset is a folder with {QUERIES_FILE} and {MODELS_FILE})")
    qpath = root / QUERIES_FILE
    if not qpath.is_file():
        raise DataError(f"{root}: no {QUERIES_FILE} (expected the native format: {QUERIES_FILE} + {MODELS_FILE})")
    models = load_models(root / MODELS_FILE)
    index = {m["name"]: k for k, m in enumerate(models)}
    K = len(models)

    ids: list[str] = []
    splits: list[str | None] = []
    datasets: list[str] = []
    questions: list[str] = []
    images: list[list[Path]] = []
    metas: list[dict | None] = []
    rows_y: list[np.ndarray] = []
    rows_c: list[np.ndarray] = []
    rows_l: list[np.ndarray] = []
    rows_t: list[np.ndarray] = []
    line_of: dict[str, int] = {}
    missing = refs = 0
    split_first: tuple[int, bool] | None = None

    for lineno, where, rec in jsonl_objects(qpath):
        qid = rec.get("id")
        if not isinstance(qid, str) or not qid:
            raise DataError(f"{where}: 'id' must be a non-empty string")
        text(qid, f"{where}: 'id'", err=DataError)
        if qid in line_of:
            raise DataError(f"{where}: duplicate id '{qid}' (first on line {line_of[qid]})")
        line_of[qid] = lineno
        for key in ("question", "dataset"):
            if not isinstance(rec.get(key), str):
                raise DataError(f"{where}: '{key}' must be a string (query '{qid}')")
            text(rec[key], f"{where}: '{key}' (query '{qid}')", empty_ok=True, err=DataError)

        has_split = "split" in rec and rec["split"] is not None
        if split_first is None:
            split_first = (lineno, has_split)
        elif split_first[1] != has_split:
            raise DataError(
                f"{where}: 'split' must be on every row or on none (line {split_first[0]} "
                f"{'has' if split_first[1] else 'lacks'} it)"
            )
        split = None
        if has_split:
            split = SPLIT_ALIASES.get(str(rec["split"]).lower())
            if split is None:
                raise DataError(f"{where}: split '{rec['split']}' is not one of train, val, test")

        paths = rec.get("images")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DataError(f"{where}: 'images' must be a list of relative paths (use [] for text-only)")
        found: list[Path] = []
        for p in paths:
            rel = safe_relative_path(p)
            if rel is None:
                raise DataError(f"{where}: image path '{p}' must be relative to the dataset folder, without '..'")
            refs += 1
            full = root.joinpath(*rel.parts)
            if full.is_file():
                found.append(full)
            elif strict_images:
                raise DataError(f"{where}: image '{p}' not found under {root}")
            else:
                missing += 1

        y, c, lat, tok = _parse_outcomes(rec.get("outcomes"), index, K, where, qid)
        ids.append(qid)
        splits.append(split)
        datasets.append(rec["dataset"])
        questions.append(rec["question"])
        images.append(found)
        meta = rec.get("meta")
        metas.append(meta if isinstance(meta, dict) else None)
        rows_y.append(y)
        rows_c.append(c)
        rows_l.append(lat)
        rows_t.append(tok)

    if not ids:
        raise DataError(f"{qpath}: no queries")
    Y = np.vstack(rows_y)
    C = np.vstack(rows_c)
    return RoutingData(
        root=root,
        ids=ids,
        split=splits,
        dataset=datasets,
        question=questions,
        images=images,
        models=models,
        Y=Y,
        C=C,
        A=np.isfinite(Y) & np.isfinite(C),
        Lat=np.vstack(rows_l),
        Tok=np.vstack(rows_t),
        meta=metas,
        missing_images=missing,
        image_refs=refs,
        line_of=line_of,
    )


def _parse_outcomes(outcomes, index: dict[str, int], K: int, where: str, qid: str):
    """One row of Y, C, latency and tokens from a query's `outcomes` object."""
    if not isinstance(outcomes, dict) or not outcomes:
        raise DataError(f"{where}: query '{qid}' has no outcomes (need at least one model's score and cost)")
    y = np.full(K, np.nan)
    c = np.full(K, np.nan)
    lat = np.full(K, np.nan)
    tok = np.full(K, np.nan)
    for name, o in outcomes.items():
        if name not in index:
            raise DataError(f"{where}: outcome for model '{name}', which is not in {MODELS_FILE}")
        if o is None:
            continue
        if not isinstance(o, dict):
            raise DataError(f"{where}: outcome of '{name}' must be an object with 'score' and 'cost'")
        k = index[name]
        score, cost = o.get("score"), o.get("cost")
        if score is not None:
            if not _is_number(score) or math.isnan(score):
                raise DataError(f"{where}: score {score!r} for model '{name}' is not a number in [0, 1]")
            if not 0.0 <= score <= 1.0:
                raise DataError(f"{where}: score {score!r} for model '{name}' is outside [0, 1]")
            y[k] = float(score)
        if cost is not None:
            if not _is_number(cost) or not math.isfinite(cost) or cost < 0:
                raise DataError(f"{where}: cost {cost!r} for model '{name}' must be a number >= 0 or null")
            c[k] = float(cost)
        for key, arr in (("latency_ms", lat), ("tokens", tok)):
            v = o.get(key)
            if v is not None:
                if not _is_number(v) or not math.isfinite(v) or v < 0:
                    raise DataError(f"{where}: {key} {v!r} for model '{name}' must be a number >= 0")
                arr[k] = float(v)
    if not np.any(np.isfinite(y) & np.isfinite(c)):
        raise DataError(f"{where}: query '{qid}' has no outcomes (every model's score or cost is null)")
    return y, c, lat, tok


def safe_relative_path(p: str) -> PurePosixPath | None:
    """`p` as a relative POSIX path, or None if it is absolute, empty, or escapes with '..'."""
    norm = p.replace("\\", "/")
    rel = PurePosixPath(norm)
    if not norm or rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        return None
    return rel


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:120]


def write_dataset(out: Path, models: list[dict], records: list[dict]) -> None:
    """Write `models.json` and `queries.jsonl` into an (already prepared) folder.

    Callers build the whole dataset in a temporary folder and rename it into
    place, so a crash never leaves a half-written dataset behind.
    """
    (out / MODELS_FILE).write_text(json.dumps(models, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / QUERIES_FILE, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")


def load_outcomes_for(path: str | os.PathLike, name: str) -> RoutingData:
    """Labelled queries for ONE model (`models add`): a native folder or a `queries.jsonl` file.

    Only `outcomes[name]` is read (other models' outcomes are ignored); images are
    relative to the file's folder. Rows where the model has no outcome are dropped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / QUERIES_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such outcomes file (a queries.jsonl or a native dataset folder)")
    root = path.parent
    rows = []
    for lineno, where, rec in jsonl_objects(path):
        text(rec.get("question"), f"{where}: 'question'", err=DataError)
        outs = rec.get("outcomes") or {}
        if not isinstance(outs, dict) or outs.get(name) is None:
            continue
        y, c, lat, tok = _parse_outcomes({name: outs[name]}, {name: 0}, 1, where, str(rec.get("id", lineno)))
        imgs = []
        for p in rec.get("images") or []:
            rel = safe_relative_path(str(p))
            if rel is None:
                raise DataError(f"{where}: image path '{p}' must be relative, without '..'")
            full = root.joinpath(*rel.parts)
            if full.is_file():
                imgs.append(full)
        rows.append((str(rec.get("id", lineno)), rec["question"], imgs, y, c, lat, tok, rec.get("dataset", "")))
    if not rows:
        raise DataError(f"{path}: no query has an outcome for model '{name}'")
    return RoutingData(
        root=root,
        ids=[r[0] for r in rows],
        split=[None] * len(rows),
        dataset=[r[7] for r in rows],
        question=[r[1] for r in rows],
        images=[r[2] for r in rows],
        models=[{"name": name}],
        Y=np.vstack([r[3] for r in rows]),
        C=np.vstack([r[4] for r in rows]),
        A=np.vstack([np.isfinite(r[3]) & np.isfinite(r[4]) for r in rows]),
        Lat=np.vstack([r[5] for r in rows]),
        Tok=np.vstack([r[6] for r in rows]),
        meta=[None] * len(rows),
    )


def labelled_queries(data: RoutingData, k: int = 0):
    """One model's labelled queries, as `models add --bundle` takes them: ((images, question) pairs, then its scores,
    costs, latencies and output tokens), only the rows where it has an outcome."""
    ok = data.A[:, k]
    rows = [i for i in range(data.n) if ok[i]]
    return (
        [(data.images[i], data.question[i]) for i in rows],
        data.Y[ok, k],
        data.C[ok, k],
        data.Lat[ok, k],
        data.Tok[ok, k],
    )
