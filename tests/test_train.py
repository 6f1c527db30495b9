"""Training on a small real-image demo set: runs, writes a complete run folder, and is deterministic."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from lr_onnx.export.demo import build_demo

    root = tmp_path_factory.mktemp("demo") / "d"
    build_demo(root, n=400, seed=1, workers=1, progress=False)
    return root


@pytest.mark.slow
def test_train_writes_run_and_is_deterministic(small_demo, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from lr_onnx.export.train import TrainConfig, train

    monkeypatch.setenv("LR_ONNX_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(epochs=2, slices=2)
    a = train(small_demo, tmp_path / "a", cfg, progress=False)
    b = train(small_demo, tmp_path / "b", cfg, progress=False)
    for name in ("weights.safetensors", "config.json", "profiles.json", "curves.json", "preprocessing.json"):
        assert (tmp_path / "a" / name).is_file()
    wa, wb = load_file(str(tmp_path / "a" / "weights.safetensors")), load_file(str(tmp_path / "b" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert a["best_val_utility"] == b["best_val_utility"]
    prof = json.loads((tmp_path / "a" / "profiles.json").read_text())
    assert len(prof["raw_profiles"]) == 10 and len(prof["raw_profiles"][0]) == prof_width(prof)
    assert (small_demo / "splits.csv").is_file()  # the split is written once next to the data


def prof_width(prof):
    return len(prof["space"]["centroids"]) + 7
