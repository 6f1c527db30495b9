"""Splits (method.md §7): deterministic, order-independent, stratified, reused from disk, calibration disjoint."""

from __future__ import annotations

import json
import random

import pytest

from conftest import DCROUTER, rec, write_native
from lr_onnx.export.data.format import load_dataset
from lr_onnx.export.data.splits import META_FILE, SPLITS_FILE, ensure_splits, make_splits, partition_counts, split_masks
from lr_onnx.runtime.errors import DataError


@pytest.mark.parametrize(
    "n,expected",
    [
        (1, [1, 0, 0]),
        (2, [1, 0, 1]),
        (3, [1, 1, 1]),
        (4, [2, 1, 1]),
        (10, [7, 1, 2]),
        (11, [8, 1, 2]),
        (100, [70, 10, 20]),
    ],
)
def test_partition_counts_follow_largest_remainder_and_min_one(n, expected):
    assert partition_counts(n, (0.7, 0.1, 0.2)) == expected
    assert sum(partition_counts(n, (0.7, 0.1, 0.2))) == n


def _dataset(tmp_path, order_seed=None, name="d"):
    rows = [rec(i, dataset=f"ds{i % 3}") for i in range(60)]
    if order_seed is not None:
        random.Random(order_seed).shuffle(rows)
    return load_dataset(write_native(tmp_path / name, rows))


def test_generated_split_is_stratified_and_independent_of_row_order(tmp_path):
    a, policy = make_splits(_dataset(tmp_path, name="a"))
    b, _ = make_splits(_dataset(tmp_path, order_seed=3, name="b"))
    assert a == b and policy == "generated"
    for ds in ("ds0", "ds1", "ds2"):
        ids = [f"q{i}" for i in range(60) if f"ds{i % 3}" == ds]
        counts = [sum(a[i][0] == s for i in ids) for s in ("train", "val", "test")]
        assert counts == [14, 2, 4]


def test_calibration_part_is_disjoint_and_35_percent_of_train(tmp_path):
    table, _ = make_splits(_dataset(tmp_path))
    fit = {i for i, (s, p) in table.items() if p == "fit"}
    cal = {i for i, (s, p) in table.items() if p == "cal"}
    train = {i for i, (s, p) in table.items() if s == "train"}
    assert fit.isdisjoint(cal) and fit | cal == train
    assert len(cal) == pytest.approx(0.35 * len(train), abs=3)
    assert all(p == "" for s, p in table.values() if s != "train")


def test_split_is_never_written_into_the_data_folder_but_into_the_given_one(tmp_path):
    d = _dataset(tmp_path)
    first = ensure_splits(d)
    assert not (d.root / SPLITS_FILE).exists() and not (d.root / META_FILE).exists()
    run = tmp_path / "run"
    assert ensure_splits(d, directory=run) == first
    text = (run / SPLITS_FILE).read_text()
    assert text.splitlines()[0] == "id,split,part"
    meta = json.loads((run / META_FILE).read_text())
    assert meta["policy"] == "generated" and meta["seed"] == 20260308 and len(meta["ids_sha256"]) == 64


def test_a_users_split_file_next_to_the_data_is_honoured(tmp_path):
    d = _dataset(tmp_path)
    first = ensure_splits(d, directory=d.root)
    text = (d.root / SPLITS_FILE).read_text()
    (d.root / SPLITS_FILE).write_text(text.replace("q0,test", "q0,val").replace("q0,train", "q0,val"))
    again = ensure_splits(d)
    assert again["q0"][0] == "val" and len(again) == len(first)


def test_split_file_with_other_ids_is_refused(tmp_path):
    d = _dataset(tmp_path)
    ensure_splits(d, directory=d.root)
    p = d.root / SPLITS_FILE
    p.write_text(p.read_text().replace("q1,", "zz,"))
    with pytest.raises(DataError, match="split file does not match the data"):
        ensure_splits(d)


@pytest.mark.shared_data("dcrouter")
def test_official_split_with_carved_validation_on_dcrouter():
    d = load_dataset(DCROUTER)
    table, policy = make_splits(d)
    masks = split_masks(d, table)
    assert policy == "official+carved_val"
    assert masks["test"].sum() == 500 and masks["val"].sum() + masks["train"].sum() == 5608
    assert masks["val"].sum() == pytest.approx(0.125 * 5608, abs=14)
    assert all(table[i][0] == "test" for i, s in zip(d.ids, d.split) if s == "test")


def test_dataset_labels_only_stratify(tmp_path):
    """Relabelling datasets changes nothing but the grouping: same seed, same sizes."""
    t1, _ = make_splits(_dataset(tmp_path, name="x"))
    t2, _ = make_splits(_dataset(tmp_path, name="y"))
    assert t1 == t2


def test_a_model_with_no_outcome_on_the_calibration_rows_is_refused_by_name(tmp_path):
    """Its profile and expected cost are fitted on R_cal: with no outcome there, training would ship NaN costs."""
    from lr_onnx.export.data.splits import check_trainable

    data = _dataset(tmp_path)
    table, _ = make_splits(data)
    check_trainable(data, split_masks(data, table), "d")  # every model is on R_cal: accepted
    rows = [rec(i, dataset=f"ds{i % 3}") for i in range(60)]
    for r in rows:
        if table[r["id"]][1] == "cal":
            del r["outcomes"]["b"]
    thin = load_dataset(write_native(tmp_path / "thin", rows))
    with pytest.raises(DataError, match=r"no calibration query .* for b \(\d+ training outcomes\)"):
        check_trainable(thin, split_masks(thin, ensure_splits(thin)), "thin")
