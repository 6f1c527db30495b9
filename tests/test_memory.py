"""The capability memory (runtime/memory.py): estimates, the fallback far from the data, its files and manifest."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from lr_onnx.runtime.errors import BundleError
from lr_onnx.runtime.features import HAS_IMAGE_COL, QUERY_DIM, TEXT_DIM
from lr_onnx.runtime.manifest import MemoryEntry
from lr_onnx.runtime.memory import COLUMNS, FILES, Memory, MemorySettings, npy_bytes

D = 8


def _memory(n=200, seed=0, **kw) -> tuple[Memory, np.ndarray]:
    """A memory over n random queries of two clusters: model a is right on cluster 0, model b on cluster 1."""
    rng = np.random.default_rng(seed)
    q = np.zeros((n, QUERY_DIM), np.float32)
    cluster = np.arange(n) % 2
    q[:, :TEXT_DIM] = rng.normal(size=(n, TEXT_DIM)) * 0.1
    q[cluster == 0, 0] += 3.0
    q[cluster == 1, 1] += 3.0
    proj = np.zeros((HAS_IMAGE_COL, D + 1), np.float32)
    proj[np.arange(D), 1 + np.arange(D)] = 1.0  # the first D text dimensions, no centring
    y = np.stack([cluster == 0, cluster == 1], axis=1).astype(np.float32)
    settings = MemorySettings(**{"k": 10, "kappa": 2.0, "tau": 0.05, "image_weight": 1.0, "s_ref": 0.9, **kw})
    from lr_onnx.runtime.memory import embed

    keys = embed(q, proj[:, 0], proj[:, 1:], 1.0)
    return Memory(proj, keys, y, ["a", "b"], settings), q


def test_estimates_follow_the_neighbours_and_fall_back_far_from_them():
    mem, q = _memory()
    cols = mem.columns(q[:2], ["a", "b"])
    est = 1 / (1 + np.exp(-cols[..., 0]))
    assert cols.shape == (2, 2, COLUMNS)
    assert est[0, 0] > 0.8 and est[0, 1] < 0.2  # cluster 0: a is right, b wrong
    assert est[1, 1] > 0.8 and est[1, 0] < 0.2
    assert np.allclose(cols[..., 2], 1.0, atol=0.05)  # close to the memory
    far = np.zeros((1, QUERY_DIM), np.float32)
    far[0, 5] = 1.0  # orthogonal to both clusters
    fc = mem.columns(far, ["a", "b"])
    assert fc[0, 0, 2] < 0.01  # hardly any closeness ...
    assert np.allclose(1 / (1 + np.exp(-fc[0, :, 0])), mem.global_mean, atol=0.02)  # ... so the global means
    assert (fc[0, :, 1] < 0.05).all()  # and no evidence


def test_leave_one_out_never_sees_the_row_itself():
    mem, q = _memory(n=40)
    sims, idx = mem.neighbours(mem.embed(q), 5, exclude=np.arange(40))
    assert not (idx == np.arange(40)[:, None]).any()
    _, idx_in = mem.neighbours(mem.embed(q), 5)
    assert (idx_in == np.arange(40)[:, None]).any(axis=1).all()  # without exclusion each row finds itself


def test_a_model_outside_the_memory_gets_its_prior_and_no_evidence():
    mem, q = _memory()
    cols = mem.columns(q[:3], ["a", "new"], prior=[0.5, 0.8])
    assert np.allclose(1 / (1 + np.exp(-cols[:, 1, 0])), 0.8, atol=1e-5)
    assert (cols[:, 1, 1] == 0).all()


def test_rows_added_for_a_new_model_speak_for_it_at_once():
    mem, q = _memory()
    grown = mem.with_rows(q[:20], "c", np.ones(20))  # perfect on 20 queries of both clusters
    assert grown.models == ["a", "b", "c"] and len(grown) == len(mem) + 20
    est = 1 / (1 + np.exp(-grown.columns(q[:20], ["a", "b", "c"])[..., 0]))
    assert (est[:, 2] > 0.7).all() and (est[:, 2] >= est[:, :2].max(axis=1)).all()
    back = grown.without_models(["c"])
    assert back.models == ["a", "b"] and len(back) == len(mem)


def test_labelled_counts_the_searched_rows_with_an_outcome_whatever_the_reading():
    """Thompson's n: the outcomes the memory holds per model among a query's searched rows. A narrow reading (a
    high s_ref, as refresh may choose) weighs them to almost no evidence; the count of data near the query stays."""
    mem, q = _memory()
    grown = mem.with_rows(q[:6], "c", np.ones(6))  # c known on 6 rows only, and not on a's and b's rows
    found = grown.neighbours(grown.embed(q[:4]), 30)
    n = grown.labelled(found, ["a", "c", "new"])
    assert n.shape == (4, 3)
    known_c = (found[1] >= len(mem)).sum(axis=1)  # the rows with_rows appended are c's
    assert np.array_equal(n[:, 0], 30 - known_c) and np.array_equal(n[:, 1], known_c)
    assert (n[:, 2] == 0).all()  # a model the memory lacks: no data
    narrow = Memory(
        grown.projection(), grown.keys, grown.outcomes, grown.models, MemorySettings(k=10, s_ref=0.999, tau=0.01)
    )
    assert np.array_equal(narrow.labelled(found, ["a", "c", "new"]), n)
    assert (
        np.expm1(narrow.columns(q[:4], ["a"], found=found)[:, 0, 1])
        < np.expm1(grown.columns(q[:4], ["a"], found=found)[:, 0, 1])
    ).all()  # while its weighted evidence shrinks


def test_files_round_trip_and_refuse_bad_arrays(tmp_path):
    mem, q = _memory()
    entry = MemoryEntry.from_written(mem.write(tmp_path))
    data = {k: (tmp_path / FILES[k]).read_bytes() for k in FILES}
    back = Memory.from_files(data, entry, "b")
    assert np.allclose(back.columns(q[:4]), mem.columns(q[:4]), atol=2e-2)  # fp16 files
    bad = dict(data, keys=npy_bytes(np.full((len(mem), D), np.nan, np.float16)))
    with pytest.raises(BundleError, match="non-finite"):
        Memory.from_files(bad, entry, "b")
    with pytest.raises(BundleError, match="shape"):
        Memory.from_files(dict(data, keys=npy_bytes(np.zeros((3, D), np.float16))), entry, "b")
    with pytest.raises(BundleError, match=r"\[0, 1\]"):
        Memory.from_files(dict(data, outcomes=npy_bytes(np.full((len(mem), 2), 2.0, np.float16))), entry, "b")
    obj = np.empty((2, 2), object)
    with pytest.raises(BundleError, match="numpy array file|float16"):  # pickled arrays are never loaded
        import io

        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=True)
        Memory.from_files(dict(data, keys=buf.getvalue()), entry, "b")
    with pytest.raises(BundleError, match="numpy array file"):
        Memory.from_files(dict(data, keys=b"not an array"), entry, "b")


def test_manifest_memory_entry_is_validated(tmp_path):
    from lr_onnx.runtime.bundle import load_bundle
    from lr_onnx.runtime.router import DEFAULT_BUNDLE

    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    for change, match in (
        (lambda e: e.update(rows=0), "memory.rows"),
        (lambda e: e["settings"].update(tau=0), "memory.settings.tau"),
        (lambda e: e.update(models=["x", "x"]), "distinct"),
        (lambda e: e["files"].update(keys="other.npy"), "not listed"),
        (
            lambda e: (
                e["files"].pop("sources", None),
                e.update(sources={"names": ["a"], "settings": [e["settings"]]}),
            ),
            "sources files",
        ),
        (
            lambda e: (e.pop("sources", None), e["files"].setdefault("sources", e["files"]["keys"])),
            "memory.files must name the keys, outcomes, projection files",
        ),
        (
            lambda e: (
                e["files"].setdefault("sources", e["files"]["keys"]),
                e.update(sources={"names": ["a", "a"], "settings": [e["settings"]] * 2}),
            ),
            "memory.sources must be",
        ),
        (
            lambda e: (
                e["files"].setdefault("sources", e["files"]["keys"]),
                e.update(sources={"names": ["a"], "settings": [{**e["settings"], "k": 0}]}),
            ),
            r"memory.sources.settings\[0\].k",
        ),
    ):
        b = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(DEFAULT_BUNDLE, b)
        mm = json.loads(json.dumps(m))
        change(mm["memory"])
        (b / "manifest.json").write_text(json.dumps(mm))
        with pytest.raises(BundleError, match=match):
            load_bundle(b)


def test_a_tampered_memory_file_fails_its_hash(tmp_path):
    from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    f = b / m["memory"]["files"]["outcomes"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one outcome
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Router.load(b)
    assert hashlib.sha256(f.read_bytes()).hexdigest() != m["files"][f.name]["sha256"]


def test_the_search_graph_finds_what_numpy_finds(tmp_path):
    """memory.onnx (projection, MatMul, TopK; keys fed at run time) against Memory.neighbours, and k capped at N."""
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from lr_onnx.export.bundle.memory_graph import build_memory_graph

    mem, q = _memory(n=120, image_weight=0.5)
    q = q + np.random.default_rng(1).normal(size=q.shape).astype(np.float32) * 0.05
    build_memory_graph(mem, tmp_path / "memory.onnx", 18)
    sess = ort.InferenceSession(str(tmp_path / "memory.onnx"), providers=["CPUExecutionProvider"])
    sims, idx = sess.run(None, {"query": q[:7], "keys": mem.keys})
    ref_s, ref_i = mem.neighbours(mem.embed(q[:7]), mem.settings.k)
    np.testing.assert_allclose(sims, -np.sort(-ref_s, axis=1), atol=1e-5)
    assert all(set(a) == set(b) for a, b in zip(idx.tolist(), ref_i.tolist()))
    np.testing.assert_allclose(mem.columns(None, found=(sims, idx)), mem.columns(q[:7]), atol=1e-5)
    few = sess.run(None, {"query": q[:2], "keys": mem.keys[:4]})[1]
    assert few.shape == (2, 4)  # fewer rows than k: every row, best first


def test_models_added_after_training_get_the_memorys_estimate_and_no_correction():
    from lr_onnx.runtime.added_models import memory_estimates, untrained_answer

    mu = np.array([[0.9, 0.2, -1.0], [0.1, 0.8, 0.7]], np.float32)  # -1: unavailable
    mt, delta = mu + 0.01, np.full_like(mu, 0.01)
    cols = np.zeros((2, 3, 3), np.float32)
    cols[..., 0] = np.log(0.6 / 0.4)  # the memory says 0.6 everywhere
    added = np.array([False, True, True])
    est = memory_estimates(cols, ["a", "b", "c"], np.full(3, 0.5), 3.0, [None] * 3)
    m2, mt2, d2 = untrained_answer(mu, mt, delta, est, added)
    assert np.allclose(mt2[:, 1], 0.6) and np.allclose(m2[:, 1], 0.6) and not d2[:, 1].any()
    assert mt2[0, 2] == mt[0, 2] and m2[0, 2] == -1.0  # unavailable stays unavailable
    assert np.allclose(mt2[1, 2], 0.6)
    assert (mt2[:, 0] == mt[:, 0]).all() and (d2[:, 0] == delta[:, 0]).all()  # trained models untouched


def _difficulty_cols(x: np.ndarray, g_new: float, evidence: float = 0.0) -> np.ndarray:
    """Memory columns for a pool of two trained models whose estimates are `x` and a third model, added, whose own
    estimate is its global mean `g_new` with `evidence` behind it."""
    from lr_onnx.runtime.memory import logit

    cols = np.zeros((len(x), 3, 3), np.float32)
    cols[:, 0, 0] = cols[:, 1, 0] = logit(x)
    cols[:, 2, 0], cols[:, 2, 1] = logit(g_new), np.log1p(evidence)
    return cols


def test_a_local_prior_gives_an_added_model_the_shape_of_the_local_difficulty():
    """LocalPrior (issue 21): an added model's outcomes that follow the trained models' local estimates are fitted as a
    line, which then replaces its global mean as its estimate's prior, per query; evidence of its own outweighs it."""
    from lr_onnx.runtime.added_models import LocalPrior, memory_estimates

    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, 48)
    y = np.clip(0.1 + 0.8 * x + rng.normal(0, 0.02, 48), 0, 1)
    names, added = ["a", "b", "new"], [False, False, True]
    lp = LocalPrior.fit(_difficulty_cols(x, 0.5)[:, :2], y, names[:2], added[:2])
    assert lp is not None and lp.over == ("a", "b")
    assert abs(lp.slope - 0.8) < 0.05 and abs(lp.intercept - 0.1) < 0.03
    g = float(y.mean())
    t = np.array([0.25, 0.5, 0.75])
    est = memory_estimates(_difficulty_cols(t, g), names, np.array([0.5, 0.5, g]), 3.0, [None, None, lp])
    np.testing.assert_allclose(est[:, 2], lp.intercept + lp.slope * t, atol=1e-6)  # no evidence: the line itself
    np.testing.assert_allclose(est[:, :2], np.tile(t[:, None], 2), atol=1e-6)  # the trained models untouched
    flat = memory_estimates(_difficulty_cols(t, g), names, np.array([0.5, 0.5, g]), 3.0, [None] * 3)
    np.testing.assert_allclose(flat[:, 2], g, atol=1e-6)  # without the prior: the same number everywhere
    own = memory_estimates(
        _difficulty_cols(t, 0.9, evidence=300.0), names, np.array([0.5, 0.5, g]), 3.0, [None, None, lp]
    )
    assert np.all(np.abs(own[:, 2] - 0.9) < 0.01)  # its own labelled neighbours speak louder than the line
    gone = memory_estimates(_difficulty_cols(t, g), ["x", "y", "new"], np.array([0.5, 0.5, g]), 3.0, [None, None, lp])
    np.testing.assert_allclose(gone[:, 2], g, atol=1e-6)  # the models it was fitted on left the pool: no line


