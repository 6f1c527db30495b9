"""`lr-onnx data merge OUT SRC...`: one native dataset from several, with a ragged pool.

The merged pool is the union of the sources' models by name (first source's order, then new names
in order of appearance); a model that a source never ran is simply absent from that source's
`outcomes`, which `load_dataset` reads as "unavailable there". Ids and `dataset` labels stay unique
across sources: a label gets its source's name as prefix (`blindtest/CircledWord` is kept as it is),
an id that collides with an earlier source's gets `<source>:` in front. Images are linked (or copied)
into `OUT/images/<source>/`, so OUT stands alone. Each source's own split is kept; a source without
one gets its generated split written into its rows, so the merge never depends on row order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from ...runtime.errors import DataError
from .format import QUERIES_FILE, jsonl_objects, load_dataset, load_models, write_dataset
from ..files import staged_output
from .splits import make_splits

PRICE_KEYS = ("price_in_per_mtok", "price_out_per_mtok")


def merge_datasets(out: str | os.PathLike, sources: list[str | os.PathLike], *, progress: bool = True) -> dict:
    """Write the merged dataset to OUT (which must not exist); returns a summary."""
    srcs = [Path(s) for s in sources]
    if len(srcs) < 2:
        raise DataError("data merge needs at least two source datasets")
    names = [s.resolve().name for s in srcs]
    if len(set(names)) != len(names):
        raise DataError(
            f"two sources share the folder name '{_first_dup(names)}'; each source's name prefixes "
            f"its labels, so rename one"
        )
    out = Path(out)
    for s in srcs:
        if out.resolve() == s.resolve() or s.resolve() in out.resolve().parents:
            raise DataError(f"{out}: must not be a source folder or lie inside one (data folders are never written)")

    pool: list[dict] = []
    by_name: dict[str, dict] = {}
    for s in srcs:
        for m in load_models(s / "models.json"):
            seen = by_name.get(m["name"])
            if seen is None:
                by_name[m["name"]] = m
                pool.append(m)
            elif any(_differs(seen.get(k), m.get(k)) for k in PRICE_KEYS):
                raise DataError(
                    f"model '{m['name']}' has different prices in {s} and an earlier source; "
                    f"a merged pool needs one price per model"
                )

    records: list[dict] = []
    ids: set[str] = set()
    per_source = {}
    with staged_output(out) as tmp:
        for src, name in zip(srcs, names):
            data = load_dataset(src)  # validates everything once
            split = None if data.has_split else {i: s for i, (s, _) in make_splits(data)[0].items()}
            renamed = 0
            linked: dict[Path, str] = {}
            for _, where, rec in jsonl_objects(src / QUERIES_FILE):
                rid = rec["id"]
                if rid in ids:
                    rid, renamed = f"{name}:{rid}", renamed + 1
                    if rid in ids:
                        raise DataError(f"{where}: id '{rec['id']}' collides even with the '{name}:' prefix")
                ids.add(rid)
                label = rec["dataset"]
                label = label if label.split("/", 1)[0] == name else f"{name}/{label}"
                images = []
                for p in rec["images"]:
                    full = src / p
                    if not full.is_file():
                        continue  # counted as missing by load_dataset already
                    if full not in linked:
                        rel = Path("images") / name / p
                        _link_or_copy(full, tmp / rel)
                        linked[full] = rel.as_posix()
                    images.append(linked[full])
                new = {**rec, "id": rid, "dataset": label, "images": images}
                if split is not None:
                    new["split"] = split[rec["id"]]
                meta = dict(rec.get("meta") or {})
                meta["source"] = name
                new["meta"] = meta
                records.append(new)
            per_source[name] = {
                "queries": data.n,
                "models": data.model_names,
                "ids_prefixed": renamed,
                "split": "own" if split is None else "generated",
            }
        write_dataset(tmp, pool, records)
        (tmp / "merge.json").write_text(
            json.dumps(
                {"sources": [str(s) for s in srcs], "per_source": per_source, "models": [m["name"] for m in pool]},
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return {"queries": len(records), "models": len(pool), "per_source": per_source}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _differs(a, b) -> bool:
    if a is None or b is None:
        return False
    return not math.isclose(float(a), float(b), rel_tol=1e-9)


def _first_dup(names: list[str]) -> str:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return ""
