"""Train/val/test splits and the calibration part of train (method.md §3.2, §7).

Every method sees the same split because it is a pure function of the ids, their
`dataset` labels, the dataset's own `split` column and the seed: never of file row
order, machine or run. Nothing is written into a data folder; training records the
split it used in its run folder (`splits.csv` + `splits.meta.json`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from ...runtime.errors import DataError
from ...version import __version__
from .format import RoutingData
from ..files import atomic_write_text

SPLIT_SEED = 20260308
FRACTIONS = (0.70, 0.10, 0.20)
VAL_OF_TRAIN = 0.125  # f_val / (f_train + f_val)
CAL_FRACTION = 0.35
SPLITS_FILE = "splits.csv"
META_FILE = "splits.meta.json"


def partition_counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Rows per part for a group of size n: floor plus largest remainder, then min-one rules (§7)."""
    parts = len(fractions)
    exact = [f * n for f in fractions]
    counts = [math.floor(x + 1e-9) for x in exact]
    order = sorted(range(parts), key=lambda j: (-(exact[j] - counts[j]), j))  # ties: earlier part first
    for j in order[: n - sum(counts)]:
        counts[j] += 1
    if parts == 3 and n == 2:
        return [1, 0, 1]  # one train, one test
    if n >= parts:
        for j in range(parts):
            if counts[j] == 0:
                donor = max(range(parts), key=lambda t: (counts[t], -t))
                counts[donor] -= 1
                counts[j] += 1
    elif n >= 1 and parts != 3:
        counts = [n] + [0] * (parts - 1)
    return counts


def stratified_partition(ids: list[str], labels: list[str], fractions: tuple[float, ...], seed: int) -> dict[str, int]:
    """Map each id to a part index, stratified by label, with one rng shared across groups.

    Ids are sorted, groups visited in sorted label order, each group shuffled by the
    same `numpy.random.default_rng(seed)` (arrays copied first), then cut by
    `partition_counts`.
    """
    groups: dict[str, list[str]] = {}
    for i, lab in sorted(zip(ids, labels)):
        groups.setdefault(lab, []).append(i)
    rng = np.random.default_rng(seed)
    part_of: dict[str, int] = {}
    for lab in sorted(groups):
        arr = np.array(groups[lab], dtype=object).copy()
        rng.shuffle(arr)
        start = 0
        for j, cnt in enumerate(partition_counts(len(arr), fractions)):
            for i in arr[start : start + cnt]:
                part_of[str(i)] = j
            start += cnt
    return part_of


def make_splits(data: RoutingData, seed: int = SPLIT_SEED) -> tuple[dict[str, tuple[str, str]], str]:
    """Compute {id: (split, part)} and the policy name for a loaded dataset."""
    names = ("train", "val", "test")
    if data.has_split:
        split = dict(zip(data.ids, data.split))
        if "val" in split.values():
            policy = "official"
        else:
            policy = "official+carved_val"
            train_ids = [i for i in data.ids if split[i] == "train"]
            lab_of = dict(zip(data.ids, data.dataset))
            part = stratified_partition(
                train_ids, [lab_of[i] for i in train_ids], (1 - VAL_OF_TRAIN, VAL_OF_TRAIN), seed
            )
            for i, j in part.items():
                split[i] = "train" if j == 0 else "val"
    else:
        policy = "generated"
        part = stratified_partition(data.ids, data.dataset, FRACTIONS, seed)
        split = {i: names[j] for i, j in part.items()}

    lab_of = dict(zip(data.ids, data.dataset))
    train_ids = [i for i in data.ids if split[i] == "train"]
    cal = stratified_partition(train_ids, [lab_of[i] for i in train_ids], (1 - CAL_FRACTION, CAL_FRACTION), seed + 1)
    out = {i: (s, "") for i, s in split.items()}
    for i, j in cal.items():
        out[i] = ("train", "fit" if j == 0 else "cal")
    return out, policy


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def ensure_splits(
    data: RoutingData, seed: int = SPLIT_SEED, directory: Path | None = None
) -> dict[str, tuple[str, str]]:
    """Return the dataset's split; write it (`splits.csv` + meta) into `directory` when one is given.

    The split is a pure function of the ids, their labels, the dataset's own `split` column and the
    seed, so it is recomputed on every load and never written into the data folder (data folders may be
    read-only). A `splits.csv` the user put next to the data is honoured; if its ids do not match the
    data the split is refused rather than silently regenerated. Training writes the split it used into
    its run folder, for the record.
    """
    user_file = Path(data.root) / SPLITS_FILE
    if user_file.is_file():
        table, policy = read_splits(user_file, data.ids), f"from {user_file}"
    else:
        table, policy = make_splits(data, seed)
    if directory is not None:
        write_splits(Path(directory), data, table, policy, seed)
    return table


