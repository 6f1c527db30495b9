"""Converters from the paper's benchmarks to the native format (method.md §6.3, §6.4).

Each converter reads a published layout and writes a native dataset folder, then
stops: loading, splits and training only ever see the native format. Output is
built in a temporary sibling folder and renamed into place at the end, so a failed
conversion leaves nothing behind. Archives are extracted member by member under
explicit checks, and pickles are read with an unpickler that refuses every class.
"""
from __future__ import annotations

import ast
import base64
import csv
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import tarfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..runtime.errors import DataError
from ..runtime.validate import loads_json
from ..version import __version__
from .data import jsonl_objects, safe_relative_path, write_dataset
from .files import sha256_file, staged_output

FORMAT_VERSION = 1
MAX_MEMBERS = 2_000_000
MAX_TOTAL_BYTES = 200 * 1024**3

# ----------------------------------------------------------------------------- shared helpers
@contextmanager
def source_errors(src: Path):
    """How a published source's files can be broken, each as one `DataError` line: text that is not UTF-8,
    a truncated or corrupt archive, a broken zip (.npz), an array file that holds a pickle, a broken CSV."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{src}: a file is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{src}: archive truncated or corrupt ({type(e).__name__}: {str(e)[:120]})") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{src}: a .npz/.zip file is corrupt ({str(e)[:120]})") from None
    except csv.Error as e:
        raise DataError(f"{src}: malformed CSV ({str(e)[:120]})") from None


def load_array(path: Path, key: str | None = None) -> np.ndarray:
    """A numeric array from .npy / .npz, never unpickling: object arrays are refused with one line."""
    try:
        with open(path, "rb") as fh:
            z = np.load(fh, allow_pickle=False)
            if isinstance(z, np.lib.npyio.NpzFile):
                with z:
                    if not z.files:
                        raise DataError(f"{path}: an empty .npz")
                    a = z[key] if key in z.files else z[z.files[0]]
            else:
                a = z
            return np.asarray(a, dtype=float)
    except (ValueError, TypeError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a numeric array file ({str(e).splitlines()[0][:120]}); "
                        f"pickled or object arrays are never loaded") from None




def safe_extract(archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS,
                 max_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Extract a tar archive into an empty `dest`, refusing anything that could escape it.

    Rejected: absolute names, '..' components, symbolic and hard links, device and
    FIFO members; capped: member count and total uncompressed size.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise DataError(f"{dest}: extraction target is not empty")
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None
    with tf:
        members = []
        total = 0
        for m in tf:
            if len(members) >= max_members:
                raise DataError(f"{archive}: more than {max_members} members; refusing to extract")
            if safe_relative_path(m.name) is None or m.name.startswith("/"):
                raise DataError(f"{archive}: member '{m.name}' has an absolute or '..' path; refusing to extract")
            if m.issym() or m.islnk():
                raise DataError(f"{archive}: member '{m.name}' is a link; refusing to extract")
            if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir()):
                raise DataError(f"{archive}: member '{m.name}' is a device or special file; refusing to extract")
            total += max(m.size, 0)
            if total > max_bytes:
                raise DataError(f"{archive}: more than {max_bytes} bytes uncompressed; refusing to extract")
            members.append(m)
        for m in members:
            tf.extract(m, dest, filter="data")


class _RefusingUnpickler(pickle.Unpickler):
    """Loads only plain containers of str/int/float: any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_plain_pickle(path: Path):
    """Read a pickle of plain lists/dicts/str/int, or fail asking for a text sidecar."""
    try:
        with open(path, "rb") as fh:
            return _RefusingUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a plain pickle of lists/dicts ({e}); provide a text sidecar "
                        f"({path.stem.replace('_index', '')}s.txt or .json) instead") from None


def coerce_correct(value, *, where: str, column: str) -> tuple[float | None, bool]:
    """A correctness cell as (0/1 score or None if unavailable, was-non-binary).

    bool, "true"/"false", "yes"/"no", "1"/"0" map to 1/0; a number in [0, 1] is
    rounded (>= 0.5 is 1); empty and NaN mean unavailable; anything else is an error.
    """
    if value is None:
        return None, False
    if isinstance(value, bool):
        return float(value), False
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("", "nan", "none", "null"):
            return None, False
        if s in ("true", "yes", "y", "t"):
            return 1.0, False
        if s in ("false", "no", "n", "f"):
            return 0.0, False
        try:
            value = float(s)
        except ValueError:
            raise DataError(f"{where}: {column} value '{value}' is not a boolean or a number") from None
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None, False
        if not 0.0 <= v <= 1.0:
            raise DataError(f"{where}: {column} value {v} is outside [0, 1]")
        return (1.0 if v >= 0.5 else 0.0), v not in (0.0, 1.0)
    raise DataError(f"{where}: {column} value {value!r} is not a boolean or a number")


