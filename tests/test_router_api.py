"""The Router API against the committed default bundle: routing, options, bad inputs, threads, BLAS (issue: runtime)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from lr_onnx.cli import main
from lr_onnx.runtime.errors import InputError
from lr_onnx.runtime.router import Router

EXAMPLES = REPO / "assets" / "examples"


@pytest.fixture(scope="module")
def router():
    return Router.load()


def test_default_bundle_routes_real_examples(router):
    d = router.route([EXAMPLES / "receipt.jpg"], "What is the total amount on this receipt?")
    assert d.model in router.names and len(d.candidates) == len(router.names)
    assert d.candidates[0].name == d.model
    utils = [c.utility for c in d.candidates]
    assert utils == sorted(utils, reverse=True)
    for c in d.candidates:
        assert 0 <= c.mu_tilde <= 1 and c.sigma > 0 and c.expected_cost > 0


def test_text_only_query_and_image_change_the_scores(router):
    # a chart (near enough to the memory for its neighbours to speak; a coffee cup is so far from it that every
    # model scores its global mean with or without the picture)
    t = router.score(None, "What is the highest value in this chart?")
    i = router.score(EXAMPLES / "chart.png", "What is the highest value in this chart?")
    assert set(t) == set(i) == set(router.names)
    assert any(abs(t[n]["mu_tilde"] - i[n]["mu_tilde"]) > 1e-3 for n in t)


def test_every_input_form_gives_the_same_decision(router):
    path = EXAMPLES / "coffee.jpg"
    arr = np.asarray(Image.open(path).convert("RGB"))
    forms = [path, str(path), path.read_bytes(), Image.open(path), arr]
    scores = [router.score(f, "What is this?") for f in forms]
    for s in scores[1:]:
        for n in s:
            assert s[n]["mu_tilde"] == pytest.approx(scores[0][n]["mu_tilde"], abs=1e-6)


def test_masking_lambda_and_budget(router):
    names = router.names
    d = router.route(None, "What is 12 * 13?", models=names[:2])
    assert d.model in names[:2] and {c.name for c in d.candidates} == set(names[:2])
    d = router.route(None, "What is 12 * 13?", exclude=[d.model])
    assert d.model not in d.excluded and len(d.excluded) == 1
    cheap = router.route(None, "What is 12 * 13?", lam=1e4)
    assert cheap.model == min(cheap.candidates, key=lambda c: c.expected_cost).name  # THIS query's cheapest
    budget = float(np.sort(router.expected_cost)[1])
    d = router.route(None, "What is 12 * 13?", max_cost=budget)
    assert router.expected_cost[names.index(d.model)] <= budget


def test_prepare_then_encode_is_features(router):
    """The server decodes on arrival (`prepare`) and encodes later in a batch (`encode`): the same features, with
    images of several queries (one with two, one with none) pooled back to their own query."""
    qs = [
        ([EXAMPLES / "page.png", EXAMPLES / "text.png"], "What is the title?"),
        ([], "What is 3 + 4?"),
        ([EXAMPLES / "chart.png"], "Which bar is highest?"),
    ]
    meta: list = []
    whole = router.features(qs, meta=meta)
    prepared = [router.prepare(im, q) for im, q in qs]
    np.testing.assert_array_equal(router.encode(prepared), whole)
    assert [p.meta for p in prepared] == meta and [len(p.tensors) for p in prepared] == [2, 0, 1]
    alone = router.encode([prepared[2]])[0]  # image features of row 2 belong to row 2, not to row 0
    np.testing.assert_allclose(whole[2, 384:1664], alone[384:1664], atol=1e-5)
    assert not np.allclose(whole[0, 384:1664], alone[384:1664], atol=1e-3)
    assert router.route_prepared([], router.options()) == [] and router.encode([]).shape == (0, whole.shape[1])


def test_decide_each_keeps_a_failing_row_to_itself(router):
    """One request whose budget no model fits, batched with others: only it gets the error."""
    from lr_onnx.runtime.errors import OptionError

    qs = [([], "What is 3 + 4?"), ([EXAMPLES / "chart.png"], "Which bar is highest?"), ([], "Name a prime.")]
    meta: list = []
    q = router.features(qs, meta=meta)
    opts = [router.options(), router.options(max_cost=1e-12), router.options(lam="quality")]
    out = router.decide_each(q, opts, meta=meta)
    assert isinstance(out[1], OptionError) and "max_cost" in str(out[1])
    for i in (0, 2):
        assert out[i] == router.decide(q[i : i + 1], [opts[i]], meta=[meta[i]])[0]
    assert router.decide_each(q, [router.options()] * 3, meta=meta) == router.decide(
        q, [router.options()] * 3, meta=meta
    )


def test_route_many_matches_single_routes(router):
    qs = [
        ([EXAMPLES / "chart.png"], "Which category has the highest bar?"),
        ([], "What is 3 + 4?"),
        ([EXAMPLES / "page.png", EXAMPLES / "text.png"], "What is the title?"),
    ]
    many = router.route_many(qs, batch_size=2)
    for (im, q), d in zip(qs, many):
        one = router.route(im, q)
        assert d.model == one.model
        # the int8 text encoder quantises activations per batch, so batch-mates move scores by ~1e-4
        assert d.candidates[0].mu_tilde == pytest.approx(one.candidates[0].mu_tilde, abs=2e-3)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"models": ["nope"]}, "unknown model"),
        ({"exclude": "ALL"}, "every model is excluded"),
        ({"lam": -1.0}, "lambda must be"),
        ({"lam": float("nan")}, "lambda must be"),
        ({"max_cost": 1e-12}, "no model's expected cost fits"),
    ],
)
def test_bad_routing_options(router, kwargs, pattern):
    if kwargs.get("exclude") == "ALL":
        kwargs = {"exclude": router.names}
    with pytest.raises(InputError, match=pattern):
        router.route(None, "hello?", **kwargs)


def _bad_files(tmp):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    jpg = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(jpg, "JPEG")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "trunc.png").write_bytes(png.getvalue()[:60])
    (tmp / "trunc.jpg").write_bytes(jpg.getvalue()[:200])
    (tmp / "notes.png").write_text("this is not an image")
    Image.new("1", (12000, 8000)).save(tmp / "bomb.png")
    (tmp / "dir.png").mkdir()
    return tmp


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("missing.png", "no such image file"),
        ("dir.png", "is a directory"),
        ("empty.png", "empty file"),
        ("trunc.png", "not a readable image|truncated"),
        ("trunc.jpg", "truncated|not a readable"),
        ("notes.png", "not a readable image"),
        ("bomb.png", "exceeds the 80,000,000-pixel limit"),
    ],
)
def test_bad_images_are_one_line_errors(router, runner, tmp_path, name, pattern):
    _bad_files(tmp_path)
    with pytest.raises(InputError, match=pattern):
        router.route([tmp_path / name], "What is this?")
    res = runner.invoke(main, ["route", str(tmp_path / name), "What is this?"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("Error: ")


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "s3://bucket/cat.png"])
def test_an_image_url_is_refused_with_what_to_do_never_fetched(router, runner, url):
    with pytest.raises(InputError, match="a URL; lr-onnx never downloads"):
        router.route([url], "What is this?")
    res = runner.invoke(main, ["route", url, "What is this?"])
    assert (
        res.exit_code == 1
        and res.output.strip() == f"Error: {url}: a URL; lr-onnx never downloads, so save the image and give its path"
    )


def test_a_binary_file_object_routes_as_its_path_and_a_non_finite_array_is_refused(router, tmp_path):
    """An upload or `open(path, "rb")` is an image like its bytes (it was refused as 'got BytesIO'); a text-mode file
    is refused with what to do. A float array holding NaN or infinity is a broken pipeline: it was silently routed as
    a black (or white) picture."""
    path = EXAMPLES / "chart.png"
    want = router.route([path], "What is the largest value?").candidates
    with open(path, "rb") as fh:
        got = router.route([fh], "What is the largest value?").candidates
    assert [(c.name, c.mu_tilde) for c in got] == [(c.name, c.mu_tilde) for c in want]
    buf = io.BytesIO(path.read_bytes())
    assert (
        router.route(buf, "What is the largest value?").model == router.route(path, "What is the largest value?").model
    )
    with open(path, encoding="latin-1") as fh, pytest.raises(InputError, match="open it in binary mode"):
        router.route([fh], "What is this?")
    with pytest.raises(InputError, match="empty bytes"):
        router.route([io.BytesIO(b"")], "What is this?")
    for bad in (np.nan, np.inf):
        a = np.zeros((20, 30, 3), np.float32)
        a[3, 4, 1] = bad
        with pytest.raises(InputError, match="1 non-finite values"):
            router.route([a], "What is this?")


def test_odd_but_valid_images(router, tmp_path):
    Image.new("RGB", (1, 1), "blue").save(tmp_path / "one.png")
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=80)
    frames = [Image.new("P", (32, 32), i) for i in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (40, 30)).save(tmp_path / "cmyk.jpg")
    Image.new("I;16", (40, 30)).save(tmp_path / "sixteen.png")
    for f in ("one.png", "big.jpg", "anim.gif", "rgba.png", "cmyk.jpg", "sixteen.png"):
        assert router.route([tmp_path / f], "What is this?").model in router.names


def test_questions_empty_and_huge(router, runner):
    with pytest.raises(InputError, match="question is empty"):
        router.route(None, "   ")
    with pytest.warns(UserWarning, match="truncated"):
        assert router.route(None, "word " * 20_000).model in router.names
    res = runner.invoke(main, ["route", "word " * 20_000])
    assert res.exit_code == 0 and "warning: question of" in res.output


def test_lambda_presets_from_the_manifest(router, runner):
    """Named operating points calibrated at export: cheaper presets never pick a costlier model on average."""
    presets = router.bundle.manifest.lambdas.presets
    assert {"quality", "balanced", "budget_50", "budget_25"} <= set(presets)
    assert router.resolve_lambda("quality") == 0.0 and router.resolve_lambda(None) == router.default_lambda
    assert router.resolve_lambda(0.3) == 0.3
    qs = [
        (None, "What is 12 * 13?"),
        ([EXAMPLES / "receipt.jpg"], "What is the total?"),
        ([EXAMPLES / "coffee.jpg"], "What is in the cup?"),
    ]
    cost = {
        name: np.mean([router.expected_cost[router.names.index(d.model)] for d in router.route_many(qs, lam=name)])
        for name in ("quality", "budget_25")
    }
    assert cost["budget_25"] <= cost["quality"]
    with pytest.raises(InputError, match="unknown lambda preset 'cheapest'; presets: quality"):
        router.resolve_lambda("cheapest")
    res = runner.invoke(main, ["route", "What is 2 + 2?", "--lambda", "budget_25", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["lambda"] == pytest.approx(presets["budget_25"].lam)
    res = runner.invoke(main, ["route", "What is 2 + 2?", "--lambda", "cheapest"])
    assert res.exit_code == 2 and "unknown lambda preset" in res.output and "Traceback" not in res.output
    assert "--lambda budget_25:" in runner.invoke(main, ["info"]).output


def test_one_router_serves_many_threads():
    """Lazy sessions are created once and shared; concurrent routes agree with a sequential one."""
    import threading

    r = Router.load()
    qs = [([EXAMPLES / "coffee.jpg"], "What does this image show?"), ([], "What is 6 * 7?")] * 4
    expected = [r2.model for r2 in Router.load().route_many(qs, batch_size=1)]
    got = [None] * len(qs)
    barrier = threading.Barrier(len(qs))

    def work(i):
        barrier.wait()
        got[i] = r.route(*qs[i]).model

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(qs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert r.sessions.loaded == [
        "image_encoder",
        "memory",
        "memory:small",
        "router",
        "router:small",
        "text_encoder",
    ]  # B=1: the small twins


_BLAS_PROBE = """
import os, sys
def tasks():
    return set(os.listdir('/proc/self/task'))
