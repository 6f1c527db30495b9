"""MMR-Bench (method.md §6.3) to the native format."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path


from ....runtime.errors import DataError
from ..format import write_dataset
from ...files import sha256_file, staged_output
from .safe_io import (
    coerce_correct,
    copy_image,
    float_or_none,
    model_order,
    model_prices,
    safe_extract,
    source_errors,
    write_conversion_manifest,
)


MMR_PREFIXES = {
    "MathVerse": "MathVerse",
    "MathVision": "MathVision",
    "MathVista": "MathVista",
    "OCRBench": "OCRBench",
    "RealWorldQA": "RealWorldQA",
    "MMStar": "MMStar",
    "SEEDBench2_Plus": "SEEDBenchv2Plus",
}
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".webp")


def mmr_image_for(dataset_idx: str) -> tuple[str | None, str | None, str | None]:
    """(dataset, folder, image id) for a `dataset_idx` by the longest matching prefix."""
    best = None
    for p in MMR_PREFIXES:
        if dataset_idx == p or dataset_idx.startswith(p + "_"):
            if best is None or len(p) > len(best):
                best = p
    if best is None:
        return None, None, None
    return best, MMR_PREFIXES[best], dataset_idx[len(best) + 1 :]


def convert_mmr(src: str | os.PathLike, out: str | os.PathLike, *, official_split: bool = False) -> dict:
    """Convert an MMR-Bench folder (CSV + image folders or images.tar.gz) to the native format."""
    src = Path(src)
    csv_path = next((src / n for n in ("MMR_Bench.csv", "MMR-Bench.csv") if (src / n).is_file()), None)
    if csv_path is None:
        raise DataError(f"{src}: no MMR_Bench.csv (or MMR-Bench.csv); is this the MMR-Bench folder?")
    with staged_output(out) as tmp, source_errors(src):
        image_root = src
        if not any((src / f).is_dir() for f in MMR_PREFIXES.values()) and (src / "images.tar.gz").is_file():
            image_root = tmp / ".extracted"
            safe_extract(src / "images.tar.gz", image_root)
        rows, models, nonbinary, zero_costs = _read_mmr_csv(csv_path, src, image_root)
        records = []
        missing = 0
        for r in rows:
            files = []
            for rel in r["images"]:
                found = copy_image(image_root, rel, tmp)
                if found:
                    files.append(found)
            if not files:
                missing += 1
            records.append(
                {
                    "id": r["id"],
                    "question": r["question"],
                    "images": files,
                    "dataset": r["dataset"],
                    "outcomes": r["outcomes"],
                }
            )
        if official_split:
            train = set(_sklearn_train_indices(len(records), train_size=0.2, seed=42))
            for i, rec in enumerate(records):
                rec["split"] = "train" if i in train else "test"
        seen = {}
        for rec in records:
            if rec["id"] in seen:
                raise DataError(f"{csv_path}: duplicate id '{rec['id']}' remains after disambiguation")
            seen[rec["id"]] = True
        prices = model_prices(src)
        registry = [{"name": m, **{k: v for k, v in prices.get(m, {}).items() if k != "name"}} for m in models]
        if image_root != src:
            shutil.rmtree(image_root)
        write_dataset(tmp, registry, records)
        write_conversion_manifest(
            tmp,
            source="MMR-Bench",
            source_file=csv_path.name,
            source_sha256=sha256_file(csv_path),
            rows=len(records),
            models=len(models),
            rows_without_image=missing,
            non_binary_scores=nonbinary,
            zero_costs=zero_costs,
            cost_mode="dataset",
            split_policy="official (MMR-Bench train_test_split)" if official_split else "generated",
        )
    return {"rows": len(records), "models": len(models), "missing_images": missing}


def _read_mmr_csv(csv_path: Path, src: Path, image_root: Path):
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        headers = reader.fieldnames or []
        if "dataset_idx" not in headers or "question" not in headers:
            raise DataError(f"{csv_path}: needs the columns 'dataset_idx' and 'question'")
        found = [
            h[: -len("_correct")]
            for h in headers
            if h.endswith("_correct") and f"{h[: -len('_correct')]}_cost" in headers
        ]
        if not found:
            raise DataError(f"{csv_path}: no model columns (a model needs both <name>_correct and <name>_cost)")
        models = model_order(src, found)
        raw = []
        nonbinary = zero_costs = 0
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            didx = (row.get("dataset_idx") or "").strip()
            if not didx:
                raise DataError(f"{where}: empty dataset_idx")
            outcomes = {}
            for m in models:
                y, nb = coerce_correct(row.get(f"{m}_correct"), where=where, column=f"{m}_correct")
                c = float_or_none(row.get(f"{m}_cost"), where, f"{m}_cost")
                nonbinary += nb
                if y is None or c is None:
                    continue
                zero_costs += c == 0
                o = {"score": y, "cost": c}
                tok = float_or_none(row.get(f"{m}_token"), where, f"{m}_token") if f"{m}_token" in row else None
                if tok is not None:
                    o["tokens"] = tok
                outcomes[m] = o
            if not outcomes:
                raise DataError(f"{where}: row '{didx}' has no model with both a correctness and a cost value")
            dataset, folder, image_id = mmr_image_for(didx)
            if row.get("img_path"):
                images = [row["img_path"].strip()]
            elif row.get("image_paths"):
                images = _parse_path_list(row["image_paths"], where)
            elif folder is not None:
                images = [f"{folder}/{image_id}{ext}" for ext in IMAGE_EXTS]
                images = [next((p for p in images if (image_root / p).is_file()), images[0])]
            else:
                images = []
            raw.append(
                {
                    "didx": didx,
                    "sample_id": (row.get("sample_id") or "").strip(),
                    "question": row.get("question") or "",
                    "images": images,
                    "dataset": dataset or didx.rsplit("_", 1)[0],
                    "outcomes": outcomes,
                }
            )
    counts: dict[str, int] = {}
    for r in raw:
        counts[r["didx"]] = counts.get(r["didx"], 0) + 1
    has_sid = "sample_id" in headers
    for r in raw:
        if has_sid:
            r["id"] = r["sample_id"] or r["didx"]
        elif counts[r["didx"]] == 1:
            r["id"] = r["didx"]
        else:
            r["id"] = f"{r['didx']}#{hashlib.sha1(r['question'].encode('utf-8')).hexdigest()[:8]}"
    return raw, models, nonbinary, zero_costs


def _parse_path_list(cell: str, where: str) -> list[str]:
    cell = cell.strip()
    if cell.startswith("["):
        try:
            val = json.loads(cell)
        except json.JSONDecodeError:
            try:
                val = ast.literal_eval(cell)
            except (ValueError, SyntaxError):
                raise DataError(f"{where}: image_paths '{cell[:60]}' is not a list") from None
        return [str(v) for v in val]
    return [p.strip() for p in re.split(r"[;|]", cell) if p.strip()]


def _sklearn_train_indices(n: int, *, train_size: float, seed: int) -> list[int]:
    """Row indices of sklearn `train_test_split(range(n), train_size, shuffle=True, random_state=seed)`."""
    try:
        from sklearn.model_selection import train_test_split
    except ModuleNotFoundError:
        raise DataError("--mmr-official-split needs scikit-learn: pip install -e '.[export]'") from None
    train, _ = train_test_split(list(range(n)), train_size=train_size, shuffle=True, random_state=seed)
    return train
