"""Training, evaluation and pool edits on a small real-image demo set (slow: the encoders run once)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.shared_data("mllm-skills")]  # the demo reads the skills table


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from lr_onnx.export.data.demo import build_demo

    base = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LR_ONNX_CACHE", str(base / "cache"))
        build_demo(base / "demo", n=400, seed=1, workers=1, progress=False)
        _make_read_only(base / "demo")  # data folders may be read-only: every test below trains on this one
        yield base


def _make_read_only(root):
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)


def _snapshot(root):
    """Every path under root with its size and mtime: root ignores write bits, so compare instead."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def run(env):
    from lr_onnx.export.train.trainer import TrainConfig, train

    summary = train(env / "demo", env / "run", TrainConfig(epochs=2, slices=2), progress=False)
    return env / "run", summary


def test_train_writes_run_and_is_deterministic(env, run):
    from safetensors.numpy import load_file

    from lr_onnx.export.train.trainer import TrainConfig, train

    run_dir, a = run
    before = _snapshot(env / "demo")
    b = train(env / "demo", env / "run_b", TrainConfig(epochs=2, slices=2), progress=False)
    for name in ("weights.safetensors", "config.json", "profiles.json", "curves.json", "preprocessing.json"):
        assert (run_dir / name).is_file()
    wa, wb = load_file(str(run_dir / "weights.safetensors")), load_file(str(env / "run_b" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert a["best_val_utility"] == b["best_val_utility"]
    prof = json.loads((run_dir / "profiles.json").read_text())
    assert len(prof["raw_profiles"]) == 10 and len(prof["raw_profiles"][0]) == len(prof["space"]["centroids"]) + 7
    assert _snapshot(env / "demo") == before  # nothing is written into the (read-only) data folder
    assert not (env / "demo" / "splits.csv").exists()
    assert (run_dir / "splits.csv").read_text() == (env / "run_b" / "splits.csv").read_text()


def test_predictions_ignore_realised_test_costs_and_dataset_labels(env, run):
    """Leak checks of method.md §5: realised cost and `dataset` never reach the router's inputs."""
    from lr_onnx.export.train.trainer import attach_run_memory, load_router, predict, load_training_set

    net, cfg = load_router(run[0])
    P = attach_run_memory(load_training_set(env / "demo", slices=2, progress=False), cfg)
    rows = np.flatnonzero(P.masks["test"])
    base = predict(net, P, rows)[0]
    test_rows = P.masks["test"]
    perm = np.random.default_rng(0).permutation(np.flatnonzero(test_rows))
    P.data.C[test_rows] = P.data.C[perm]
    P.data.dataset = ["relabelled"] * P.data.n
    np.testing.assert_array_equal(predict(net, P, rows)[0], base)


def test_the_memory_is_chosen_on_validation_and_read_leave_one_out(env, run):
    """Issue 21: the run records its memory settings and blend; training rows are estimated without themselves;
    the memory-only and network-only halves are both scored; a --no-memory run has none."""
    from lr_onnx.export.train.memory import memory_rows
    from lr_onnx.export.train.trainer import TrainConfig, attach_run_memory, load_router, load_training_set, train

    net, cfg = load_router(run[0])
    mem = cfg["memory"]
    assert mem["blend"]["chosen"] in [t["blend"] for t in mem["blend"]["trials"]] and net.cfg.memory == 3
    sel = json.loads((run[0] / "memory_selection.json").read_text())
    tests = [t for t in sel if "aligned_against_pca" in t]  # the one paired test of the stretched space
    assert len(tests) == 1 and len(sel) > 10 and all("val_score_at_lambda0" in t for t in sel if t not in tests)
    P = attach_run_memory(load_training_set(env / "demo", slices=2, progress=False), cfg)
    rows = memory_rows(P)
    assert len(P.memory) == mem["rows"] <= len(rows)
    r = P.memory.rows[:16]
    with_self = P.memory.columns(P.q[r], blas=True)
    np.testing.assert_allclose(P.mem_cols[r], P.memory.columns(P.q[r], exclude=np.arange(16), blas=True), atol=1e-6)
    assert not np.allclose(P.mem_cols[r], with_self)  # the row itself would have been its nearest neighbour
    plain = train(env / "demo", env / "run_plain", TrainConfig(epochs=1, slices=2, memory=False), progress=False)
    assert plain["epochs_run"] == 1
    pcfg = json.loads((env / "run_plain" / "config.json").read_text())
    assert pcfg["memory"] is None and pcfg["router"]["memory"] == 0


def test_floored_std_lifts_only_the_small_stds_of_each_block():
    from lr_onnx.export.train.trainer import floored_std

    rng = np.random.default_rng(0)
    std = np.concatenate([rng.uniform(0.01, 0.05, 384), rng.uniform(5e-4, 0.1, 1280), [0.2, 0.3, 0.25]])
    out = floored_std(std, 0.5)
    for block in (slice(0, 384), slice(384, 1664)):
        med = np.median(std[block])
        np.testing.assert_allclose(out[block], np.maximum(std[block], med), rtol=1e-6)
        assert (out[block] >= med * (1 - 1e-6)).all()
    np.testing.assert_allclose(out[1664:], std[1664:], rtol=1e-6)  # side features untouched
    np.testing.assert_allclose(floored_std(std, 0.0), std, rtol=1e-6)  # 0 = the method's s_q


def test_few_shot_profiles_are_thin_bootstraps_of_the_calibration_rows(env):
    """§3.4: 8 bootstrap profiles per model from R_cal subsets of 25, 50 or 100 rows, seeded."""
    from lr_onnx.export.train.slices import FEW_SHOT_DRAWS, few_shot_profiles
    from lr_onnx.export.train.trainer import load_training_set

    P = load_training_set(env / "demo", slices=2, progress=False)
    boot = few_shot_profiles(P, seed=7)
    full = P.model_feat()
    assert boot.shape == (P.data.k, FEW_SHOT_DRAWS, full.shape[1])
    np.testing.assert_array_equal(boot, few_shot_profiles(P, seed=7))  # seeded
    assert not np.array_equal(boot, few_shot_profiles(P, seed=8))
    np.testing.assert_array_equal(boot[..., -1], np.broadcast_to(full[:, None, -1], boot.shape[:2]))  # cost kept
    n_cal = P.data.A[P.masks["cal"]].sum(axis=0)
    evidence = np.expm1(boot[..., -2] * P.space.std[-1] + P.space.mean[-1])  # log1p(n) column, unstandardised
    allowed = [{min(s, n) for s in (25, 50, 100)} for n in n_cal]
    assert all(round(float(e)) in allowed[k] for k in range(P.data.k) for e in evidence[k])
    assert not np.allclose(boot[:, :, 1:-2], full[:, None, 1:-2])  # thin profiles differ


def test_cli_train_ablation_flags_reach_the_run_config(env, runner):
    from lr_onnx.cli import main

    out = env / "run_cli"
    res = runner.invoke(
        main,
        ["train", str(env / "demo"), "--out", str(out), "--epochs", "1", "--no-few-shot", "--no-pool-dropout"]
        + ["--one-memory-setting", "--pca-space"],
    )
    assert res.exit_code == 0, res.output
    assert (
        "for the network alone, " in res.output and " as it routes: " in res.output and " with images, " in res.output
    )
    cfg_summary = json.loads((out / "config.json").read_text())["summary"]
    assert cfg_summary["blend"] in (0.0, 0.25, 0.5, 0.75, 1.0) and 0 <= cfg_summary["val_utility_routed"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["few_shot"] == 0.0 and cfg["train"]["pool_dropout"] == 0.0 and cfg["train"]["epochs"] == 1
    assert cfg["train"]["memory_per_source"] is False and "per_source" not in cfg["memory"]
    assert cfg["train"]["memory_align"] is False and cfg["memory"]["align"] == 0.0
    # the demo has images: validation chose between the router with them and its text-only twin, which is kept
    assert cfg["modality"]["chosen"] in ("images", "text") and set(cfg["modality"]["val_utility"]) == {"images", "text"}
    other = "text_only" if cfg["modality"]["chosen"] == "images" else "with_images"
    assert (out / "ablations" / other / "weights.safetensors").is_file()
    # a second run into the same folder is refused before it starts: the first is neither overwritten nor mixed
    before = _snapshot(out)
    again = runner.invoke(main, ["train", str(env / "demo"), "--out", str(out), "--epochs", "1"])
    assert again.exit_code == 1 and "already exists" in again.output and _snapshot(out) == before
    assert not [p for p in env.iterdir() if p.name.startswith(".run_cli.tmp-")]


def test_evaluate_writes_metrics_plot_and_report(env, run):
    from lr_onnx.export.evaluate.report import ABLATIONS, METHODS, evaluate

    out = evaluate(run[0], ablations=False, progress=False)
    m = json.loads((run[0] / "metrics.json").read_text())
    assert set(m["methods"]) == set(METHODS) - {name for name, _ in ABLATIONS}
    for row in m["methods"].values():
        for key in (
            "nauc",
            "peak_score",
            "qnc",
            "rank_score",
            "apgr",
            "cpt50",
            "cpt80",
            "score_at_lambda0",
            "cost_at_lambda0",
        ):
            assert key in row
    assert set(m["best_single"]) == {"name", "score", "cost"} and m["oracle"]["score"] >= m["best_single"]["score"]
    assert (
        "full" in m["pool_shift"]
        and "drop_strongest" in m["pool_shift"]
        and m["collapse"]["share_at_lambda0"] is not None
    )
    u = m["uncertainty"]  # §8.8 uncertainty quality on the binary test entries
    assert u["entries"] == sum(u["bin_counts"]) > 0 and 0 <= u["ece"] <= 1 and 0 <= u["coverage_1.96sigma"] <= 1
    assert "Uncertainty (" in (run[0] / "report.md").read_text()
    from lr_onnx.cli.training import _qnc

    assert _qnc("inf").startswith("inf (never matches") and "at 45% of its cost" in _qnc(0.45) and _qnc(None) == "n/a"
    assert "(in hindsight)" in (run[0] / "report.md").read_text()  # which best single the headline names
    presets = m["methods"]["latentrouter"]["presets"]
    assert (
        presets["quality"]["lambda"] == 0.0
        and presets["balanced"]["lambda"] == m["methods"]["latentrouter"]["lambda_val"]
    )
    from lr_onnx.export.evaluate import routing_metrics as M
    from lr_onnx.export.data.format import load_dataset
    from lr_onnx.export.data.splits import ensure_splits, split_masks

    d = load_dataset(env / "demo")
    v = split_masks(d, ensure_splits(d))["val"]
    Yv, Cv, Av = np.nan_to_num(d.Y[v]), np.nan_to_num(d.C[v]), d.A[v]
    val_single = M.single_models(Yv, Cv, Av)[M.best_single(Yv, Cv, Av)]["cost"]
    assert any(name.startswith("budget_") for name in presets)
    for name, p in presets.items():
        if name.startswith("budget_"):  # chosen on validation within the budget
            assert p["val_cost"] <= p["max_cost_fraction_of_best_single"] * val_single * (1 + 1e-5)
    assert (run[0] / "frontier.png").stat().st_size > 10_000
    assert "| latentrouter |" in (run[0] / "report.md").read_text()
    assert out["rows"] == m["rows"] > 0


def _derived(env, name: str, keep: list[str], drop_on_test: str | None = None):
    """A copy of the demo whose pool is `keep` (its images linked); `drop_on_test` loses its test outcomes."""
    from lr_onnx.export.data.format import load_dataset
    from lr_onnx.export.data.splits import make_splits

    root = env / name
    root.mkdir()
    (root / "images").symlink_to(env / "demo" / "images")
    models = [m for m in json.loads((env / "demo" / "models.json").read_text()) if m["name"] in keep]
    (root / "models.json").write_text(json.dumps(models))
    recs = [json.loads(ln) for ln in (env / "demo" / "queries.jsonl").read_text().splitlines() if ln.strip()]
    for r in recs:
        r["outcomes"] = {m: o for m, o in r["outcomes"].items() if m in keep}
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if drop_on_test:
        table, _ = make_splits(load_dataset(root))
        for r in recs:
            if table[r["id"]][0] == "test":
                r["outcomes"].pop(drop_on_test)
        (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_evaluate_takes_a_pool_of_one_and_a_model_with_no_test_outcome(env):
    """A pool of one has nothing to drop (pool shift keeps `full` only, the cost axis is undefined: nan, not a
    ZeroDivisionError); a model with no test outcome is left off the frontier plot (it crashed matplotlib)."""
    from lr_onnx.export.evaluate.report import evaluate
    from lr_onnx.export.train.trainer import TrainConfig, train

    names = [m["name"] for m in json.loads((env / "demo" / "models.json").read_text())]
    one = _derived(env, "one_model", names[:1])
    train(one, env / "run_one", TrainConfig(epochs=1, slices=2), progress=False)
    evaluate(env / "run_one", ablations=False, progress=False)
    m = json.loads((env / "run_one" / "metrics.json").read_text())
    assert set(m["pool_shift"]) == {
        "full",
        "drop_30pct_mean_gain_over_best_single",
        "drop_50pct_mean_gain_over_best_single",
    }
    assert m["methods"]["latentrouter"]["cpt50"] is None and (env / "run_one" / "frontier.png").stat().st_size > 0

    ragged = _derived(env, "no_test_outcome", names[:3], drop_on_test=names[1])
    train(ragged, env / "run_ragged", TrainConfig(epochs=1, slices=2), progress=False)
    evaluate(env / "run_ragged", ablations=False, progress=False)
    m = json.loads((env / "run_ragged" / "metrics.json").read_text())
    assert m["single_models"][names[1]]["score"] is None and m["single_models"][names[0]]["score"] is not None
    assert (env / "run_ragged" / "frontier.png").stat().st_size > 0


def test_spread_over_slices_takes_n_queries_spread_over_the_slices():
    """ceil(n/S) per slice; a thin slice gives what it has; more slices than n: n rows from n different slices."""
    from lr_onnx.export.train.pool import spread_over_slices

    slices = np.repeat(np.arange(8), 10)
    slices[slices == 7] = 6  # slice 7 empty, slice 6 has 20 rows
    rows = np.arange(1000, 1080)
    got = spread_over_slices(rows, slices, 8, 48, seed=1)
    per = np.bincount([s for _, s in got], minlength=8)
    assert per.tolist() == [6, 6, 6, 6, 6, 6, 6, 0] and all(slices[r - 1000] == s for r, s in got)
    assert got == spread_over_slices(rows, slices, 8, 48, seed=1)  # seeded
    many = np.arange(58).repeat(3)
    got = spread_over_slices(np.arange(len(many)), many, 58, 24, seed=2)
    assert len(got) == 24 and len({s for _, s in got}) == 24


def test_text_only_runs_use_their_own_features_for_slices(env, run, tmp_path):
    """A --text-only ablation's slices were fit on features without the image: propose must assign with those."""
    import shutil

    from lr_onnx.export.data.format import load_dataset
    from lr_onnx.export.train.pool import propose_queries
    from lr_onnx.export.train.trainer import run_features
    from lr_onnx.runtime.profiles import assign_slices

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"]["text_only"] = True
    (run_dir / "config.json").write_text(json.dumps(cfg))
    data = load_dataset(env / "demo")
    full, text = run_features(data, False, progress=False), run_features(data, True, progress=False)
    assert (text[:, 384:-1] == 0).all() and np.array_equal(text[:, :384], full[:, :384])
    # two slices: "the image looks like the average image" and "the text looks like the average text"
    prof = json.loads((run_dir / "profiles.json").read_text())
    c = np.zeros((2, full.shape[1] - 3))
    c[0, 384:] = full[:, 384:-3].mean(axis=0)
    c[1, :384] = full[:, :384].mean(axis=0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    prof["space"]["centroids"] = c.tolist()
    (run_dir / "profiles.json").write_text(json.dumps(prof))
    assert (assign_slices(full, c) == 0).any()  # with the image, some queries are slice 0 ...
    rep = propose_queries(run_dir, tmp_path / "cal", n=24, progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / "cal" / "queries.jsonl").read_text().splitlines()]
    assert rep["per_slice"][0] == 0 and {r["slice"] for r in recs} == {1}  # ... never for the text-only run


def test_validation_chooses_whether_the_router_reads_images_and_keeps_the_other(env, run, tmp_path):
    """export.train.modality: the text-only twin is trained once and wins only by the paired test on validation; a
    text-only win swaps the run with its twin, keeping the router with images as an ablation."""
    import shutil

    from lr_onnx.export.train import modality
    from lr_onnx.export.train.modality import RUN_FILES, choose_modality

    first = tmp_path / "first"
    shutil.copytree(run[0], first, ignore=shutil.ignore_patterns("ablations", "metrics.json"))
    rec = choose_modality(env / "demo", first, progress=False)
    assert rec["chosen"] == ("text" if rec["z"] > rec["z_needed"] else "images") and rec["z_needed"] > 1.6
    assert set(rec["val_utility"]) == {"images", "text"} and rec["val_rows"] > 0
    twin = (first / "ablations/text_only") if rec["chosen"] == "images" else (first / "ablations/with_images")
    assert (twin / "weights.safetensors").is_file()
    assert choose_modality(env / "demo", first, progress=False) == rec  # made once

    # a run whose own validation utility is worse than its twin's is swapped with it
    text_router = first / "ablations/text_only" if rec["chosen"] == "images" else first
    lose = tmp_path / "lose"
    shutil.copytree(run[0], lose, ignore=shutil.ignore_patterns("ablations"))
    (lose / "ablations/no_memory").mkdir(parents=True)  # an ablation trained with images: stale after the swap
    (lose / "metrics.json").write_text("{}")
    (lose / "ablations/text_only").mkdir()
    for name in RUN_FILES:
        if (text_router / name).is_file():
            shutil.copy(text_router / name, lose / "ablations/text_only" / name)
    own = (run[0] / "weights.safetensors").read_bytes()
    with pytest.MonkeyPatch.context() as mp:  # validation as if the text-only twin routed far better
        mp.setattr(modality, "paired_validation", lambda *a: {"val_utility": {}, "val_rows": 1, "z": 9.0})
        assert choose_modality(env / "demo", lose, progress=False)["chosen"] == "text"
    after = json.loads((lose / "config.json").read_text())
    assert after["train"]["text_only"] and after["modality"]["chosen"] == "text"
    assert (lose / "weights.safetensors").read_bytes() == (text_router / "weights.safetensors").read_bytes()
    assert (lose / "ablations/with_images/weights.safetensors").read_bytes() == own
    assert not (lose / "ablations/text_only").exists() and not (lose / "ablations/no_memory").exists()
    assert not (lose / "metrics.json").exists()


def test_models_propose_then_add_round_trip(env, run, tmp_path, runner):
    """§3.5: ceil(n/S) calibration queries per slice from R_cal, seeded, as a folder `models add` reads back."""
    import shutil

    from lr_onnx.cli import main
    from lr_onnx.export.data.format import load_dataset
    from lr_onnx.export.train.pool import propose_queries
    from lr_onnx.export.data.splits import ensure_splits

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    rep = propose_queries(run_dir, tmp_path / "cal", n=24, progress=False)
    S = len(json.loads((run_dir / "profiles.json").read_text())["space"]["centroids"])
    assert rep["slices"] == S and rep["target_per_slice"] == -(-24 // S)
    assert rep["queries"] == sum(rep["per_slice"]) <= 24 and all(c <= rep["target_per_slice"] for c in rep["per_slice"])
    recs = [json.loads(ln) for ln in (tmp_path / "cal" / "queries.jsonl").read_text().splitlines()]
    table = ensure_splits(load_dataset(env / "demo"))
    assert len(recs) == rep["queries"] and all(table[r["id"]] == ("train", "cal") for r in recs)  # R_cal only
    assert [sum(r["slice"] == s for r in recs) for s in range(S)] == rep["per_slice"]
    for r in recs:
        assert all((tmp_path / "cal" / p).is_file() and not p.startswith("/") for p in r["images"])
    propose_queries(run_dir, tmp_path / "again", n=24, progress=False)
    assert (tmp_path / "again" / "queries.jsonl").read_text() == (tmp_path / "cal" / "queries.jsonl").read_text()
    for r in recs:  # the new model answers them
        r["outcomes"] = {"NewVLM": {"score": float(len(r["question"]) % 2), "cost": 0.002}}
    (tmp_path / "cal" / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = runner.invoke(main, ["models", "add", str(run_dir), "--name", "NewVLM", "--outcomes", str(tmp_path / "cal")])
    assert res.exit_code == 0, res.output
    assert f"added NewVLM: {len(recs)} labelled queries" in res.output
    lp = json.loads((run_dir / "profiles.json").read_text())["models"][-1]["added_with"]["local_prior"]
    assert f"its estimate's prior: {lp['intercept']:.3f} + {lp['slope']:.3f} x" in res.output  # as recorded
    res = runner.invoke(main, ["models", "propose", str(run_dir), "--out", str(tmp_path / "cal")])
    assert res.exit_code == 1 and "already exists" in res.output  # nothing overwritten
    assert (
        runner.invoke(main, ["models", "propose", str(run_dir), "--out", str(tmp_path / "x"), "--n", "5"]).exit_code
        == 2
    )


def test_models_add_and_remove_without_retraining(env, run, tmp_path):
    import shutil

    from lr_onnx.export.train.pool import add_model, remove_model
    from lr_onnx.runtime.errors import DataError

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    weights = (run_dir / "weights.safetensors").read_bytes()
    rows = [json.loads(ln) for ln in (env / "demo" / "queries.jsonl").read_text().splitlines()][:30]
    for r in rows:
        r["outcomes"] = {"NewVLM": {"score": float(len(r["question"]) % 2), "cost": 0.001, "tokens": 50}}
    (env / "demo" / "new_model.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rep = add_model(run_dir, "NewVLM", env / "demo" / "new_model.jsonl", price_in=0.5, price_out=1.0, progress=False)
    prof = json.loads((run_dir / "profiles.json").read_text())
    assert prof["models"][-1]["name"] == "NewVLM" and len(prof["raw_profiles"]) == 11
    assert all(len(prof[k]) == 11 for k in ("models", "raw_profiles", "e_bar", "cost_model"))  # export zips them
    assert rep["queries"] == 30 and 0 <= rep["predicted_score"] <= 1 and sum(rep["slice_counts"]) == 30
    assert (run_dir / "weights.safetensors").read_bytes() == weights  # no retraining
    from lr_onnx.export.train.pool import run_memory

    added = prof["models"][-1]["memory"]  # its labelled queries join the run's memory
    assert len(added["keys"]) == 30 and len(added["keys"][0]) == 128 and len(added["outcomes"]) == 30
    mem = run_memory(run_dir)
    assert "NewVLM" in mem.models and int(np.isfinite(mem.outcomes[:, -1]).sum()) == 30
    from lr_onnx.export.bundle.assemble import export_bundle, pool_entries
    from lr_onnx.runtime.added_models import LocalPrior
    from lr_onnx.runtime.profiles import ProfileSpace

    lp = LocalPrior.parse(prof["models"][-1]["added_with"]["local_prior"], "run")  # fitted, as runtime's add fits it
    assert set(lp.over) == {m["name"] for m in prof["models"][:-1]}
    entry = pool_entries(prof, ProfileSpace.from_dict(prof["space"]))[-1]  # export keeps it: the Router answers apart
    assert entry.name == "NewVLM" and entry.extra["added_with"] == prof["models"][-1]["added_with"]
    with pytest.raises(DataError, match="joined after training"):  # fused.onnx cannot answer for it apart
        export_bundle(run_dir, tmp_path / "fused", fused=True, progress=False)
    assert not (tmp_path / "fused").exists()
    with pytest.raises(DataError, match="already in the pool"):
        add_model(run_dir, "NewVLM", env / "demo" / "new_model.jsonl", progress=False)
    remove_model(run_dir, "NewVLM")
    prof = json.loads((run_dir / "profiles.json").read_text())
    assert all(len(prof[k]) == 10 for k in ("models", "raw_profiles", "e_bar", "cost_model"))
    with pytest.raises(DataError, match="not in the pool"):
        remove_model(run_dir, "NewVLM")


def test_transfer_evaluation_on_another_pool(env, run, runner, tmp_path):
    """evaluate RUN --data OTHER: the run as trained, on the models both pools share; < 2 shared is refused."""
    import json as _json

    from conftest import write_native
    from lr_onnx.cli import main
    from lr_onnx.export.data.format import load_dataset

    demo = load_dataset(env / "demo")
    keep = demo.model_names[:3]
    recs = []
    for i in range(40):
        outs = {
            (m if j < 2 else "SomeOtherModel"): {"score": float((i + j) % 2), "cost": 1e-4 * (j + 1)}
            for j, m in enumerate(keep)
        }
        recs.append(
            {
                "id": f"t{i}",
                "question": demo.question[i],
                "images": [],
                "dataset": "other",
                "split": "test",
                "outcomes": outs,
            }
        )
    other = write_native(tmp_path / "other", recs, [{"name": keep[0]}, {"name": keep[1]}, {"name": "SomeOtherModel"}])
    res = runner.invoke(main, ["evaluate", str(run[0]), "--data", str(other)])
    assert res.exit_code == 0, res.output
    t = _json.loads((run[0] / "transfer_other.json").read_text())
    assert t["shared_models"] == keep[:2] and t["rows"] == 40 and t["not_shared"]["data_only"] == ["SomeOtherModel"]
    assert 0.0 <= t["latentrouter"]["score_at_lambda0"] <= t["oracle"]["score"] <= 1.0
    assert sum(t["latentrouter"]["choices_at_lambda0"].values()) == 40
    lone = write_native(
        tmp_path / "lone", [{**r, "outcomes": {keep[0]: r["outcomes"][keep[0]]}} for r in recs], [{"name": keep[0]}]
    )
    res = runner.invoke(main, ["evaluate", str(run[0]), "--data", str(lone)])
    assert res.exit_code == 1 and "transfer evaluation needs at least two" in res.output


@pytest.fixture(scope="module")
def bundle(env, run):
    from lr_onnx.export.bundle.assemble import export_bundle

    parity = export_bundle(run[0], env / "bundle", precision="fp32", parity_queries=48, fused=True)
    return env / "bundle", parity


def test_export_parity_meets_the_bars(bundle):
    path, parity = bundle
    assert parity["passed"] is True
    on_disk = json.loads((path / "parity.json").read_text())
    assert on_disk == {k: v for k, v in parity.items() if k != "export_seconds"}  # no timings: rebuilds byte-identical
    manifest = json.loads((path / "manifest.json").read_text())
    assert "parity.json" in manifest["files"]  # a closed bundle lists it
    cov = manifest["coverage"]  # the out-of-coverage threshold: 1st percentile of the training queries' similarity
    assert cov["percentile"] == 1.0 and -1 <= cov["threshold"] <= cov["train_similarity"]["p5"] <= 1
    assert {(s["B"], s["K"]) for s in parity["router_shapes"]} >= {(1, 1), (64, 16), (7, 33)}
    assert all(
        s["max_abs_diff"] <= 1e-4 and s["finite"] and s["masked_row_sentinels_ok"] for s in parity["router_shapes"]
    )
    assert parity["reference_evaluator_max_abs_diff"] <= 1e-4
    assert max(parity["held_out"]["max_abs_diff"].values()) <= 1e-4
    assert parity["held_out"]["decision_agreement_min_over_grid"] == 1.0
    assert parity["held_out"]["changed_decision_regret_lambda0"] == {"mean": 0.0, "max": 0.0}  # nothing changed
    assert 0.0 <= parity["held_out"]["near_tie_share_lambda0"] <= 1.0
    assert parity["fused"]["max_abs_diff_vs_separate_graphs"] <= 1e-4  # the end-to-end graph agrees


def test_exported_graphs_hold_no_local_paths(bundle):
    """Rebuilds from another folder are byte-identical, and a shipped bundle does not leak the builder's paths."""
    from pathlib import Path

    import lr_onnx

    repo = str(Path(lr_onnx.__file__).resolve().parent).encode()
    for graph in bundle[0].glob("*.onnx"):
        assert repo not in graph.read_bytes(), graph.name


def test_manifest_schema(bundle):
    from lr_onnx.runtime.bundle import load_bundle

    b = load_bundle(bundle[0])
    m = b.manifest.to_dict()
    assert m["schema_version"] == 1 and m["precision"] == "fp32"  # it reads images: every lr-onnx reads it right
    for key in ("graphs", "preprocessing", "pool", "profile_space", "lambda", "created_by", "files"):
        assert key in m
    assert m["graphs"]["router"]["inputs"] == {
        "query": ["batch", 1667],
        "model_feat": ["batch", "models", m["model_dim"]],
        "avail": ["batch", "models"],
    }
    assert m["graphs"]["text_encoder"]["inputs"]["input_ids"] == ["batch", "tokens"]
    assert set(m["files"]) == {
        "image_encoder.onnx",
        "text_encoder.onnx",
        "router.onnx",
        "fused.onnx",
        "memory.onnx",
        "memory_projection.npy",
        "memory_keys.npy",
        "memory_outcomes.npy",
        "tokenizer.json",
        "golden.json",
        "parity.json",
    }  # closed: everything it holds
    assert m["graphs"]["memory"]["inputs"] == {"query": ["batch", 1667], "keys": ["rows", m["memory"]["dim"]]}
    assert m["model_dim"] == len(m["profile_space"]["mean"]) + 1 + 3  # profile, memory columns, cost
    assert m["graphs"]["fused"]["inputs"]["pixels"] == ["batch", 3, 224, 224]
    for p in m["pool"]:
        assert len(p["profile"]) == len(m["profile_space"]["mean"]) == len(m["profile_space"]["centroids"]) + 7
        assert p["expected_cost_usd"] > 0 and p["cost_hat"] > 0


def test_editing_the_pool_leaves_the_fused_graph_out_of_the_copy(bundle, tmp_path, runner):
    """fused.onnx bakes in the pool and the memory: a copy with another pool must not carry it (stale answers)."""
    from lr_onnx.cli import main
    from lr_onnx.runtime.bundle import load_bundle

    src = load_bundle(bundle[0])
    name = src.model_names[0]
    res = runner.invoke(
        main, ["models", "remove", "--bundle", str(bundle[0]), "--out", str(tmp_path / "b2"), "--name", name]
    )
    assert res.exit_code == 0, res.output
    assert "fused.onnx was left out" in res.output
    b2 = load_bundle(tmp_path / "b2")  # verifies every hash the manifest lists
    assert "fused" not in b2.manifest.graphs and "fused.onnx" not in b2.manifest.files
    assert not (tmp_path / "b2" / "fused.onnx").exists() and name not in b2.model_names
    assert (bundle[0] / "fused.onnx").is_file() and "fused" in load_bundle(
        bundle[0]
    ).manifest.graphs  # source untouched


def test_runtime_scores_equal_training_side_scores(env, run, bundle):
    """The served router (PIL + tokenizers + ONNX Runtime) reproduces the torch pipeline on real queries."""
    from lr_onnx.export.train.trainer import attach_run_memory, load_router, predict, load_training_set
    from lr_onnx.runtime.router import Router

    net, cfg = load_router(run[0])
    P = attach_run_memory(load_training_set(env / "demo", slices=2, progress=False), cfg)
    rows = np.flatnonzero(P.masks["test"])[:20]
    torch_mt = predict(net, P, rows)[0]
    r = Router.load(bundle[0], provider="cpu")
    q = r.features([(P.data.images[i], P.data.question[i]) for i in rows])
    onnx_mt = r.score_features(q, P.data.A[rows])["mu_tilde"]
    np.testing.assert_allclose(onnx_mt, torch_mt, atol=1e-4)


def test_a_text_only_run_exports_a_bundle_without_an_image_encoder(env, bundle, tmp_path):
    """A run whose validation chose text only (export.train.modality) exports with no image encoder (13 MB less),
    says so in its manifest, and the
    served router reads each question as if asked without its images, as the run was trained (parity holds)."""
    from lr_onnx.export.bundle.assemble import export_bundle
    from lr_onnx.export.train.trainer import TrainConfig, load_training_set, train
    from lr_onnx.runtime.features import without_images
    from lr_onnx.runtime.router import Router

    cfg = TrainConfig(epochs=2, slices=2, text_only=True)
    train(env / "demo", tmp_path / "run", cfg, progress=False)
    parity = export_bundle(tmp_path / "run", tmp_path / "b", precision="fp32", parity_queries=24)
    assert parity["passed"] and parity["held_out"]["decision_agreement_lambda0"] == 1.0
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    assert manifest["query_features"] == "text" and manifest["schema_version"] == 2  # a version-1 reader refuses it
    assert "image_encoder" not in manifest["graphs"] and not (tmp_path / "b/image_encoder.onnx").exists()
    P = load_training_set(env / "demo", slices=2, progress=False)
    rows = np.flatnonzero(P.masks["test"] & np.array([bool(x) for x in P.data.images]))[:12]
    r = Router.load(tmp_path / "b", provider="cpu")
    q = r.features([(P.data.images[i], P.data.question[i]) for i in rows])
    full = Router.load(bundle[0], provider="cpu").features([(P.data.images[i], P.data.question[i]) for i in rows])
    np.testing.assert_allclose(q, without_images(full), atol=1e-5)
    assert "image_encoder" not in r.sessions.loaded and set(r.bound_providers()) == {"router", "text_encoder"}
    # the router graph reads those features as PyTorch does (parity's held-out queries, without their images)
    assert max(parity["held_out"]["max_abs_diff"].values()) <= 1e-4
    from lr_onnx.export.evaluate.transfer import transfer_evaluate

    t = transfer_evaluate(tmp_path / "run", env / "demo", progress=False)  # read as trained: without images
    assert t["rows"] > 0 and 0.0 <= t["latentrouter"]["score_at_lambda0"] <= t["oracle"]["score"]
    from click.testing import CliRunner

    from lr_onnx.cli import main

    image = P.data.images[rows[0]][0]  # `route` says the picture sets costs only, and says nothing without one
    said = CliRunner().invoke(main, ["route", "--bundle", str(tmp_path / "b"), str(image), "What is shown?"])
    assert said.exit_code == 0 and "note: this bundle reads the question only" in said.output
    plain = CliRunner().invoke(main, ["route", "--bundle", str(tmp_path / "b"), "What is 6 * 7?"])
    assert plain.exit_code == 0 and "reads the question only" not in plain.output


def test_int8_text_encoder_stays_close_to_fp32(env, bundle):
    """8-bit MiniLM (MatMulNBits weights, int8 embedding table): a quarter of the size, cosine >= 0.995."""
    import onnxruntime as ort

    from lr_onnx.export.bundle.quantise import quantize_text_encoder
    from lr_onnx.runtime.preprocess import TextSpec, load_tokenizer, tokenize

    src, dst = bundle[0] / "text_encoder.onnx", env / "text_int8.onnx"
    quantize_text_encoder(src, dst)
    assert dst.stat().st_size < 0.3 * src.stat().st_size
    questions = [json.loads(ln)["question"] for ln in (env / "demo" / "queries.jsonl").read_text().splitlines()][:64]
    ids, mask = tokenize(load_tokenizer(bundle[0] / "tokenizer.json", TextSpec()), questions)
    a, b = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids, "attention_mask": mask}
        )[0]
        for p in (src, dst)
    )
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.995, cos.min()


@pytest.mark.slow
def test_int8_keeps_the_cnn_fp32_and_int8_full_quantises_it(env, bundle):
    """`int8` touches only MiniLM (the CNN's int8 error flips near-tied decisions); `int8-full` adds QDQ to the CNN."""
    import shutil

    import onnx

    from lr_onnx.export.bundle.quantise import quantize_encoders

    calib = np.random.default_rng(0).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    for precision, cnn_int8 in (("int8", False), ("int8-full", True)):
        d = env / f"q_{precision}"
        shutil.copytree(bundle[0], d)
        quantize_encoders(d, calib, image=cnn_int8)
        ops = {n.op_type for n in onnx.load(str(d / "image_encoder.onnx")).graph.node}
        assert ("QuantizeLinear" in ops) is cnn_int8, precision
        assert (d / "image_encoder.onnx").read_bytes() != (
            bundle[0] / "image_encoder.onnx"
        ).read_bytes() or not cnn_int8
        assert "MatMulNBits" in {n.op_type for n in onnx.load(str(d / "text_encoder.onnx")).graph.node}
        assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in bundle[0].iterdir())  # no temp files left


@pytest.mark.slow
def test_fp16_encoders_pass_the_checker_and_stay_close(env, bundle):
    """fp16 converts the encoders only; the graphs stay valid ONNX (sorted, consistent types) and close to fp32."""
    import shutil

    import onnx
    import onnxruntime as ort

    from lr_onnx.export.bundle.quantise import to_fp16

    d = env / "fp16"
    shutil.copytree(bundle[0], d)
    to_fp16(d)
    assert (d / "router.onnx").read_bytes() == (bundle[0] / "router.onnx").read_bytes()
    px = np.random.default_rng(1).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    for name, feed in (
        ("image_encoder.onnx", {"pixels": px}),
        (
            "text_encoder.onnx",
            {"input_ids": np.array([[101, 2054, 2003, 102]]), "attention_mask": np.ones((1, 4), np.int64)},
        ),
    ):
        onnx.checker.check_model(str(d / name), full_check=True)
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(d / name)).graph.initializer)
        a, b = (
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for p in (bundle[0] / name, d / name)
        )
        assert a.dtype == b.dtype == np.float32
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.999, (name, cos.min())


def test_doctor_on_the_exported_bundle(runner, bundle):
    from lr_onnx.cli import main

    res = runner.invoke(main, ["doctor", "--bundle", str(bundle[0])])
    assert res.exit_code == 0 and "golden parity" in res.output and "ok" in res.output


def test_new_model_protocol_excludes_then_adds_back(env, run, tmp_path):
    """§8.8: each held-out model is absent from its training run, then added back from n R_cal queries."""
    from lr_onnx.export.evaluate import routing_metrics as M
    import functools

    from newmodel import added_model_feat, run as protocol
    from lr_onnx.export.train.trainer import TrainConfig, load_training_set

    call = functools.partial(
        protocol, env / "demo", tmp_path, full_run=run[0], sizes=(24,), cfg=TrainConfig(epochs=1, slices=2), draws=2
    )
    res = call(seeds=1, progress=False)
    assert json.loads((tmp_path / "newmodel.json").read_text())["sizes"] == [24]
    full = load_training_set(env / "demo", slices=2, progress=False)
    d, cal = full.data, full.masks["cal"]
    single = M.single_models(d.Y[cal], d.C[cal], d.A[cal])
    why = {e["why"]: name for name, e in res["models"].items()}
    assert set(why) == {"strongest", "cheapest", "random"}
    assert why["strongest"] == d.model_names[int(np.nanargmax([s["score"] for s in single]))]
    assert why["cheapest"] == d.model_names[int(np.nanargmin([s["cost"] for s in single]))]
    for name, e in res["models"].items():
        models = [m["name"] for m in json.loads((tmp_path / f"without_{name}" / "profiles.json").read_text())["models"]]
        assert name not in models and len(models) == d.k - 1  # trained with no column, no profile
        added = e["added"]["24"]
        assert 0 < added["queries"] <= 24 and 0.0 <= added["share_routed_to_model_at_lambda0"] <= 1.0
        assert set(added["recovery"]) == {"score_at_lambda0", "nauc"}
        one = e["per_seed"][0]["added"]["24"]  # the one training seed's: its draws beside their mean
        assert added["draws"] == 2 and len(one["per_draw"]) == 2  # two label draws, their mean recorded
        rec = [r["recovery"]["nauc"] for r in one["per_draw"] if r["recovery"]["nauc"] is not None]
        assert added["recovery"]["nauc"] == (pytest.approx(np.mean(rec), abs=1e-4) if rec else None)
        for rule in ("added_global_mean_prior", "added_line_unshrunk"):  # the ablations
            assert set(e[rule]["24"]["recovery"]) == {"score_at_lambda0", "nauc"}
        assert 0.0 <= e["lower_without"]["score_at_lambda0"] <= e["upper"]["score_at_lambda0"] + 0.5
    # a second training seed: its routers in seed1/, the recovery the mean of the seeds' (seed 0's routers reused)
    name = why["cheapest"]
    two = call(which=("cheapest",), seeds=2, progress=False)
    e2 = two["models"][name]
    assert two["training_seeds"] == 2 and len(e2["per_seed"]) == 2 and (tmp_path / "seed1" / f"without_{name}").is_dir()
    assert e2["per_seed"][0]["added"]["24"] == res["models"][name]["per_seed"][0]["added"]["24"]  # seed 0 as before
    seed_means = [p["added"]["24"]["score_at_lambda0"] for p in e2["per_seed"]]
    assert e2["added"]["24"]["score_at_lambda0"] == pytest.approx(np.mean(seed_means), abs=1e-4)
    # the added model's profile is built from its own outcomes on the chosen rows (overall score = their mean)
    k = d.model_names.index(name)
    P_wo = load_training_set(env / "demo", slices=2, progress=False, exclude=(name,))
    rows = np.flatnonzero(cal & d.A[:, k])[:30]
    feat, c_hat = added_model_feat(P_wo, full, k, rows)
    assert feat.shape == (d.k, P_wo.model_feat().shape[1]) and np.allclose(feat[:-1], P_wo.model_feat())
    raw0 = feat[-1, 0] * P_wo.space.std[0] + P_wo.space.mean[0]
    assert raw0 == pytest.approx(d.Y[rows, k].mean(), abs=1e-5)


def test_a_run_whose_per_model_lists_disagree_is_refused(tmp_path):
    """`models add RUN` used to leave cost_model one short, and export's zip silently dropped the new model."""
    import json

    from lr_onnx.export.train.pool import read_profiles
    from lr_onnx.runtime.errors import DataError

    run = tmp_path / "run"
    run.mkdir()
    prof = {
        "models": [{"name": "a"}, {"name": "b"}],
        "raw_profiles": [[0.0], [1.0]],
        "e_bar": [1.0, 2.0],
        "cost_model": [{"output_tokens": None}],
    }
    (run / "profiles.json").write_text(json.dumps(prof))
    with pytest.raises(DataError, match="cost_model 1"):
        read_profiles(run)
    prof["cost_model"].append({"output_tokens": None})
    (run / "profiles.json").write_text(json.dumps(prof))
    assert len(read_profiles(run)["models"]) == 2


def test_a_merge_gets_a_memory_setting_per_source(env, monkeypatch):
    """export.train.memory.select_sources: on a merge (SOURCE/label), each source with enough validation rows chooses
    its own k, kappa, tau in the one retrieval space; the memory keeps each row's source, and the run's config
    rebuilds the same memory (attach_run_memory)."""
    import dataclasses

    import lr_onnx.export.train.memory as TM
    from lr_onnx.export.train.trainer import attach_run_memory, load_training_set

    P = load_training_set(env / "demo", slices=2, progress=False)
    P.data = dataclasses.replace(P.data, dataset=[f"s{i % 2}/task" for i in range(P.data.n)])
    assert TM.select_sources(P, TM.MemorySettings(image_weight=2.0), 1.0) == ({}, [])  # too few validation rows
    monkeypatch.setattr(TM, "MIN_SOURCE_VAL", 5)
    per, trials = TM.select_sources(P, TM.MemorySettings(image_weight=2.0), 1.0)
    assert sorted(per) == ["s0", "s1"] and all(st.image_weight == 2.0 for st in per.values())
    assert {t["source"] for t in trials} == {"s0", "s1"} and all(st.k in TM.GRID["k"] for st in per.values())
    P.attach_memory(TM.MemorySettings(k=16, image_weight=2.0), 1.0, per)
    src = P.memory.sources
    assert src.names == ("s0", "s1") and [st.k for st in src.settings] == [per["s0"].k, per["s1"].k]
    assert (src.of_row == np.array([int(P.data.dataset[i][1]) for i in P.memory.rows])).all()
    cfg = {
        "memory": {
            "settings": P.memory.settings.to_dict(),
            "size": 1.0,
            "per_source": {n: s.to_dict() for n, s in zip(src.names, src.settings)},
        }
    }
    Q = load_training_set(env / "demo", slices=2, progress=False)
    Q.data = P.data
    attach_run_memory(Q, cfg)
    np.testing.assert_allclose(Q.mem_cols, P.mem_cols)  # the run's memory, rebuilt from its config


def test_an_aligned_space_finds_neighbours_that_share_outcomes():
    """export.train.memory.aligned_projection: where the outcomes follow a direction of little variance, the PCA space
    finds neighbours by the loud directions; stretched along what predicts the outcomes, it finds neighbours that
    share them. Still one linear map of the same shape, the centre unchanged."""
    from lr_onnx.export.train.memory import aligned_projection
    from lr_onnx.runtime.features import l2_normalise

    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 16)) * np.r_[np.full(8, 3.0), np.full(8, 0.3)]
    y = (x[:, 12] > 0).astype(np.float64)
    Y, A = np.stack([y, 1 - y], axis=1), np.ones((800, 2), bool)
    proj = np.concatenate([rng.normal(size=(16, 1)), np.eye(16)], axis=1).astype(np.float32)

    def agreement(p):
        keys = l2_normalise((x - p[:, 0]) @ p[:, 1:])  # the runtime's embed, without the image block
        sims = keys @ keys.T
        np.fill_diagonal(sims, -np.inf)
        near = np.argsort(-sims, axis=1)[:, :10]
        return float((y[near] == y[:, None]).mean())

    keys = l2_normalise((x - proj[:, 0]) @ proj[:, 1:]).astype(np.float32)
    stretched = aligned_projection(proj, keys, Y, A, 4.0)
    assert stretched.shape == proj.shape and np.array_equal(stretched[:, 0], proj[:, 0])
    assert agreement(proj) < 0.65 and agreement(stretched) > agreement(proj) + 0.2