before = tasks()
import numpy
blas = tasks() - before  # OpenBLAS starts its worker threads when numpy loads
if not blas:
    print('none'); sys.exit()
def cpu():
    out = 0.0
    for t in blas:
        f = open(f'/proc/self/task/{t}/stat').read().rsplit(')', 1)[1].split()
        out = max(out, (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))
    return out
from lr_onnx import Router
r = Router.load()
ex = sys.argv[1]
r.route([ex], 'warm-up')  # loading (not routing) may use BLAS once
t0 = cpu()
qs = [([ex] if i % 2 == 0 else [], f'What is shown here? #{i}') for i in range(128)]
r.route_many(qs, batch_size=32, explain=True)
print(cpu() - t0)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_routing_never_wakes_numpy_blas_threads():
    """The routing path does no BLAS matmul (coverage and explain use a plain loop): an OpenBLAS worker woken by a
    small matmul spins afterwards and took a core from ONNX Runtime (route_many -13%, the server -10%)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    res = subprocess.run(
        [sys.executable, "-c", _BLAS_PROBE, str(EXAMPLES / "chart.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    if res.stdout.strip() == "none":
        pytest.skip("numpy's BLAS started no worker thread here")
    assert float(res.stdout) < 0.05, f"a BLAS worker thread used {res.stdout.strip()} CPU-seconds"


def test_centroid_similarity_is_the_cosine_matmul():
    from lr_onnx.runtime.profiles import centroid_similarity, slice_embedding

    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(5, 1667)).astype(np.float32), rng.normal(size=(7, 1664))
    np.testing.assert_allclose(centroid_similarity(q, c), slice_embedding(q) @ c.T, rtol=1e-12, atol=1e-12)


def test_prefetched_keeps_order_raises_in_turn_and_leaves_no_thread_behind():
    import threading

    from lr_onnx.runtime.prefetch import prefetched

    assert list(prefetched(iter(range(5)), lambda x: x * 10)) == [(i, i * 10) for i in range(5)]
    assert list(prefetched([7], lambda x: -x)) == [(7, -7)] and list(prefetched([], str)) == []

    def boom(x):
        if x == 3:
            raise ValueError("three")
        return x

    got = []
    with pytest.raises(ValueError, match="three"):
        for x, _ in prefetched(iter(range(6)), boom):
            got.append(x)
    assert got == [0, 1, 2]  # the error comes when its item's turn comes, not earlier

    before = {t.name for t in threading.enumerate()}
    for _x, _ in prefetched(iter(range(100)), str):
        break  # the caller stops early: the worker ends its step and goes, no thread is left behind
    assert "lr-onnx-prepare" not in {t.name for t in threading.enumerate()} - before