def test_a_local_prior_needs_a_spread_and_a_well_formed_manifest_entry():
    from lr_onnx.runtime.errors import BundleError
    from lr_onnx.runtime.added_models import LocalPrior

    assert LocalPrior.fit(_difficulty_cols(np.full(30, 0.4), 0.5)[:, :2], np.ones(30), ["a", "b"], [False] * 2) is None
    assert (
        LocalPrior.fit(_difficulty_cols(np.linspace(0.1, 0.9, 30), 0.5)[:, :2], np.ones(30), ["a", "b"], [True] * 2)
        is None
    )
    sliver = np.linspace(0.5, 0.5 + 1e-5, 30)  # a spread too thin to carry a line: its slope would be ~1e5
    steep = (sliver - 0.5) / 1e-5  # outcomes 0..1 exactly along it: nothing to shrink
    assert LocalPrior.fit(_difficulty_cols(sliver, 0.5)[:, :2], steep, ["a", "b"], [False] * 2) is None
    good = LocalPrior(("a",), 0.1, 0.8)
    assert LocalPrior.parse(good.to_dict(), "b") == good
    models = [("a", None), ("new", {"queries": 48, "local_prior": good.to_dict()}), ("old", {"queries": 24})]
    assert LocalPrior.of_pool(models, "b") == [None, good, None]
    for bad in (
        {"over": "a", "intercept": 0, "slope": 1},
        {"over": ["a"], "intercept": "0", "slope": 1},
        {"over": ["a"], "intercept": 0, "slope": float("nan")},
        {"over": ["a"], "intercept": 0, "slope": 1e9},
        {"over": ["a"], "slope": 1},
        [1, 2],
        {"over": ["a"], "intercept": True, "slope": 1},
    ):
        with pytest.raises(BundleError, match="local_prior"):
            LocalPrior.of_pool([("new", {"local_prior": bad})], "b")