def write_splits(directory: Path, data: RoutingData, table: dict[str, tuple[str, str]], policy: str, seed: int) -> None:
    """`splits.csv` (id, split, part) and `splits.meta.json` into `directory`, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "split", "part"])
    for i in sorted(table):
        w.writerow([i, *table[i]])
    meta = {
        "seed": seed,
        "fractions": {"train": FRACTIONS[0], "val": FRACTIONS[1], "test": FRACTIONS[2]},
        "val_of_train_when_carved": VAL_OF_TRAIN,
        "cal_fraction_of_train": CAL_FRACTION,
        "cal_seed": seed + 1,
        "policy": policy,
        "ids_sha256": ids_digest(data.ids),
        "n": len(table),
        "lr_onnx_version": __version__,
        "counts": {s: sum(1 for v in table.values() if v[0] == s) for s in ("train", "val", "test")},
    }
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / SPLITS_FILE, buf.getvalue())
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")


def read_splits(path: Path, ids: list[str]) -> dict[str, tuple[str, str]]:
    """Read a split file and check it covers exactly the dataset's ids."""
    table: dict[str, tuple[str, str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"id", "split"} <= set(reader.fieldnames):
                raise DataError(f"{path}: expected a header 'id,split,part'")
            for lineno, row in enumerate(reader, start=2):
                if row["split"] not in ("train", "val", "test"):
                    raise DataError(f"{path}:{lineno}: split '{row['split']}' is not train, val or test")
                table[row["id"]] = (row["split"], row.get("part") or "")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 CSV file") from None
    if set(table) != set(ids):
        extra = len(set(table) - set(ids))
        lack = len(set(ids) - set(table))
        raise DataError(
            f"{path}: split file does not match the data ({lack} ids missing, {extra} unknown); "
            f"delete it to regenerate the split"
        )
    return table


def split_masks(data: RoutingData, table: dict[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """Boolean row masks: train, val, test, fit and cal."""
    s = np.array([table[i][0] for i in data.ids])
    p = np.array([table[i][1] for i in data.ids])
    return {"train": s == "train", "val": s == "val", "test": s == "test", "fit": p == "fit", "cal": p == "cal"}


def check_trainable(data: RoutingData, masks: dict[str, np.ndarray], where: str | Path) -> None:
    """Refuse, with one line, a split a router cannot be trained on: an empty fit, cal or val part, or a model with
    no outcome on the calibration rows (R_cal, a seeded CAL_FRACTION of train), where its profile and expected cost
    are fitted: a model with none would have neither. Only a model with a handful of training outcomes can miss
    R_cal (with n of them, the chance is 0.65^n)."""
    for name in ("fit", "cal", "val"):
        if not masks[name].any():
            raise DataError(f"{where}: the split has no '{name}' rows; the dataset is too small to train on")
    n_train, n_cal = data.A[masks["train"]].sum(axis=0), data.A[masks["cal"]].sum(axis=0)
    lacking = [f"{m} ({n} training outcomes)" for m, n, c in zip(data.model_names, n_train, n_cal) if c == 0]
    if lacking:
        raise DataError(
            f"{where}: no calibration query (R_cal, {CAL_FRACTION:.0%} of train) has an outcome for "
            f"{', '.join(lacking)}; its profile and cost are fitted there: give it more training outcomes, or leave "
            "it out of models.json and add it to the bundle later (lr-onnx models add)"
        )
