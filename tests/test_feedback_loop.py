"""Learning from production (issue 26): decision log, feedback, exploration and refresh, on the shipped bundle."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from lr_onnx.cli import main
from lr_onnx.runtime.decisionlog import DECISIONS, FEEDBACK, DecisionLog, log_files, read_records
from lr_onnx.runtime.errors import InputError, OptionError
from lr_onnx.runtime.feedback import FeedbackConflict, FeedbackStore, UnknownDecision, parse_feedback
from lr_onnx.runtime.policy import Explore, explore_choice, parse_explore
from lr_onnx.runtime.refresh import refresh
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

EXAMPLES = REPO / "assets" / "examples"
QUERIES = [
    ([EXAMPLES / "chart.png"], "What is the largest value in this chart?"),
    ([EXAMPLES / "receipt.jpg"], "What is the total on this receipt?"),
    ([], "What is 17 times 3?"),
    ([EXAMPLES / "lines.png"], "How many times do the lines cross?"),
]


@pytest.fixture(scope="module")
def features():
    r = Router.load()
    meta: list = []
    return r.features(QUERIES * 6, meta=meta), meta


def logged_router(folder, **kw) -> Router:
    r = Router.load()
    r.start_log(folder, **kw)
    return r


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- exploration
def test_explore_settings_are_parsed_once_with_clear_errors():
    assert parse_explore(None) is None and parse_explore("off") is None
    assert parse_explore("thompson") == Explore("thompson", 1.0)
    assert parse_explore("thompson:0.25") == Explore("thompson", 0.25)
    assert parse_explore("epsilon:0.05") == Explore("epsilon", 0.05)
    for bad in (
        "epsilon",
        "epsilon:",
        "thompson:",
        "epsilon:0",
        "epsilon:1.5",
        "epsilon:nan",
        "thompson:-1",
        "ucb",
        0.1,
        True,
    ):
        with pytest.raises(OptionError):
            parse_explore(bad)


def test_exploration_draws_with_the_propensity_it_reports():
    """The chosen model's logged propensity is the probability the policy really had: over many draws, each model's
    frequency matches it; an unavailable model is never drawn; greedy rows keep propensity 1."""
    scores = np.array([[0.70, 0.65, 0.40, 0.90]])
    sigma = np.array([[0.10, 0.10, 0.10, 0.10]])
    avail = np.array([[True, True, True, False]])
    rng = np.random.default_rng(0)
    for explore in (Explore("thompson", 1.0), Explore("epsilon", 0.3)):
        picks, props = [], {}
        for _ in range(1500):
            c, p = explore_choice(scores, sigma, np.zeros((1, 4)), avail, 0.0, explore, rng)
            picks.append(int(c[0]))
            props.setdefault(int(c[0]), []).append(float(p[0]))
        assert 3 not in picks
        for k, ps in props.items():
            freq = picks.count(k) / len(picks)
            assert abs(freq - float(np.mean(ps))) < 0.05, (explore, k, freq, np.mean(ps))
        assert len(props) >= 2  # it explores


def test_thompson_tries_what_the_memory_knows_little_about():
    """Thompson's spread is the estimate's (sigma / sqrt(1 + evidence)): two models alike but for their evidence, the
    one with few labelled neighbours is tried, the one with many is not over-explored."""
    scores, sigma = np.array([[0.80, 0.70, 0.70]]), np.full((1, 3), 0.4)
    avail, rng = np.ones((1, 3), bool), np.random.default_rng(0)
    p = {}
    for name, ev in (("known", np.array([[16.0, 16.0, 0.0]])), ("thin", np.array([[16.0, 0.0, 16.0]]))):
        _, prop = explore_choice(scores, sigma, np.zeros((1, 3)), avail, 0.0, Explore("thompson", 1.0), rng, ev)
        c = [
            int(explore_choice(scores, sigma, np.zeros((1, 3)), avail, 0.0, Explore("thompson", 1.0), rng, ev)[0][0])
            for _ in range(400)
        ]
        p[name] = (c.count(1) / 400, c.count(2) / 400)
    assert p["known"][1] > 0.25 and p["known"][1] > 2 * p["known"][0]  # no evidence: tried far more often
    assert p["thin"][0] > 0.25 and p["thin"][0] > 2 * p["thin"][1]


def test_thompson_counts_the_data_near_a_query_not_the_reading_of_it(features, monkeypatch):
    """Thompson's n is how many searched neighbours hold an outcome for the model: a narrower reading (refresh may
    choose one) weighs them less for the estimate, but the router has not learned less, so it must not explore more
    (a refreshed router weighing by the reading explored 60% of a shifted stream, against 22% frozen)."""
    from dataclasses import replace

    from lr_onnx.runtime import router as router_module

    q, meta = features
    r = Router.load()
    mem = r.memory()
    seen = []
    real = router_module.explore_rows
    monkeypatch.setattr(router_module, "explore_rows", lambda *a: seen.append(a[-1]) or real(*a))
    r.decide(q, [r.options(lam=0.0, explore="thompson:0.5")] * len(q), meta=meta)
    found = r.memory_search(q)
    assert np.array_equal(seen[0], mem.labelled(found, r.names)) and seen[0].max() >= 1
    assert np.all(seen[0] <= found[1].shape[1])
    evidence = np.expm1(r.score_features(q, np.ones((len(q), len(r.names)), bool))["memory"][:, :, 1])
    narrow = {"s_ref": 0.999, "tau": 0.01}
    mem.settings = replace(mem.settings, **narrow)
    if mem.sources is not None:
        mem.sources.settings = tuple(replace(st, **narrow) for st in mem.sources.settings)
    r.decide(q, [r.options(lam=0.0, explore="thompson:0.5")] * len(q), meta=meta)
    thin = np.expm1(r.score_features(q, np.ones((len(q), len(r.names)), bool))["memory"][:, :, 1])
    assert thin.sum() < 0.1 * evidence.sum()  # the narrow reading's evidence is nearly gone ...
    assert np.array_equal(seen[1], seen[0])  # ... the data near each query is not


def test_route_with_exploration_reports_its_propensity(features):
    q, meta = features
    r = Router.load()
    r.seed(1)
    greedy = r.decide(q, [r.options(lam=0.0)] * len(q), meta=meta)
    assert all(d.propensity == 1.0 for d in greedy)
    explored = r.decide(q, [r.options(lam=0.0, explore="epsilon:1")] * len(q), meta=meta)
    assert any(d.model != g.model for d, g in zip(explored, greedy, strict=True))
    assert all(0 < d.propensity < 1 for d in explored)
    assert "propensity" in explored[0].to_dict() and "propensity" not in greedy[0].to_dict()


# ----------------------------------------------------------------------------- decision log
def test_each_decision_is_one_whole_line_without_user_content(tmp_path, features):
    q, meta = features
    r = logged_router(tmp_path / "log")
    ds = r.decide(q, [r.options()] * len(q), meta=meta)
    r.log.close()
    recs = list(read_records(log_files(tmp_path / "log", DECISIONS)))
    assert [x["id"] for x in recs] == [d.id for d in ds] and len({d.id for d in ds}) == len(ds)
    rec = recs[0]
    bundle, space = r.log_ids()
    assert rec["bundle"] == bundle and rec["space"] == space and rec["chosen"] == ds[0].model
    assert rec["pool"] == [c.name for c in ds[0].candidates]
    assert rec["candidates"][ds[0].model][2] == pytest.approx(ds[0].candidates[0].mu_tilde, abs=1e-5)
    assert "content" not in rec and "What" not in json.dumps(recs)  # no question unless asked
    assert ds[0].to_dict()["decision_id"] == ds[0].id


def test_log_content_is_opt_in(tmp_path):
    r = logged_router(tmp_path / "log", content=True)
    r.route(*QUERIES[0])
    r.log.close()
    rec = next(read_records(log_files(tmp_path / "log", DECISIONS)))
    assert rec["content"]["question"] == QUERIES[0][1] and len(rec["content"]["image_sizes"]) == 1


def test_the_log_rotates_by_size(tmp_path, features):
    q, meta = features
    r = logged_router(tmp_path / "log", max_file_mb=2e-3)  # ~2 kB: a few records per file
    for i in range(0, len(q), 4):
        r.decide(q[i : i + 4], [r.options()] * 4)
        r.log.flush()
    r.log.close()
    files = log_files(tmp_path / "log", DECISIONS)
    assert len(files) > 2
    assert sum(1 for _ in read_records(files)) == len(q) == r.log.written
    # retention: with keep_files 2, only the newest two files stay, the latest records among them
    kept = logged_router(tmp_path / "kept", max_file_mb=2e-3, keep_files=2)
    ids = []
    for i in range(0, len(q), 4):
        ids += [d.id for d in kept.decide(q[i : i + 4], [kept.options()] * 4)]
        kept.log.flush()
    kept.log.close()
    files = log_files(tmp_path / "kept", DECISIONS)
    assert len(files) == 2 and [x["id"] for x in read_records(files)] == ids[-len(list(read_records(files))) :]


def test_a_full_disk_drops_records_and_routing_goes_on(tmp_path, features, monkeypatch):
    q, meta = features
    r = logged_router(tmp_path / "log")
    monkeypatch.setattr(DecisionLog, "_open", lambda self: open("/dev/full", "ab", buffering=0))
    ds = r.decide(q, [r.options()] * len(q), meta=meta)
    assert all(d.model for d in ds)
    r.log.close()
    assert r.log.dropped == len(q) and r.log.written == 0


def test_a_full_queue_drops_instead_of_blocking(tmp_path):
    log = DecisionLog(tmp_path / "log", queue_size=1)
    gate = threading.Event()
    log._write = lambda payload, n: gate.wait(5)  # a stalled disk
    for i in range(50):
        log.submit({"id": str(i), "time": 0})
    assert log.dropped >= 48
    gate.set()
    log.close()


def test_a_log_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot be used as a log folder"):
        DecisionLog(tmp_path / "file" / "log")


# ----------------------------------------------------------------------------- feedback
@pytest.fixture
def decided(tmp_path, features):
    q, meta = features
    r = logged_router(tmp_path / "log")
    store = FeedbackStore(tmp_path / "log", log=r.log)
    ds = r.decide(q, [r.options(lam=0.0)] * len(q), meta=meta)
    return r, store, ds


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"score": 1},
        {"id": "x"},
        {"id": 3, "score": 1},
        {"id": "x", "score": "1"},
        {"id": "x", "score": True},
        {"id": "x", "score": float("nan")},
        {"id": "x", "score": 1.5},
        {"id": "x", "score": -0.1},
        {"id": "x", "score": 1, "cost": -1},
        {"id": "x", "score": 1, "cost": float("inf")},
        {"id": "x", "score": 1, "model": 7},
        {"id": "x", "score": 1, "extra": 1},
        {"id": "", "score": 1},
    ],
)
def test_bad_feedback_is_refused_with_one_line(bad):
    with pytest.raises(InputError) as e:
        parse_feedback(bad)
    assert "\n" not in str(e.value)


def test_feedback_is_idempotent_per_decision_and_model(decided, tmp_path):
    r, store, ds = decided
    d = ds[0]
    assert store.add([parse_feedback({"id": d.id, "score": 1.0})]) == ["recorded"]
    assert store.add([parse_feedback({"id": d.id, "score": 1.0})]) == ["duplicate"]
    with pytest.raises(FeedbackConflict):
        store.add([parse_feedback({"id": d.id, "score": 0.0})])
    other = d.candidates[-1].name
    assert store.add([parse_feedback({"id": d.id, "score": 0.0, "model": other})]) == ["recorded"]
    with pytest.raises(UnknownDecision):
        store.add([parse_feedback({"id": "0" * 32, "score": 1.0})])
    with pytest.raises(InputError, match="not a candidate"):
        store.add([parse_feedback({"id": d.id, "score": 1.0, "model": "no-such-model"})])
    # all or nothing: a batch with one unknown id records none of its items
    with pytest.raises(UnknownDecision):
        store.add([parse_feedback({"id": ds[1].id, "score": 1.0}), parse_feedback({"id": "nope", "score": 1.0})])
    lines = [x for x in read_records(log_files(tmp_path / "log", FEEDBACK))]
    assert [(x["id"], x["model"]) for x in lines] == [(d.id, d.model), (d.id, other)]
    # another store (another process) on the same folder sees what was recorded
    r.log.flush()
    assert FeedbackStore(tmp_path / "log").add([parse_feedback({"id": d.id, "score": 1.0})]) == ["duplicate"]


def test_feedback_outside_the_window_is_refused(decided, tmp_path):
    r, _, ds = decided
    r.log.close()
    late = FeedbackStore(tmp_path / "log", window_h=1.0)
    item = parse_feedback({"id": ds[0].id, "score": 1.0})
    late.check(item)
    with pytest.raises(UnknownDecision, match="window"):
        late.check(item, now=ds and 10**10)
    # a store opened later does not even read decision files last written before its window
    import os

    for path in log_files(tmp_path / "log", DECISIONS):
        os.utime(path, (0, 0))
    with pytest.raises(UnknownDecision):
        FeedbackStore(tmp_path / "log", window_h=1.0).check(item)


def test_concurrent_feedback_records_each_outcome_once(decided, tmp_path):
    r, store, ds = decided
    r.log.close()
    stores = [store, FeedbackStore(tmp_path / "log"), FeedbackStore(tmp_path / "log")]
    results, errors = [], []

    def send(k):
        for d in ds[:8]:
            try:
                results.append(stores[k % 3].add([parse_feedback({"id": d.id, "score": 1.0})])[0])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results.count("recorded") == 8 and results.count("duplicate") == 8 * 8
    lines = list(read_records(log_files(tmp_path / "log", FEEDBACK)))
    assert sorted(x["id"] for x in lines) == sorted(d.id for d in ds[:8])


# ----------------------------------------------------------------------------- refresh
def _feedback_for_all(store, ds, score_of):
    return store.add([parse_feedback({"id": d.id, "score": score_of(d)}) for d in ds])


def test_refresh_learns_from_feedback_into_a_new_closed_bundle(decided, tmp_path):
    r, store, ds = decided
    r.log.close()
    chosen = ds[0].model
    _feedback_for_all(store, ds, lambda d: 0.0 if d.model == chosen else 1.0)
    before = _digest(DEFAULT_BUNDLE)
    rep = refresh(DEFAULT_BUNDLE, tmp_path / "log", tmp_path / "b2")
    assert _digest(DEFAULT_BUNDLE) == before  # B is never modified
    r2 = Router.load(tmp_path / "b2")  # every file hashed and verified
    assert len(r2.memory()) == len(r.memory()) + len(ds)
    assert rep["records_used"] == len(ds) and rep["memory_rows_added"] == len(ds)
    assert rep["memory_reading"] is None  # fewer outcomes than MIN_OUTCOMES: the reading stays
    assert rep["models"][chosen]["observed"] == 0.0 and chosen in rep["calibration_drift"]
    assert rep["verdict"].startswith(("retrain", "refresh is enough"))
    worst = max(rep["calibration_drift"], key=lambda m: abs(rep["calibration_drift"][m]))
    n = rep["models"][worst]["labels"]  # the verdict says how many outcomes its largest drift rests on
    assert "retrain" in rep["verdict"] or f"for {worst} (from {n} outcome" in rep["verdict"], rep["verdict"]
    assert (tmp_path / "b2.report.json").is_file() and (tmp_path / "b2.report.png").read_bytes()[:4] == b"\x89PNG"
    p_old = next(p for p in r.bundle.pool if p.name == chosen)
    p_new = next(p for p in r2.bundle.pool if p.name == chosen)
    assert p_new.prior < p_old.prior  # its overall score moved down
    # the model that failed every logged query now loses those queries
    meta: list = []
    q = r.features(QUERIES, meta=meta)
    again = r2.decide(q, [r2.options(lam=0.0)] * len(q), meta=meta)
    assert all(d.model != chosen for d in again)
    # the same log again: nothing new
    with pytest.raises(InputError, match="no new feedback"):
        refresh(tmp_path / "b2", tmp_path / "log", tmp_path / "b3")
    assert not (tmp_path / "b3").exists()


def test_refresh_reads_the_memory_again_once_the_feedback_is_enough(tmp_path, features, runner):
    """With MIN_OUTCOMES logged outcomes, refresh chooses the memory's k, kappa and tau again on the feedback rows
    (runtime/memory_reading.py): the manifest carries the new reading, the report both, and routing works."""
    from lr_onnx.runtime.memory_reading import MIN_OUTCOMES

    q, meta = features
    reps = -(-MIN_OUTCOMES // len(q))
    r = logged_router(tmp_path / "log")
    store = FeedbackStore(tmp_path / "log", log=r.log)
    ds = r.decide(np.tile(q, (reps, 1)), [r.options(lam=0.0)] * (reps * len(q)), meta=meta * reps)
    r.log.close()
    _feedback_for_all(store, ds, lambda d: 1.0 if d.model.startswith("gpt") else 0.0)
    res = runner.invoke(
        main,
        ["refresh", "--bundle", str(DEFAULT_BUNDLE), "--log", str(tmp_path / "log"), "--out", str(tmp_path / "b2")],
    )
    assert res.exit_code == 0, res.output
    rd = json.loads((tmp_path / "b2.report.json").read_text())["memory_reading"]
    assert f"memory read from {rd['after']['k']} neighbours" in res.output
    assert rd is not None and rd["rows"] == len(ds) and rd["brier_best"] <= rd["brier_before"]
    r2 = Router.load(tmp_path / "b2")
    assert r2.memory().settings.to_dict() == rd["after"]
    assert r2.bundle.manifest.refreshed["feedback_rows"] == len(ds)
    assert rd["after"]["k"] <= r.memory_breadth() == r2.memory_breadth()  # memory.onnx is unchanged
    res = runner.invoke(main, ["info", "--bundle", str(tmp_path / "b2")])
    assert res.exit_code == 0 and f"{len(ds)} memory rows from feedback" in res.output, res.output
    assert f"estimates from the {rd['after']['k']} nearest" in res.output
    again = r2.decide(q, [r2.options(lam=0.0)] * len(q), meta=meta)
    assert len(again) == len(q) and all(d.model in r2.names for d in again)


def test_a_model_added_and_explored_gets_a_real_profile(tmp_path, features):
    """`models add` from a few labels, exploration routes some traffic to it, feedback and refresh make its profile
    carry what the stream observed."""
    from lr_onnx.runtime.manage import add_model

    r = Router.load()
    labelled = QUERIES * 6
    add_model(
        r,
        tmp_path / "b1",
        "newbie",
        labelled,
        np.full(24, 0.9),
        np.full(24, 1e-4),
        np.full(24, np.nan),
        np.full(24, np.nan),
    )
    r1 = Router.load(tmp_path / "b1")
    r1.start_log(tmp_path / "log")
    store = FeedbackStore(tmp_path / "log", log=r1.log)
    r1.seed(3)
    q, meta = features
    ds = [d for _ in range(16) for d in r1.decide(q, [r1.options(lam=0.0, explore="epsilon:1")] * len(q), meta=meta)]
    r1.log.close()
    newbie = [d for d in ds if d.model == "newbie"]
    assert newbie and all(d.propensity < 1 for d in newbie)
    _feedback_for_all(store, ds, lambda d: 0.1 if d.model == "newbie" else 0.5)
    rep = refresh(tmp_path / "b1", tmp_path / "log", tmp_path / "b2")
    before = next(p for p in r1.bundle.pool if p.name == "newbie").raw_profile
    after = next(p for p in Router.load(tmp_path / "b2").bundle.pool if p.name == "newbie").raw_profile
    assert rep["models"]["newbie"]["labels"] == len(newbie)
    assert after[-1] > before[-1]  # more evidence
    n = len(newbie)  # 24 labels at 0.9, then n explored outcomes at 0.1 (the IPS weights are equal here)
    assert after[0] == pytest.approx((24 * 0.9 + n * 0.1) / (24 + n), abs=1e-6)
    # its local prior (the line its estimate falls back to) is fitted again on its labels and its feedback
    lp = rep["local_priors"]["newbie"]
    assert lp["before"]["intercept"] == pytest.approx(0.9, abs=1e-6) and lp["before"]["slope"] == 0.0
    mean_y = (24 * 0.9 + n * 0.1) / (24 + n)
    assert abs(lp["after"]["intercept"] - mean_y) < 0.1 or lp["after"]["slope"] != 0.0
    k1, k2 = r1.names.index("newbie"), Router.load(tmp_path / "b2").names.index("newbie")
    mu1 = r1.score_features(q, np.ones((len(q), len(r1.names)), bool))["mu_tilde"][:, k1]
    r2 = Router.load(tmp_path / "b2")
    mu2 = r2.score_features(q, np.ones((len(q), len(r2.names)), bool))["mu_tilde"][:, k2]
    assert mu2.mean() < mu1.mean() - 0.1  # the 24 labels said 0.9; the stream says 0.1


def test_records_of_another_bundle_space_are_skipped(decided, tmp_path):
    r, store, ds = decided
    r.log.close()
    _feedback_for_all(store, ds[:2], lambda d: 1.0)
    for path in log_files(tmp_path / "log", DECISIONS):
        text = path.read_text().replace(r.log_ids()[1], "0" * 16)
        path.write_text(text)
    with pytest.raises(InputError, match="other_bundle_space"):
        refresh(DEFAULT_BUNDLE, tmp_path / "log", tmp_path / "b2")


# ----------------------------------------------------------------------------- CLI
def test_cli_route_log_feedback_refresh(tmp_path, runner):
    log = tmp_path / "log"
    res = runner.invoke(
        main, ["route", str(QUERIES[0][0][0]), QUERIES[0][1], "--log", str(log), "--json", "--explore", "epsilon:0.5"]
    )
    assert res.exit_code == 0, res.output
    decision_id = json.loads(res.output)["decision_id"]
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps({"id": decision_id, "score": 1}) + "\n")
    res = runner.invoke(main, ["feedback", str(log), str(fb)])
    assert res.exit_code == 0 and "recorded 1" in res.output
    fb.write_text(json.dumps({"id": decision_id, "score": 1}) + "\n" + '{"id": "x", "score": NaN}\n')
    res = runner.invoke(main, ["feedback", str(log), str(fb)])
    assert res.exit_code == 1 and "fb.jsonl:2" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        main, ["refresh", "--bundle", str(DEFAULT_BUNDLE), "--log", str(log), "--out", str(tmp_path / "b2")]
    )
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output and Router.load(tmp_path / "b2").bundle.manifest.refreshed["records"] == 1
    if "calibration drift" in res.output:  # one outcome: whatever drift it shows is within chance, and said so
        assert "(from 1 outcome, within what that many can show by chance)" in res.output, res.output
    res = runner.invoke(main, ["route", "What is 2 + 2?", "--log-content"])
    assert res.exit_code == 2 and "--log-content needs --log" in res.output


# ----------------------------------------------------------------------------- gateway
def test_gateway_logs_decisions_and_takes_feedback(tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("starlette")
    from lr_onnx.serve.app import create_app
    from lr_onnx.serve.config import Logging, Routing, ServeConfig
    from lr_onnx.serve.standin import BackgroundServer

    with BackgroundServer(create_app(Router.load(), ServeConfig())) as off, httpx.Client(base_url=off.url) as c:
        res = c.post("/v1/feedback", json={"id": "x", "score": 1})
        assert res.status_code == 404 and res.json()["error"]["code"] == "feedback_disabled"
        assert "x-lr-onnx-request-id" not in c.post("/v1/route", json={"question": "What is 2 + 2?"}).headers
    config = ServeConfig(logging=Logging(dir=str(tmp_path / "log")), routing=Routing(explore="epsilon:0.1"))
    with (
        BackgroundServer(create_app(Router.load(), config, api_key="k")) as s,
        httpx.Client(base_url=s.url, headers={"authorization": "Bearer k"}) as c,
    ):
        res = c.post("/v1/route", json={"question": "What is 2 + 2?"})
        assert res.status_code == 200
        rid = res.headers["x-lr-onnx-request-id"]
        assert res.json()["decision_id"] == rid
        ok = c.post("/v1/feedback", json={"id": rid, "score": 0.5, "cost": 0.001})
        assert ok.status_code == 200 and ok.json() == {"id": rid, "status": "recorded"}
        assert c.post("/v1/feedback", json={"id": rid, "score": 0.5, "cost": 0.001}).json()["status"] == "duplicate"
        for body, status, code in (
            ({"id": rid, "score": 0.9, "cost": 0.001}, 409, "feedback_conflict"),
            ({"id": "f" * 32, "score": 1}, 404, "unknown_decision"),
            ({"id": rid, "score": "high"}, 400, "invalid_value"),
            ({"id": rid, "score": 2}, 400, "invalid_value"),
            ([rid], 400, "invalid_value"),
        ):
            res = c.post("/v1/feedback", json=body)
            assert res.status_code == status and res.json()["error"]["code"] == code, res.text
        res = c.post("/v1/feedback", content=b'{"id": "a", "score": NaN}', headers={"content-type": "application/json"})
        assert res.status_code == 400
        assert httpx.post(f"{s.url}/v1/feedback", json={"id": rid, "score": 1}).status_code == 401  # behind the key
        metrics = c.get("/metrics").text
        assert "lr_onnx_decision_log_written_total" in metrics and "lr_onnx_decision_log_dropped_total 0.0" in metrics
        assert 'lr_onnx_feedback_total{status="recorded"} 1.0' in metrics
    fb = list(read_records(log_files(tmp_path / "log", FEEDBACK)))
    assert [(x["id"], x["score"], x["cost"]) for x in fb] == [(rid, 0.5, 0.001)]


def test_serve_config_checks_logging_and_exploration(tmp_path):
    from lr_onnx.serve.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\ndir = "/tmp/x"\ncontent = true\nkeep_files = 5\n[routing]\nexplore = "thompson:0.5"\n')
    c = load_config(cfg)
    assert c.logging.dir == "/tmp/x" and c.logging.content and c.routing.explore == "thompson:0.5"
    assert c.logging.keep_files == 5
    for bad in (
        '[routing]\nexplore = "sometimes"\n',
        '[logging]\ncontent = "yes"\n',
        '[logging]\nfolder = "x"\n',
        "[logging]\nfeedback_window_h = -1\n",
        "[logging]\nkeep_files = -2\n",
        "[logging]\nkeep_files = 1.5\n",
    ):
        cfg.write_text(bad)
        with pytest.raises(InputError) as e:
            load_config(cfg)
        assert "\n" not in str(e.value)