def _sourced(k_a=3, k_b=40):
    """`_memory` whose cluster 0 rows come from source "a" (read with k_a) and cluster 1 rows from "b" (k_b)."""
    from lr_onnx.runtime.memory_sources import Sources

    mem, q = _memory()
    st = mem.settings
    per = [MemorySettings(k, st.kappa, st.tau, st.image_weight, st.s_ref) for k in (k_a, k_b)]
    src = Sources(["a", "b"], per, np.arange(len(mem)) % 2)
    return Memory(mem.projection(), mem.keys, mem.outcomes, mem.models, st, src), mem, q, per


def test_a_query_reads_with_the_setting_of_the_source_its_neighbours_vote_for():
    """runtime.memory_sources: cluster-0 queries (their neighbours all from source a) read their 3 nearest rows,
    cluster-1 queries their 40; the search returns the most any setting reads; rows without a source do not vote."""
    sourced, plain, q, per = _sourced()
    assert sourced.search_k == 40
    got = sourced.columns(q[:8], exclude=np.arange(8))
    for i in range(8):
        ref = Memory(plain.projection(), plain.keys, plain.outcomes, plain.models, per[i % 2])
        np.testing.assert_allclose(got[i], ref.columns(q[i : i + 1], exclude=np.array([i]))[0], atol=1e-6)
    assert not np.allclose(got[0, :, 1], plain.columns(q[:1], exclude=np.array([0]))[0, :, 1])  # k 3, not 10
    grown = sourced.with_rows(q[:20], "c", np.ones(20))  # rows added later have no source
    assert (grown.sources.of_row[-20:] == -1).all() and len(grown.sources.of_row) == len(grown)
    kept = grown.without_models(["a", "b"])  # only the new model's rows remain: none votes, the memory's own k
    assert (kept.sources.of_row == -1).all()
    np.testing.assert_allclose(
        kept.columns(q[:3]),
        Memory(kept.projection(), kept.keys, kept.outcomes, kept.models, plain.settings).columns(q[:3]),
        atol=1e-6,
    )