def _float_or_none(value, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} value {value!r} is not a number") from None
    if math.isnan(v):
        return None
    if v < 0 or math.isinf(v):
        raise DataError(f"{where}: {column} value {v} must be a finite number >= 0")
    return v


def _write_manifest(out: Path, **fields) -> None:
    manifest = {"format_version": FORMAT_VERSION, "lr_onnx_version": __version__, **fields}
    (out / "dataset_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _models_spec(src: Path) -> list:
    """Entries of an optional `models.json` in SRC (a list, or {"models": [...]}); [] if absent."""
    path = src / "models.json"
    if not path.is_file():
        return []
    spec = loads_json(path.read_bytes(), str(path), err=DataError)
    if isinstance(spec, dict):
        spec = spec.get("models", [])
    if not isinstance(spec, list):
        raise DataError(f"{path}: expected a list of models or {{\"models\": [...]}}")
    return spec


def _model_order(src: Path, found: list[str]) -> list[str]:
    """Registry order: a `models.json` in SRC fixes it (names first, others appended sorted)."""
    names = [m["name"] if isinstance(m, dict) else str(m) for m in _models_spec(src)]
    return [n for n in names if n in found] + sorted(set(found) - set(names))


def _model_prices(src: Path) -> dict[str, dict]:
    return {m["name"]: m for m in _models_spec(src) if isinstance(m, dict) and "name" in m}


# ----------------------------------------------------------------------------- MMR-Bench (§6.3)

MMR_PREFIXES = {
    "MathVerse": "MathVerse", "MathVision": "MathVision", "MathVista": "MathVista", "OCRBench": "OCRBench",
    "RealWorldQA": "RealWorldQA", "MMStar": "MMStar", "SEEDBench2_Plus": "SEEDBenchv2Plus",
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
    return best, MMR_PREFIXES[best], dataset_idx[len(best) + 1:]


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
                found = _copy_image(image_root, rel, tmp)
                if found:
                    files.append(found)
            if not files:
                missing += 1
            records.append({"id": r["id"], "question": r["question"], "images": files,
                            "dataset": r["dataset"], "outcomes": r["outcomes"]})
        if official_split:
            train = set(_sklearn_train_indices(len(records), train_size=0.2, seed=42))
            for i, rec in enumerate(records):
                rec["split"] = "train" if i in train else "test"
        seen = {}
        for rec in records:
            if rec["id"] in seen:
                raise DataError(f"{csv_path}: duplicate id '{rec['id']}' remains after disambiguation")
            seen[rec["id"]] = True
        prices = _model_prices(src)
        registry = [{"name": m, **{k: v for k, v in prices.get(m, {}).items() if k != "name"}} for m in models]
        if image_root != src:
            shutil.rmtree(image_root)
        write_dataset(tmp, registry, records)
        _write_manifest(tmp, source="MMR-Bench", source_file=csv_path.name, source_sha256=sha256_file(csv_path),
                        rows=len(records), models=len(models), rows_without_image=missing,
                        non_binary_scores=nonbinary, zero_costs=zero_costs, cost_mode="dataset",
                        split_policy="official (MMR-Bench train_test_split)" if official_split else "generated")
    return {"rows": len(records), "models": len(models), "missing_images": missing}


def _read_mmr_csv(csv_path: Path, src: Path, image_root: Path):
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        headers = reader.fieldnames or []
        if "dataset_idx" not in headers or "question" not in headers:
            raise DataError(f"{csv_path}: needs the columns 'dataset_idx' and 'question'")
        found = [h[: -len("_correct")] for h in headers
                 if h.endswith("_correct") and f"{h[: -len('_correct')]}_cost" in headers]
        if not found:
            raise DataError(f"{csv_path}: no model columns (a model needs both <name>_correct and <name>_cost)")
        models = _model_order(src, found)
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
                c = _float_or_none(row.get(f"{m}_cost"), where, f"{m}_cost")
                nonbinary += nb
                if y is None or c is None:
                    continue
                zero_costs += c == 0
                o = {"score": y, "cost": c}
                tok = _float_or_none(row.get(f"{m}_token"), where, f"{m}_token") if f"{m}_token" in row else None
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
            raw.append({"didx": didx, "sample_id": (row.get("sample_id") or "").strip(),
                        "question": row.get("question") or "", "images": images,
                        "dataset": dataset or didx.rsplit("_", 1)[0], "outcomes": outcomes})
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


def _copy_image(root: Path, rel: str, out: Path) -> str | None:
    """Copy `root/rel` to `out/images/rel`; return the new relative path, or None if absent or unsafe."""
    safe = safe_relative_path(rel)
    if safe is None:
        return None
    srcp = root.joinpath(*safe.parts)
    if not srcp.is_file():
        return None
    dst = out / "images" / Path(*safe.parts)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(srcp, dst)
    return "images/" + "/".join(safe.parts)


def _sklearn_train_indices(n: int, *, train_size: float, seed: int) -> list[int]:
    """Row indices of sklearn `train_test_split(range(n), train_size, shuffle=True, random_state=seed)`."""
    try:
        from sklearn.model_selection import train_test_split
    except ModuleNotFoundError:
        raise DataError("--mmr-official-split needs scikit-learn: pip install -e '.[export]'") from None
    train, _ = train_test_split(list(range(n)), train_size=train_size, shuffle=True, random_state=seed)
    return train


# ----------------------------------------------------------------------------- VL-RouterBench (§6.4)

VL_PRICES = {  # USD per 1M tokens (in, out), as in VL-RouterBench
    "InternVL2_5-78B": (1.00, 1.50), "Qwen2.5-VL-72B-Instruct": (0.80, 1.20), "Qwen2.5-VL-32B-Instruct": (0.40, 0.60),
    "Gemma3-27B": (0.35, 0.50), "deepseek_vl2": (0.35, 0.50), "Pixtral-12B": (0.25, 0.35),
    "MiMo-VL-7B-RL": (0.20, 0.30), "Kimi-VL-A3B-Thinking-2506": (0.20, 0.25), "llava_next_vicuna_7b": (0.20, 0.20),
    "Janus-Pro-7B": (0.18, 0.25), "Qianfan-VL-8B": (0.18, 0.25), "Phi-3.5-Vision": (0.10, 0.10),
    "SmolVLM2": (0.06, 0.06), "Janus-Pro-1B": (0.05, 0.05), "deepseek_vl2_tiny": (0.05, 0.05),
    "GPT4o": (2.50, 10.00), "GeminiFlash2-5": (0.30, 2.40),
}
VL_DATASETS = [
    "MMMU_DEV_VAL", "MMBench_DEV_EN_V11", "RealWorldQA", "MMStar", "HallusionBench", "InfoVQA_VAL",
    "MathVista_MINI", "MathVision_MINI", "MathVerse_MINI", "AI2D_TEST",
    "TextVQA_VAL", "ChartQA_TEST", "DocVQA_VAL", "OCRBench",
]
RESULT_SUFFIXES = ["_openai_result.xlsx", "_gpt-4o-mini_score.xlsx", "_gpt-4o-mini.xlsx", "_auxmatch.xlsx",
                   "_results.xlsx"]
IGNORED_SUFFIXES = ("_acc.xlsx", "_extract.xlsx", "_score.xlsx")
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SPLIT_NAMES = {"train": "train", "training": "train", "dev": "val", "val": "val", "valid": "val",
               "validation": "val", "test": "test"}


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
            eval_dir = _find_dir(root, "VLMEvalKit_evaluation")
            if eval_dir is None:
                raise DataError(f"{src}: neither data/matrices/ (Layout A) nor VLMEvalKit_evaluation/ (Layout B) found")
            summary = _convert_layout_b(root, eval_dir, tmp, warn)
        if root != src:
            shutil.rmtree(root)
        summary["source_sha256"] = sha256_file(src) if src.is_file() else None
        _write_manifest(tmp, source="VL-RouterBench", **summary, warnings=warn)
    summary["warnings"] = warn
    return summary


def _find_dir(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "vlm_router_data" / name):
        if cand.is_dir():
            return cand
    return None


def _load_model_names(reg: Path) -> list[str]:
    if (reg / "models.txt").is_file():
        return [ln.strip() for ln in (reg / "models.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if (reg / "models.json").is_file():
        spec = loads_json((reg / "models.json").read_bytes(), str(reg / "models.json"), err=DataError)
        spec = spec.get("models", []) if isinstance(spec, dict) else spec
        if not isinstance(spec, list) or not all(isinstance(m, (str, dict)) and (isinstance(m, str) or
                                                 isinstance(m.get("name"), str)) for m in spec):
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
    tsv = _TsvImages(root, tmp, warn)
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
    registry = [{"name": m, "price_in_per_mtok": VL_PRICES.get(m, (None, None))[0],
                 "price_out_per_mtok": VL_PRICES.get(m, (None, None))[1]} for m in models]
    write_dataset(tmp, registry, records)
    bounds = mat / "cost_bounds.json"
    if bounds.is_file():
        shutil.copyfile(bounds, tmp / "cost_bounds.json")
    return {"layout": "A", "rows": len(records), "models": len(models), "excluded_rows": excluded,
            "non_binary_scores": nonbinary, "images_failed": tsv.failed, "cost_mode": "paper_tokens",
            "split_policy": "official" if splits else "generated"}


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


class _TsvImages:
    """Decode base64 images from `TSV_images/<DATASET>.tsv` into the output folder, on demand."""

    def __init__(self, root: Path, out: Path, warn: list[str]):
        self.dir = _find_dir(root, "TSV_images")
        self.root, self.out, self.warn = root, out, warn
        self.cache: dict[str, tuple[list[dict], dict[str, int]]] = {}
        self.failed = 0

    def _table(self, name: str):
        if name not in self.cache:
            rows, by_index = [], {}
            path = self.dir / Path(name).name if self.dir else None
            if path is not None and path.is_file():
                previous = csv.field_size_limit(1 << 30)  # base64 images; the global limit is restored below
                try:
                    with open(path, newline="", encoding="utf-8") as fh:
                        for j, r in enumerate(csv.DictReader(fh, delimiter="\t")):
                            rows.append(r)
                            by_index[str(r.get("index"))] = j
                finally:
                    csv.field_size_limit(previous)
            elif path is not None:
                self.warn.append(f"TSV file {name} not found")
            self.cache[name] = (rows, by_index)
        return self.cache[name]

    def _decode(self, rows, by_index, j: int, stem: str) -> list[str]:
        cell = rows[j].get("image") or ""
        for _ in range(4):  # a short cell refers to another row's image
            if len(cell) <= 64 and cell in by_index:
                cell = rows[by_index[cell]].get("image") or ""
            else:
                break
        blobs = [cell]
        if cell.startswith("["):
            try:
                blobs = [str(b) for b in ast.literal_eval(cell)]
            except (ValueError, SyntaxError):
                blobs = []
        paths = []
        for n, b in enumerate(blobs):
            try:
                raw = base64.b64decode(b, validate=False)
                from PIL import Image
                with Image.open(io.BytesIO(raw)) as im:
                    ext = (im.format or "png").lower().replace("jpeg", "jpg")
            except Exception:  # any undecodable image becomes "no image", counted
                self.failed += 1
                continue
            rel = f"images/{stem}_{n}.{ext}"
            (self.out / "images").mkdir(exist_ok=True)
            (self.out / rel).write_bytes(raw)
            paths.append(rel)
        return paths

    def images_for(self, sid: str, assets: list) -> list[str]:
        out = []
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", sid)
        for a in assets:
            if not isinstance(a, dict):
                continue
            if a.get("type") == "image_tsv" and self.dir is not None:
                rows, by_index = self._table(str(a.get("tsv_file", "")))
                j = a.get("index")
                if isinstance(j, int) and 0 <= j < len(rows):
                    out += self._decode(rows, by_index, j, stem)
                else:
                    self.failed += 1
            elif a.get("type") == "image":
                rel = safe_relative_path(str(a.get("uri", "")))
                if rel is not None and self.root.joinpath(*rel.parts).is_file():
                    out.append(_copy_image(self.root, str(rel), self.out))
                else:
                    self.failed += 1
        return out

    def by_workbook_id(self, dataset: str, wid: str, sid: str) -> list[str]:
        rows, by_index = self._table(f"{dataset}.tsv")
        j = by_index.get(str(wid))
        if j is None:
            return []
        return self._decode(rows, by_index, j, re.sub(r"[^A-Za-z0-9_.-]", "_", sid))


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
        stem = stem[len(model) + 1:]
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
    for name, spec in _model_prices(root).items():
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
            raise DataError(f"model '{m}' has no published price; add it to a models.json in {root} "
                            f"with price_in_per_mtok and price_out_per_mtok")
    tsv = _TsvImages(root, tmp, warn)
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
                    q = queries[sid] = {"id": sid, "question": text, "dataset": ds, "outcomes": {},
                                        "images": tsv.by_workbook_id(ds, wid, sid)}
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
    return {"layout": "B", "rows": len(records), "models": len(models), "excluded_rows": len(queries) - len(records),
            "non_binary_scores": nonbinary, "images_failed": tsv.failed, "cost_mode": "approx_text_tokens",
            "prompt_mode": "hint+question+options", "split_policy": "generated"}


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