def test_the_memory_space_is_stretched_only_past_the_paired_test(env):
    """export.train.memory.select_settings: the aligned space is tried on validation and kept only where its paired
    z (recorded) passes modality.Z; `align=False` tries the PCA space alone. An aligned memory is rebuilt from the
    run's config entry exactly (attach_run_memory)."""
    import lr_onnx.export.train.memory as TM
    from lr_onnx.export.train.modality import Z
    from lr_onnx.export.train.trainer import attach_run_memory, load_training_set

    P = load_training_set(env / "demo", slices=2, progress=False)
    st, size, align, trials = TM.select_settings(P)
    (test,) = [t["aligned_against_pca"] for t in trials if "aligned_against_pca" in t]
    assert test["align"] in TM.ALIGN and (align > 0) == (test["z"] > Z) and align in (0.0, test["align"])
    assert {t["align"] for t in trials if "align" in t} >= {0.0, *TM.ALIGN}
    st0, _, align0, trials0 = TM.select_settings(P, align=False)
    assert align0 == 0.0 and {t.get("align") for t in trials0} <= {0.0, None}
    P.attach_memory(st0, 1.0, None, 2.0)
    Q = attach_run_memory(
        load_training_set(env / "demo", slices=2, progress=False), {"memory": TM.config_entry(P, None)}
    )
    assert Q.memory_align == 2.0 and np.array_equal(Q.memory.keys, P.memory.keys)
    np.testing.assert_allclose(Q.mem_cols, P.mem_cols)
    R = attach_run_memory(
        load_training_set(env / "demo", slices=2, progress=False), {"memory": {"settings": st0.to_dict()}}
    )
    assert R.memory_align == 0.0 and not np.allclose(R.memory.keys, P.memory.keys)  # a run from before: PCA alone