def test_per_source_settings_round_trip_through_files_and_the_manifest(tmp_path):
    from lr_onnx.runtime.manifest_entries import MemoryEntry as Entry
    from lr_onnx.runtime.memory_sources import FILE

    sourced, _, q, _ = _sourced()
    written = sourced.write(tmp_path)
    assert written["files"]["sources"] == FILE and written["sources"]["names"] == ["a", "b"]
    entry = Entry.from_written(written)
    data = {key: (tmp_path / fname).read_bytes() for key, fname in entry.files.items()}
    back = Memory.from_files(data, entry, "b")
    assert back.sources is not None and back.sources.names == ("a", "b") and back.search_k == 40
    np.testing.assert_allclose(back.columns(q[:6]), sourced.columns(q[:6]), atol=2e-2)  # fp16 files
    with pytest.raises(BundleError, match="integers from -1 to 1"):
        Memory.from_files(dict(data, sources=npy_bytes(np.full((len(sourced), 1), 5, np.float16))), entry, "b")
    with pytest.raises(BundleError, match="shape"):
        Memory.from_files(dict(data, sources=npy_bytes(np.zeros((3, 1), np.float16))), entry, "b")
    assert Entry.from_written(entry.to_dict()).sources == entry.sources  # the manifest keeps them as written
