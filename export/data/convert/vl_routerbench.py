"""VL-RouterBench (method.md §6.4) to the native format."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from ....runtime.errors import DataError
from ....runtime.validate import loads_json
from ..format import jsonl_objects, write_dataset
from ...files import sha256_file, staged_output
from .safe_io import (
    coerce_correct,
    load_array,
    load_plain_pickle,
    model_prices,
    safe_extract,
    source_errors,
    write_conversion_manifest,
)
from .vl_tsv_images import TsvImages, find_dir


VL_PRICES = {  # USD per 1M tokens (in, out), as in VL-RouterBench
    "InternVL2_5-78B": (1.00, 1.50),
    "Qwen2.5-VL-72B-Instruct": (0.80, 1.20),
    "Qwen2.5-VL-32B-Instruct": (0.40, 0.60),
    "Gemma3-27B": (0.35, 0.50),
    "deepseek_vl2": (0.35, 0.50),
    "Pixtral-12B": (0.25, 0.35),
    "MiMo-VL-7B-RL": (0.20, 0.30),
    "Kimi-VL-A3B-Thinking-2506": (0.20, 0.25),
    "llava_next_vicuna_7b": (0.20, 0.20),
    "Janus-Pro-7B": (0.18, 0.25),
    "Qianfan-VL-8B": (0.18, 0.25),
    "Phi-3.5-Vision": (0.10, 0.10),
    "SmolVLM2": (0.06, 0.06),
    "Janus-Pro-1B": (0.05, 0.05),
    "deepseek_vl2_tiny": (0.05, 0.05),
    "GPT4o": (2.50, 10.00),
    "GeminiFlash2-5": (0.30, 2.40),
}
VL_DATASETS = [
    "MMMU_DEV_VAL",
    "MMBench_DEV_EN_V11",
    "RealWorldQA",
    "MMStar",
    "HallusionBench",
    "InfoVQA_VAL",
    "MathVista_MINI",
    "MathVision_MINI",
    "MathVerse_MINI",
    "AI2D_TEST",
    "TextVQA_VAL",
    "ChartQA_TEST",
    "DocVQA_VAL",
    "OCRBench",
]
RESULT_SUFFIXES = [
    "_openai_result.xlsx",
    "_gpt-4o-mini_score.xlsx",
    "_gpt-4o-mini.xlsx",
    "_auxmatch.xlsx",
    "_results.xlsx",
]
IGNORED_SUFFIXES = ("_acc.xlsx", "_extract.xlsx", "_score.xlsx")
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "dev": "val",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def convert_vl_routerbench(src: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Convert VL-RouterBench (Layout A matrices, Layout B raw folder or archive) to the native format."""
    src = Path(src)
    with staged_output(out) as tmp, source_errors(src):
        root = src
        if src.is_file():
            if not src.name.endswith((".tar.gz", ".tgz", ".tar")):
                raise DataError(f"{src}: expected a folder or the vlm_router_data.tar.gz archive")
            root = tmp / ".extracted"
            safe_extract(src, root)
        warn: list[str] = []
        if (root / "data" / "matrices").is_dir():
            summary = _convert_layout_a(root, tmp, warn)
        else:
            eval_dir = find_dir(root, "VLMEvalKit_evaluation")
            if eval_dir is None:
                raise DataError(f"{src}: neither data/matrices/ (Layout A) nor VLMEvalKit_evaluation/ (Layout B) found")
            summary = _convert_layout_b(root, eval_dir, tmp, warn)
        if root != src:
            shutil.rmtree(root)
        summary["source_sha256"] = sha256_file(src) if src.is_file() else None
        write_conversion_manifest(tmp, source="VL-RouterBench", **summary, warnings=warn)
    summary["warnings"] = warn
    return summary


