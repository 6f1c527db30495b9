"""`data merge` (a ragged pool from several sources) and the `task_lookup` baseline."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import BLINDTEST, DYNAMATH, rec, write_native
from lr_onnx.cli import main
from lr_onnx.export.data.format import load_dataset
from lr_onnx.export.data.merge import merge_datasets
from lr_onnx.runtime.errors import DataError


def _two_sources(tmp_path):
    a = write_native(
        tmp_path / "alpha",
        [rec(i, split="train" if i < 20 else "test") for i in range(30)],
        models=[{"name": "a", "price_in_per_mtok": 1.0}, {"name": "b"}],
    )
    b_rows = [rec(i, outcomes={"b": {"score": 1.0, "cost": 0.02}, "c": {"score": 0.0, "cost": 0.5}}) for i in range(25)]
    b = write_native(tmp_path / "beta", b_rows, models=[{"name": "b"}, {"name": "c", "price_in_per_mtok": 3.0}])
    return a, b


def test_merge_builds_a_ragged_pool_with_unique_ids_and_labels(tmp_path):
    a, b = _two_sources(tmp_path)
    s = merge_datasets(tmp_path / "m", [a, b])
    d = load_dataset(tmp_path / "m")
    assert d.model_names == ["a", "b", "c"] and d.n == 55 and s["per_source"]["beta"]["ids_prefixed"] == 25
    alpha = np.array([lab.startswith("alpha/") for lab in d.dataset])
    assert alpha.sum() == 30 and all(lab.startswith(("alpha/", "beta/")) for lab in d.dataset)
    assert d.A[alpha][:, 2].sum() == 0 and d.A[~alpha][:, 0].sum() == 0  # c never ran on alpha, a never on beta
    assert len(set(d.ids)) == 55 and "beta:q0" in d.ids
    # alpha's own split is kept; beta had none, so its generated split is written into its rows
    assert [s for i, s in zip(d.ids, d.split) if i == "q25"] == ["test"]
    assert all(s in ("train", "val", "test") for s in d.split)


def test_merge_refuses_conflicting_prices_and_an_existing_out(tmp_path):
    a, b = _two_sources(tmp_path)
    (b / "models.json").write_text(json.dumps([{"name": "a", "price_in_per_mtok": 9.0}, {"name": "b"}]))
    with pytest.raises(DataError, match="different prices"):
        merge_datasets(tmp_path / "m", [a, b])
    assert not (tmp_path / "m").exists()
    (b / "models.json").write_text(json.dumps([{"name": "b"}, {"name": "c"}]))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        merge_datasets(tmp_path / "x", [a, b])
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    (tmp_path / "here").mkdir()  # an empty current folder as OUT would be removed and replaced under the shell
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path / "here")
        with pytest.raises(DataError, match="is the current folder"):
            merge_datasets(".", [a, b])
    assert (tmp_path / "here").is_dir() and not any((tmp_path / "here").iterdir())


def test_cli_merge_one_line_errors(runner, tmp_path):
    a, b = _two_sources(tmp_path)
    res = runner.invoke(main, ["data", "merge", str(tmp_path / "m"), str(a)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "at least two" in res.output
    res = runner.invoke(main, ["data", "merge", str(tmp_path / "m"), str(a), str(b)])
    assert res.exit_code == 0 and "55 queries x 3 models" in res.output


def test_task_lookup_picks_the_best_training_model_per_label_and_falls_back(tmp_path):
    from lr_onnx.export.evaluate.baselines import task_lookup_scores

    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0]], float)
    data = SimpleNamespace(Y=Y, A=np.ones_like(Y, bool), k=2, dataset=["x", "x", "y", "y", "z", "x"])
    train = np.array([True, True, True, True, False, False])
    P = SimpleNamespace(data=data, masks={"train": train})
    s = task_lookup_scores(P, np.arange(6))
    assert s.argmax(axis=1).tolist() == [0, 0, 1, 1, 0, 0]  # z is unseen: the best single (a tie: a, index 0)


@pytest.mark.slow
@pytest.mark.shared_data("blindtest", "dynamath")
def test_merge_of_the_real_sets_has_15_models(tmp_path):
    merge_datasets(tmp_path / "real", [BLINDTEST, DYNAMATH])
    d = load_dataset(tmp_path / "real")
    assert d.k == 15 and d.n == 10240 + 5010 and d.A.sum() == 10240 * 4 + 5010 * 14