def test_the_pca_space_ablation_retrains_with_the_space_unstretched(env, tmp_path, monkeypatch):
    """evaluate's `pca_space` row: only where the run's memory space is stretched, retrained with its settings chosen
    again in the PCA space (`train --pca-space`); a run in the PCA space has no such row (it is the ablation)."""
    import lr_onnx.export.train.memory as TM
    from lr_onnx.export.evaluate.report import evaluate
    from lr_onnx.export.train.trainer import TrainConfig, train

    monkeypatch.setenv("LR_ONNX_CACHE", str(env / "cache"))
    monkeypatch.setattr(TM, "aligned_wins", lambda *a: True)  # the demo's validation is small: force the stretch
    train(env / "demo", tmp_path / "run", TrainConfig(epochs=1, slices=2), progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["memory"]["align"] in TM.ALIGN
    m = evaluate(tmp_path / "run", ablations=("pca_space",), progress=False)["methods"]
    abl = json.loads((tmp_path / "run" / "ablations" / "pca_space" / "config.json").read_text())
    assert abl["train"]["memory_align"] is False and abl["memory"]["align"] == 0.0 and "pca_space" in m
    monkeypatch.setattr(TM, "aligned_wins", lambda *a: False)
    train(env / "demo", tmp_path / "plain", TrainConfig(epochs=1, slices=2), progress=False)
    assert "pca_space" not in evaluate(tmp_path / "plain", ablations=("pca_space",), progress=False)["methods"]


@pytest.mark.slow
def test_a_run_on_a_merge_exports_a_bundle_that_reads_with_a_setting_per_source(env, tmp_path, monkeypatch):
    """End to end (runtime.memory_sources): train on a merge of two demo draws, export, route with the Router. The
    bundle carries each memory row's source and a setting per source, memory.onnx searches the most any setting
    reads, and the export's parity holds, the fused graph's (which votes in-graph) included."""
    from lr_onnx.export.bundle.assemble import export_bundle
    from lr_onnx.export.data.demo import build_demo
    from lr_onnx.export.data.merge import merge_datasets
    from lr_onnx.export.train import memory as TM
    from lr_onnx.export.train.trainer import TrainConfig, train
    from lr_onnx.runtime.router import Router

    monkeypatch.setenv("LR_ONNX_CACHE", str(env / "cache"))
    monkeypatch.setattr(TM, "MIN_SOURCE_VAL", 10)  # two small draws: a handful of validation rows each
    build_demo(tmp_path / "other", n=300, seed=2, workers=1, progress=False)
    merge_datasets(tmp_path / "merged", [env / "demo", tmp_path / "other"], progress=False)
    train(tmp_path / "merged", tmp_path / "run", TrainConfig(epochs=1, slices=2), progress=False)
    per = json.loads((tmp_path / "run" / "config.json").read_text())["memory"]["per_source"]
    assert sorted(per) == ["demo", "other"]
    parity = export_bundle(tmp_path / "run", tmp_path / "bundle", parity_queries=24, fused=True, progress=False)
    assert parity["passed"] is True and parity["memory"]["columns_max_abs_diff"] <= 1e-4
    assert parity["fused"]["max_abs_diff_vs_separate_graphs"] <= 1e-4  # the in-graph vote reads as the runtime does
    r = Router.load(tmp_path / "bundle")
    mem = r.memory()
    assert mem.sources is not None and mem.sources.names == ("demo", "other")
    assert mem.search_k == max([mem.settings.k] + [p["k"] for p in per.values()]) == parity["memory"]["k"]
    assert set(np.unique(mem.sources.of_row)) <= {-1, 0, 1} and (mem.sources.of_row >= 0).all()
    d = r.route([], "What is 3 + 4?", lam=0.0)
    assert d.model in r.names
    # the grid's ablation of the per-source settings: retrained with the run's one setting for every source
    from lr_onnx.export.evaluate.report import evaluate

    m = evaluate(tmp_path / "run", ablations=("one_memory_setting",), progress=False)["methods"]
    abl = json.loads((tmp_path / "run" / "ablations" / "one_memory_setting" / "config.json").read_text())
    own = json.loads((tmp_path / "run" / "config.json").read_text())["memory"]["settings"]
    assert abl["train"]["memory_per_source"] is False and "per_source" not in abl["memory"]
    assert abl["memory"]["settings"] == own and "one_memory_setting" in m and "no_memory" not in m


def test_exported_gelus_take_the_form_onnx_runtime_fuses(tmp_path):
    """export.bundle.graphs.fusable_gelu: the exporter's exact GELU (Div, Erf, Add, Mul(0.5), Mul(x)) is written as
    ... Mul(x), Mul(0.5), which ONNX Runtime fuses into one node at load time; the outputs do not move."""
    import onnx
    import torch

    from lr_onnx.export.bundle.graphs import _export, fusable_gelu
    from lr_onnx.runtime.sessions import ort

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4), torch.nn.GELU()).eval()
    path = tmp_path / "g.onnx"
    with torch.no_grad():
        _export(net, (torch.randn(3, 8),), path, ["x"], ["y"], ({0: torch.export.Dim("batch")},), 18)
    m = onnx.load(str(path))
    assert fusable_gelu(m.graph) == 0  # already rewritten at export: nothing left to do
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Erf") == 2
    made = {o: n for n in m.graph.node for o in n.output}
    used = {i: n for n in m.graph.node for i in n.input}  # each link here has one consumer
    for erf in (n for n in m.graph.node if n.op_type == "Erf"):  # Erf -> Add -> Mul(x, .) -> Mul(., 0.5)
        x = made[erf.input[0]].input[0]
        times_x = used[used[erf.output[0]].output[0]]
        assert times_x.op_type == "Mul" and x in times_x.input
        assert used[times_x.output[0]].op_type == "Mul"
    rt = ort()
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = rt.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert "Erf" not in [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]  # fused
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(sess.run(None, {"x": x})[0] - net(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_the_model_card_says_what_the_router_reads(env, run, bundle, tmp_path):
    """The card's "How it decides" names the modality validation chose (export.train.modality), with its z."""
    import shutil

    from lr_onnx.export.bundle.card import card
    from lr_onnx.export.evaluate.report import evaluate

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("ablations"))
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["modality"] = {"chosen": "images", "val_utility": {}, "val_rows": 100, "z": -1.25, "z_needed": 1.6449}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    evaluate(run_dir, ablations=False, progress=False)
    text = card(run_dir, bundle[0], sources=[])
    assert "- Reads the question and its images: validation compared" in text and "paired z -1.25" in text
    del cfg["modality"]
    (run_dir / "config.json").write_text(json.dumps(cfg))
    assert "- Reads" not in card(run_dir, bundle[0], sources=[])  # a run trained before the choice existed