def _load_model_names(reg: Path) -> list[str]:
    if (reg / "models.txt").is_file():
        return [ln.strip() for ln in (reg / "models.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if (reg / "models.json").is_file():
        spec = loads_json((reg / "models.json").read_bytes(), str(reg / "models.json"), err=DataError)
        spec = spec.get("models", []) if isinstance(spec, dict) else spec
        if not isinstance(spec, list) or not all(
            isinstance(m, (str, dict)) and (isinstance(m, str) or isinstance(m.get("name"), str)) for m in spec
        ):
            raise DataError(f"{reg / 'models.json'}: expected a list of model names or {{'name': ...}} objects")
        return [m["name"] if isinstance(m, dict) else m for m in spec]
    if (reg / "model_index.pkl").is_file():
        obj = load_plain_pickle(reg / "model_index.pkl")
        if isinstance(obj, dict):
            return [k for k, _ in sorted(obj.items(), key=lambda kv: kv[1])]
        if isinstance(obj, (list, tuple)):
            return [str(x) for x in obj]
        raise DataError(f"{reg / 'model_index.pkl'}: expected a list or a dict name->index")
    raise DataError(f"{reg}: no model order (models.txt, models.json or model_index.pkl)")


def _read_table_ids(path: Path) -> list[str]:
    """sample ids from a split file (.jsonl, .json or .csv; column sample_id or id)."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return [r.get("sample_id") or r.get("id") for r in csv.DictReader(fh)]
    if path.suffix != ".json":
        return [str(rec.get("sample_id", rec.get("id"))) for _, _, rec in jsonl_objects(path)]
    items = loads_json(path.read_bytes(), str(path), err=DataError)
    return [str(it.get("sample_id", it.get("id"))) if isinstance(it, dict) else str(it) for it in items]


def _official_splits(root: Path) -> dict[str, str]:
    d = root / "SPLITS"
    out: dict[str, str] = {}
    if not d.is_dir():
        return out
    for f in sorted(d.iterdir()):
        name = SPLIT_NAMES.get(f.stem.lower())
        if name and f.suffix in (".jsonl", ".json", ".csv"):
            for sid in _read_table_ids(f):
                out[sid] = name
    return out


def _convert_layout_a(root: Path, tmp: Path, warn: list[str]) -> dict:
    mat, reg = root / "data" / "matrices", root / "data" / "registry"
    if not (mat / "Y.npz").is_file():
        raise DataError(f"{mat}: no Y.npz")
    Y = load_array(mat / "Y.npz", "Y")
    if (mat / "C.npy").is_file():
        C = load_array(mat / "C.npy")
    elif (mat / "C.npz").is_file():
        C = load_array(mat / "C.npz", "C")
    else:
        raise DataError(f"{mat}: no C.npy or C.npz")
    bad = np.isfinite(Y) & ((Y < 0) | (Y > 1))
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise DataError(f"{mat / 'Y.npz'}: value {Y[i, k]} at row {i}, column {k} is outside [0, 1]")
    meta = _read_parquet(reg / "meta.parquet")
    if "sample_id" not in meta:
        raise DataError(f"{reg / 'meta.parquet'}: needs a 'sample_id' column")
    sids = [str(s) for s in meta["sample_id"]]
    if Y.shape[0] != len(sids):
        raise DataError(f"{mat / 'Y.npz'}: {Y.shape[0]} rows but meta.parquet has {len(sids)}")
    if (mat / "sample_ids.pkl").is_file():
        c_ids = [str(s) for s in load_plain_pickle(mat / "sample_ids.pkl")]
        pos = {s: j for j, s in enumerate(c_ids)}
        missing = [s for s in sids if s not in pos]
        if missing:
            raise DataError(f"{mat / 'sample_ids.pkl'}: {len(missing)} meta rows have no cost row (e.g. {missing[0]})")
        C = C[[pos[s] for s in sids]]
    elif C.shape[0] != Y.shape[0]:
        raise DataError(f"{mat}: C has {C.shape[0]} rows and Y {Y.shape[0]}; add sample_ids.pkl to align them")
    models = _load_model_names(reg)
    if len(models) != Y.shape[1] or C.shape[1] != Y.shape[1]:
        raise DataError(f"{mat}: Y has {Y.shape[1]} columns, C {C.shape[1]}, model list {len(models)}")
    ds_col = next((c for c in ("dataset", "dataset_name", "benchmark") if c in meta), None)
    datasets = [str(v) for v in meta[ds_col]] if ds_col else [s.split("/")[0] for s in sids]
    text, assets = _benchmark_records(root)
    splits = _official_splits(root)
    if not splits and "split" in meta:
        splits = {s: SPLIT_NAMES.get(str(v).lower(), "") for s, v in zip(sids, meta["split"])}
    tsv = TsvImages(root, tmp, warn)
    records, excluded, nonbinary = [], 0, 0
    for i, sid in enumerate(sids):
        if splits and not splits.get(sid):
            excluded += 1
            continue
        outcomes = {}
        for k, m in enumerate(models):
            y, c = Y[i, k], C[i, k]
            if np.isfinite(y) and np.isfinite(c):
                nonbinary += y not in (0.0, 1.0)
                outcomes[m] = {"score": float(y), "cost": float(c)}
        if not outcomes:
            excluded += 1
            continue
        prompt = text.get(sid) or (str(meta["prompt"][i]) if "prompt" in meta else "")
        images = tsv.images_for(sid, assets.get(sid, []))
        rec = {"id": sid, "question": prompt, "images": images, "dataset": datasets[i], "outcomes": outcomes}
        if splits:
            rec["split"] = splits[sid]
        records.append(rec)
    registry = [
        {
            "name": m,
            "price_in_per_mtok": VL_PRICES.get(m, (None, None))[0],
            "price_out_per_mtok": VL_PRICES.get(m, (None, None))[1],
        }
        for m in models
    ]
    write_dataset(tmp, registry, records)
    bounds = mat / "cost_bounds.json"
    if bounds.is_file():
        shutil.copyfile(bounds, tmp / "cost_bounds.json")
    return {
        "layout": "A",
        "rows": len(records),
        "models": len(models),
        "excluded_rows": excluded,
        "non_binary_scores": nonbinary,
        "images_failed": tsv.failed,
        "cost_mode": "paper_tokens",
        "split_policy": "official" if splits else "generated",
    }


def _read_parquet(path: Path) -> dict[str, list]:
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise DataError("reading meta.parquet needs pyarrow: pip install -e '.[export]'") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: unreadable parquet ({e})") from None


def _benchmark_records(root: Path) -> tuple[dict[str, str], dict[str, list]]:
    text, assets = {}, {}
    bench = root / "BENCHMARKS"
    if not bench.is_dir():
        return text, assets
    for f in sorted(bench.rglob("*_samples.jsonl")):
        for _, _, r in jsonl_objects(f):
            sid = str(r.get("sample_id"))
            text[sid] = r.get("prompt") or ""
            assets[sid] = r.get("assets") or []
    return text, assets


def _result_rank(name: str) -> int | None:
    """Precedence of a VLMEvalKit result file (lower wins); None for auxiliary files."""
    for r, suf in enumerate(RESULT_SUFFIXES):
        if name.endswith(suf):
            return r
    if name.endswith(IGNORED_SUFFIXES):
        return None
    return len(RESULT_SUFFIXES) if name.endswith(".xlsx") else None


def _dataset_of(stem: str, model: str) -> str | None:
    if stem.startswith(model + "_"):
        stem = stem[len(model) + 1 :]
    best = None
    for d in VL_DATASETS:
        if stem.startswith(d) and (best is None or len(d) > len(best)):
            best = d
    return best


def _convert_layout_b(root: Path, eval_dir: Path, tmp: Path, warn: list[str]) -> dict:
    try:
        import openpyxl
    except ModuleNotFoundError:
        raise DataError("reading VLMEvalKit .xlsx files needs openpyxl: pip install -e '.[export]'") from None
    prices = {m: {"price_in_per_mtok": p[0], "price_out_per_mtok": p[1]} for m, p in VL_PRICES.items()}
    for name, spec in model_prices(root).items():
        prices[name] = {k: spec.get(k) for k in ("price_in_per_mtok", "price_out_per_mtok")}
    chosen: dict[tuple[str, str], tuple[int, Path]] = {}
    for f in sorted(eval_dir.rglob("*")):
        if f.suffix == ".pkl":
            warn.append(f"skipped pickle result file {f.relative_to(eval_dir)} (pickles are never loaded)")
            continue
        rank = _result_rank(f.name) if f.is_file() else None
        if rank is None:
            continue
        parts = f.relative_to(eval_dir).parts
        model = next((p for p in parts[:-1] if p in prices), f.parent.name)
        ds = _dataset_of(f.name[: -len(".xlsx")], model)
        if ds is None:
            warn.append(f"skipped {f.relative_to(eval_dir)}: unknown dataset")
            continue
        key = (model, ds)
        if key in chosen and chosen[key][0] == rank:
            warn.append(f"{model}/{ds}: several result files of equal rank; using the last, {f.relative_to(eval_dir)}")
        if key not in chosen or rank <= chosen[key][0]:
            chosen[key] = (rank, f)
    models = sorted({m for m, _ in chosen})
    if not models:
        raise DataError(f"{eval_dir}: no VLMEvalKit result workbooks found")
    for m in models:
        if prices.get(m, {}).get("price_in_per_mtok") is None:
            raise DataError(
                f"model '{m}' has no published price; add it to a models.json in {root} "
                f"with price_in_per_mtok and price_out_per_mtok"
            )
    tsv = TsvImages(root, tmp, warn)
    queries: dict[str, dict] = {}
    nonbinary = 0
    for (model, ds), (_, f) in sorted(chosen.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl's "no default style" noise on VLMEvalKit files
            wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
        try:
            rows = wb.worksheets[0].iter_rows(values_only=True)
            header = [str(h) if h is not None else "" for h in next(rows, [])]
            col = {h: j for j, h in enumerate(header)}
            id_col = next((c for c in ("sample_id", "id", "index") if c in col), None)
            y_col = next((c for c in ("is_correct", "score", "hit") if c in col), None)
            if id_col is None or y_col is None:
                warn.append(f"skipped {f.name}: no id column or no is_correct/score/hit column")
                continue
            p_in, p_out = prices[model]["price_in_per_mtok"], prices[model]["price_out_per_mtok"]
            for lineno, vals in enumerate(rows, start=2):
                get = lambda c: vals[col[c]] if c in col and col[c] < len(vals) else None  # noqa: E731
                wid = get(id_col)
                if wid is None:
                    continue
                wid = str(int(wid)) if isinstance(wid, float) and wid.is_integer() else str(wid)
                sid = wid if "/" in wid else f"{ds}/{wid}"
                y, nb = _coerce_truncating(get(y_col), where=f"{f}:{lineno}", column=y_col)
                nonbinary += nb
                q = queries.get(sid)
                if q is None:
                    text = _prompt_text(get)
                    q = queries[sid] = {
                        "id": sid,
                        "question": text,
                        "dataset": ds,
                        "outcomes": {},
                        "images": tsv.by_workbook_id(ds, wid, sid),
                    }
                if y is None:
                    continue
                t_in = len(TOKEN_RE.findall(q["question"]))
                t_out = len(TOKEN_RE.findall(str(get("prediction") or "")))
                q["outcomes"][model] = {"score": y, "cost": (t_in * p_in + t_out * p_out) / 1e6, "tokens": t_out}
        finally:
            wb.close()
    records = [q for q in queries.values() if q["outcomes"]]
    registry = [{"name": m, **prices[m]} for m in models]
    write_dataset(tmp, registry, records)
    return {
        "layout": "B",
        "rows": len(records),
        "models": len(models),
        "excluded_rows": len(queries) - len(records),
        "non_binary_scores": nonbinary,
        "images_failed": tsv.failed,
        "cost_mode": "approx_text_tokens",
        "prompt_mode": "hint+question+options",
        "split_policy": "generated",
    }


def _coerce_truncating(value, *, where: str, column: str) -> tuple[float | None, bool]:
    """Official-builder correctness: bool/strings as in §6.3, numbers truncated to int."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):
            return None, False
        v = float(int(value))
        if v not in (0.0, 1.0):
            raise DataError(f"{where}: {column} value {value} does not truncate to 0 or 1")
        return v, float(value) not in (0.0, 1.0)
    return coerce_correct(value, where=where, column=column)


def _prompt_text(get) -> str:
    q = str(get("question") or "")
    hint = get("hint")
    if hint not in (None, "") and str(hint).lower() != "nan":
        q = f"Hint: {hint}\n{q}"
    for opt in "ABCDEF":
        v = get(opt)
        if v not in (None, "") and str(v).lower() != "nan":
            q += f"\n{opt}. {v}"
    return q
