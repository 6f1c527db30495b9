"""Hostile input never executes, escapes, corrupts or crashes (issue 14): one test per class of defect.

Every test here failed on the code before the hardening change; each names the class it covers.
"""

from __future__ import annotations

import fcntl
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, models_add_args, rec, write_native
from lr_onnx.cli import main
from lr_onnx.runtime import policy, preprocess
from lr_onnx.runtime.batch import route_batch
from lr_onnx.runtime.bundle import load_bundle
from lr_onnx.runtime.errors import BundleError, DataError, InputError, LrOnnxError, OptionError
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

EXAMPLES = REPO / "assets" / "examples"
LR_ONNX = [sys.executable, "-m", "lr_onnx.cli"]


@pytest.fixture(scope="module")
def router():
    return Router.load()


def linked_bundle(dst: Path, edit=None) -> Path:
    """A bundle copy whose big files are hard links (cheap) and whose manifest is a real copy, edited by `edit`."""
    dst.mkdir(parents=True)
    for f in DEFAULT_BUNDLE.iterdir():
        if f.name == "manifest.json":
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy(f, dst / f.name)
    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    if edit is not None:
        m = edit(m)
    (dst / "manifest.json").write_text(json.dumps(m) if not isinstance(m, str) else m)
    return dst


def png_bytes(size=(32, 24), fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt, **kw)
    return buf.getvalue()


def one_error_line(res) -> bool:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    return "Traceback" not in res.output and any(ln.startswith("Error: ") for ln in lines)


# ----------------------------------------------------------------------------- 1. decoders and bundle files
def test_postscript_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    """Pillow's plugin probing handed EPS bytes to `gs` whatever the file was called."""
    marker = tmp_path / "gs-ran"
    fake_gs = tmp_path / "bin" / "gs"
    fake_gs.parent.mkdir()
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_gs.parent}:{os.environ['PATH']}")
    eps = tmp_path / "x.png"
    eps.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )
    with pytest.raises(InputError, match="accepted format"):
        preprocess.open_image(eps)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["PPM", "PCX", "TGA", "ICO", "SGI", "IM", "ICNS"])
def test_formats_outside_the_allow_list_are_refused(fmt):
    try:
        data = png_bytes((32, 32), fmt)
    except (OSError, KeyError, ValueError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    with pytest.raises(InputError, match="accepted format"):
        preprocess.open_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_on_the_allow_list_decode(fmt):
    assert preprocess.open_image(png_bytes((32, 24), fmt)).size == (32, 24)


def test_a_pil_image_of_a_refused_format_is_refused():
    img = Image.open(io.BytesIO(png_bytes((8, 8), "PPM")))
    with pytest.raises(InputError, match="PPM images are not accepted"):
        preprocess.open_image(img)


@pytest.mark.parametrize("what", ["tokenizer", "graph", "empty", "absent"])
def test_a_bundle_must_list_every_file_it_opens(tmp_path, runner, what):
    """A graph or tokenizer missing from `files` loaded unchecked, and doctor said "sha256 verified"."""

    def edit(m):
        if what == "tokenizer":
            del m["files"]["tokenizer.json"]
        elif what == "graph":
            del m["files"]["router.onnx"]
        elif what == "empty":
            m["files"] = {}
        else:
            del m["files"]
        return m

    b = linked_bundle(tmp_path / "b", edit)
    with pytest.raises(BundleError, match="not listed|empty|missing 'files'"):
        Router.load(b)
    res = runner.invoke(main, ["doctor", "--bundle", str(b)])
    assert res.exit_code == 1 and "verified" not in res.output and one_error_line(res)


def test_a_bundle_that_failed_its_export_parity_check_says_so_when_loaded(tmp_path, runner):
    """`export` exits 1 on a parity failure but leaves the bundle (int8-full does, by design); loaded, it routed in
    silence. Its Router, `route` and `info` now say it failed and by how much; the default bundle says nothing."""
    import hashlib

    from lr_onnx.runtime.errors import LrOnnxWarning

    record = json.loads((DEFAULT_BUNDLE / "parity.json").read_text())
    record["passed"], record["held_out"]["decision_agreement_lambda0"] = False, 0.9
    data = json.dumps(record).encode()

    def edit(m):
        m["files"]["parity.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return m

    b = linked_bundle(tmp_path / "b", edit)
    (b / "parity.json").unlink()  # a hard link to the shipped file: replaced, never written through
    (b / "parity.json").write_bytes(data)
    want = "failed its export parity check: decision agreement 90.0% at lambda 0, the bar is 98%"
    with pytest.warns(LrOnnxWarning, match=want):
        Router.load(b)
    res = runner.invoke(main, ["route", "What is 2 + 2?", "--bundle", str(b)])
    assert res.exit_code == 0 and f"warning: {b}: this bundle {want}" in res.output, res.output
    assert want in runner.invoke(main, ["info", "--bundle", str(b)]).output
    with warnings.catch_warnings():
        warnings.simplefilter("error", LrOnnxWarning)
        Router.load()  # passed at export: no word


def test_parity_and_golden_are_listed_and_verified(tmp_path):
    m = load_bundle(DEFAULT_BUNDLE).manifest
    assert {"parity.json", "golden.json", "tokenizer.json", "router.onnx"} <= set(m.files)
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    (b / "golden.json").write_text((b / "golden.json").read_text().replace("0.", "0.9", 1))
    with pytest.raises(BundleError, match="golden.json fails its sha256"):
        Router.load(b)


@pytest.mark.parametrize("where", ["graph_abs", "graph_dotdot", "files_dotdot", "tokenizer", "symlink"])
def test_no_manifest_path_leaves_the_bundle_folder(tmp_path, where):
    outside = tmp_path / "secret.onnx"
    shutil.copy(DEFAULT_BUNDLE / "router.onnx", outside)
    digest = load_bundle(DEFAULT_BUNDLE).manifest.files["router.onnx"].sha256

    def edit(m):
        if where == "graph_abs":
            m["graphs"]["router"]["file"] = str(outside)
            m["files"][str(outside)] = {"sha256": digest}
        elif where == "graph_dotdot":
            m["graphs"]["router"]["file"] = "../secret.onnx"
            m["files"]["../secret.onnx"] = {"sha256": digest}
        elif where == "files_dotdot":
            m["files"]["../secret.onnx"] = {"sha256": digest}
        elif where == "tokenizer":
            m["preprocessing"]["text"]["tokenizer_file"] = "/etc/passwd"
        else:
            m["graphs"]["router"]["file"] = "link.onnx"
            m["files"]["link.onnx"] = {"sha256": digest}
        return m

    b = linked_bundle(tmp_path / "b", edit)
    if where == "symlink":
        (b / "link.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Router.load(b)


# ----------------------------------------------------------------------------- 2. numbers
@pytest.mark.parametrize("price", ["nan", "inf", "-inf", "1" * 400])
def test_models_add_refuses_non_finite_prices(runner, tmp_path, price):
    out = tmp_path / "b2"
    res = runner.invoke(
        main,
        models_add_args(
            DEFAULT_BUNDLE,
            out,
            "X",
            "--price-in",
            price,
            "--outcomes",
            str(tmp_path),
        ),
    )
    assert res.exit_code == 2 and "finite number" in res.output and not out.exists()


def test_a_non_finite_score_is_an_error_never_a_decision(router, monkeypatch):
    real = router.score_features.__func__

    def broken_run(sess, feeds):
        outs = sess.run(None, feeds)
        if "model_feat" in feeds:
            outs[0][:] = np.nan
            outs[3][:] = np.nan
        return outs

    monkeypatch.setattr("lr_onnx.runtime.router.run", broken_run)
    with pytest.raises(BundleError, match="non-finite mu"):
        real(router, router.features([([], "What is 2 + 2?")]), np.ones((1, len(router.names)), bool))
    with pytest.raises(LrOnnxError, match="NaN"):
        policy.choose(np.array([[np.nan, 0.5]]), np.zeros(2), np.ones((1, 2), bool), 0.0)


@pytest.mark.parametrize(
    "kw",
    [{"lam": 10**400}, {"max_cost": 10**400}, {"lam": float("nan")}, {"max_cost": np.float64("inf")}, {"lam": True}],
)
def test_api_refuses_huge_and_non_finite_numbers(router, kw):
    with pytest.raises(InputError, match="lambda|max_cost"):
        router.route([], "What is 2 + 2?", **kw)


def test_api_accepts_numpy_scalars(router):
    d = router.route([], "What is 2 + 2?", lam=np.float32(0.25), max_cost=np.int64(1))
    assert d.model in router.names and d.lam == 0.25


@pytest.mark.parametrize(
    "line,pattern",
    [
        (
            '{"id": "q9", "question": "x", "dataset": "d", "images": [], "outcomes": {"a": {"score": 1, "cost": 1'
            + "0" * 400
            + "}}}",
            "cost",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        (
            '{"id": "q9", "question": "\\ud800", "dataset": "d", "images": [], "outcomes": {"a": {"score": 1, "cost": 1}}}',
            "UTF-8",
        ),
        (
            '{"id": "q9", "question": "x", "dataset": "d", "images": [], "outcomes": {"a": {"score": 1, "cost": '
            + "9" * 5000
            + "}}}",
            "cost|malformed",
        ),
    ],
)
def test_hostile_data_files_are_one_line_data_errors(tmp_path, runner, line, pattern):
    d = write_native(tmp_path / "d", [rec(i) for i in range(3)], raw_lines=[line])
    with pytest.raises(DataError, match=pattern):
        from lr_onnx.export.data.format import load_dataset

        load_dataset(d)
    res = runner.invoke(main, ["data", "check", str(d)])
    assert res.exit_code == 1 and one_error_line(res)


# ----------------------------------------------------------------------------- 3. route-batch
def _decisions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # raises on any torn line


def test_route_batch_bad_records_cost_nothing_else(runner, tmp_path):
    """`"images": 5`, a lone surrogate, invalid UTF-8 and an oversized CSV field each sank the run or its batch."""
    good = [json.dumps({"id": f"g{i}", "question": f"What is {i} + 1?"}) for i in range(4)]
    lines = [
        good[0],
        json.dumps({"id": "b1", "question": "q", "images": 5}),
        good[1],
        '{"id": "b2", "question": "\\udc80 lone"}',
        good[2],
        b'{"id": "b3", "question": "\xff\xfe"}',
        good[3],
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out), "--batch-size", "64"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert sorted(d["id"] for d in _decisions(out)) == ["g0", "g1", "g2", "g3"]
    for lineno in (2, 4, 6):
        assert f"in.jsonl:{lineno}:" in res.output

    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,question\nc1,What is 1?\nc2," + "x" * 200_000 + "\nc3,What is 3?\n")
    out2 = tmp_path / "out2.jsonl"
    res = runner.invoke(main, ["route-batch", str(csv_in), "--out", str(out2)])
    assert res.exit_code == 1 and "in.csv:3:" in res.output and "field larger" in res.output
    assert sorted(d["id"] for d in _decisions(out2)) == ["c1", "c3"]


def test_route_batch_refuses_a_misspelt_images_field_and_keeps_the_users_own(runner, tmp_path):
    """`"image": "a.png"` (or an 'image' CSV column) was ignored: the query routed as text only without a word.
    A typo of 'images' or 'question' fails its record (the header, for a CSV); other fields stay the user's, even
    'question_id' (a near miss by letters, not a typo)."""
    inp = tmp_path / "in.jsonl"
    rows = [
        {"id": "typo", "question": "What is shown?", "image": "chart.png"},
        {"id": "case", "Question": "What is shown?"},
        {"id": "meta", "question": "What is 2 + 2?", "_id": 7, "question_id": 3, "question_type": "math", "label": 1},
        {"id": "typo2", "questoin": "What is shown?"},
    ]
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "in.jsonl:1: field 'image' is not read: did you mean 'images'?" in res.output
    assert "in.jsonl:2: field 'Question' is not read: did you mean 'question'?" in res.output
    assert "in.jsonl:4: field 'questoin' is not read: did you mean 'question'?" in res.output
    assert [d["id"] for d in _decisions(out)] == ["meta"]

    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,question,image\nc1,What is shown?,chart.png\n")
    res = runner.invoke(main, ["route-batch", str(csv_in), "--out", str(tmp_path / "c.jsonl")])
    assert res.exit_code != 0 and "CSV header: field 'image' is not read: did you mean 'images'?" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "c.jsonl").read_text()


def test_route_batch_ids_duplicates_falsy_and_bom(runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": 0, "question": "What is 0?"},
                {"id": "a", "question": "What is a?"},
                {"id": "a", "question": "Another question"},
                {"id": False, "question": "q"},
                {"id": "", "question": "q"},
                {"id": None, "question": "q"},
                {"question": "no id at all"},
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out)])
    assert res.exit_code == 1 and "duplicate id 'a' (first on line 2)" in res.output
    assert sorted(d["id"] for d in _decisions(out)) == ["0", "a", "line-7"]
    assert res.output.count("'id' must be a non-empty string or an integer") == 3

    csv_in = tmp_path / "bom.csv"
    csv_in.write_bytes("\ufeffid,question\nx1,What is 1?\nx2,What is 2?\n".encode("utf-8"))
    res = runner.invoke(main, ["route-batch", str(csv_in), "--out", str(tmp_path / "bom.jsonl")])
    assert res.exit_code == 0 and sorted(d["id"] for d in _decisions(tmp_path / "bom.jsonl")) == ["x1", "x2"]


def test_route_batch_out_is_not_the_input_and_is_locked(runner, tmp_path, router):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "question": "What is 1?"}) + "\n")
    before = inp.read_bytes()
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(inp)])
    assert res.exit_code == 1 and "OUT is the input" in res.output and inp.read_bytes() == before
    out = tmp_path / "out.jsonl"
    with open(out, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another route-batch is writing"):
            route_batch(router, inp, out)
    assert route_batch(router, inp, out)["routed"] == 1


def test_route_batch_cuts_a_torn_line_and_resumes(runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?"}) for i in range(5)) + "\n")
    out = tmp_path / "out.jsonl"
    assert runner.invoke(main, ["route-batch", str(inp), "--out", str(out)]).exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # a crash mid-write of the 4th decision
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out)])
    assert res.exit_code == 0 and "already done 3" in res.output
    assert sorted(d["id"] for d in _decisions(out)) == [f"q{i}" for i in range(5)]


def test_route_batch_write_failures_leave_whole_lines(tmp_path):
    """A write that fails mid-line (file size limit) is rolled back; a rerun completes; /dev/full is one line."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?"}) for i in range(6)) + "\n")
    out = tmp_path / "out.jsonl"
    limited = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000)); "
        "from lr_onnx.cli import main; sys.argv = ['lr-onnx'] + sys.argv[1:]; main()"
    )
    run = subprocess.run(
        [sys.executable, "-c", limited, "route-batch", str(inp), "--out", str(out), "--batch-size", "1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr and "write failed" in run.stderr
    done = _decisions(out)  # whole lines only
    assert 0 < len(done) < 6 and out.stat().st_size <= 5000
    rerun = subprocess.run(LR_ONNX + ["route-batch", str(inp), "--out", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0 and sorted(d["id"] for d in _decisions(out)) == [f"q{i}" for i in range(6)]
    for target, msg in (
        ("/dev/full", "regular file"),
        (str(tmp_path / "nope" / "o.jsonl"), "does not exist"),
        (str(tmp_path), ""),
    ):
        r = subprocess.run(LR_ONNX + ["route-batch", str(inp), "--out", target], capture_output=True, text=True)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr and msg in r.stderr


def test_route_batch_reads_stdin_and_never_hangs_on_a_fifo(tmp_path, router):
    data = "\n".join(json.dumps({"id": f"s{i}", "question": f"What is {i}?"}) for i in range(3)) + "\n"
    out = tmp_path / "out.jsonl"
    r = subprocess.run(LR_ONNX + ["route-batch", "-", "--out", str(out)], input=data, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(d["id"] for d in _decisions(out)) == ["s0", "s1", "s2"]
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="no writer"):
        route_batch(router, fifo, tmp_path / "f.jsonl", fifo_wait_s=0.2)


def test_route_batch_writes_each_batch_as_soon_as_a_slow_stream_completes_it(tmp_path):
    """Reading ahead (to decode the next batch while this one is encoded) happens off the main thread: a
    producer that writes slowly on standard input sees batch 1 in OUT before it sends batch 2."""
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        LR_ONNX + ["route-batch", "-", "--out", str(out), "--batch-size", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for i in range(2):
            proc.stdin.write((json.dumps({"id": f"s{i}", "question": f"What is {i}?"}) + "\n").encode())
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not (out.exists() and len(_decisions(out)) == 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(d["id"] for d in _decisions(out)) == ["s0", "s1"]  # while stdin is still open
        proc.stdin.write((json.dumps({"id": "s2", "question": "What is 2?"}) + "\n").encode())
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        assert sorted(d["id"] for d in _decisions(out)) == ["s0", "s1", "s2"]
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- 4. the error contract
def test_invalid_utf8_in_argv_is_one_line():
    r = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"lr_onnx.cli", b"route", b"What is \xff\xfe?"], capture_output=True
    )
    assert r.returncode == 1 and b"Traceback" not in r.stderr and b"Error: question is not valid UTF-8" in r.stderr


def test_unreadable_image_file(router, tmp_path, monkeypatch):
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes())

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preprocess, "open", denied, raising=False)
    with pytest.raises(InputError, match="cannot be read"):
        router.route([img], "What is this?")


def test_gif_cut_inside_its_second_frame(router):
    buf = io.BytesIO()
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    data = buf.getvalue()
    second = data.index(b"\x2c", data.index(b"\x2c") + 1)  # the second image descriptor
    d = router.route([data[: second + 5]], "What colour is this?")
    assert d.model in router.names  # frame 0 is intact: a decision, not IndexError/struct.error


@pytest.mark.parametrize("img", [np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0, 3), np.uint8), "zero-pil"])
def test_empty_images(router, img):
    if isinstance(img, str):
        img = Image.new("RGB", (0, 0))
    with pytest.raises(InputError, match="empty"):
        router.route([img], "What is this?")


@pytest.mark.parametrize(
    "manifest",
    [
        "[]",
        "null",
        '"a string"',
        "5",
        lambda m: {**m, "schema_version": 0},
        lambda m: {**m, "schema_version": -1},
        lambda m: {**m, "schema_version": True},
        lambda m: {k: v for k, v in m.items() if k != "pool"},
        lambda m: {k: v for k, v in m.items() if k != "preprocessing"},
        lambda m: {k: v for k, v in m.items() if k != "graphs"},
        lambda m: {**m, "files": {k: {"bytes": 1} for k in m["files"]}},
        lambda m: _deep(m, ("preprocessing", "image", "size"), 0),
        lambda m: _deep(m, ("preprocessing", "image", "resample"), "lanczos9"),
        lambda m: _deep(m, ("lambda", "default"), "1e400"),
        lambda m: {**m, "pool": [{**m["pool"][0], "expected_cost_usd": None}] + m["pool"][1:]},
    ],
)
def test_malformed_manifests_are_one_line(tmp_path, runner, manifest):
    b = linked_bundle(tmp_path / "b", (lambda m: manifest) if isinstance(manifest, str) else manifest)
    with pytest.raises(BundleError):
        Router.load(b)
    for cmd in (["info"], ["route", "What is 2 + 2?"]):
        res = runner.invoke(main, cmd + ["--bundle", str(b)])
        assert res.exit_code == 1 and one_error_line(res), res.output


def _deep(m, keys, value):
    m = json.loads(json.dumps(m))
    d = m
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return m


def _layout_a(root: Path) -> Path:
    (root / "data" / "matrices").mkdir(parents=True)
    (root / "data" / "registry").mkdir(parents=True)
    return root / "data" / "matrices"


@pytest.mark.parametrize("case", ["broken_zip", "pickled_array", "truncated_tgz", "mmr_not_utf8"])
def test_converter_inputs_that_are_broken_are_one_line(tmp_path, runner, case):
    src = tmp_path / "src"
    if case == "broken_zip":
        (_layout_a(src) / "Y.npz").write_bytes(b"PK\x03\x04 this is not a zip")
        cmd = ["data", "convert", "vl-routerbench", str(src), str(tmp_path / "out")]
    elif case == "pickled_array":
        mat = _layout_a(src)
        np.savez(mat / "Y.npz", Y=np.zeros((2, 2)))
        np.save(mat / "C.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        cmd = ["data", "convert", "vl-routerbench", str(src), str(tmp_path / "out")]
    elif case == "truncated_tgz":
        (tmp_path / "payload").mkdir()
        (tmp_path / "payload" / "big.bin").write_bytes(os.urandom(200_000))
        arch = tmp_path / "vlm_router_data.tar.gz"
        with tarfile.open(arch, "w:gz") as tf:
            tf.add(tmp_path / "payload", arcname="data")
        arch.write_bytes(arch.read_bytes()[:60_000])
        cmd = ["data", "convert", "vl-routerbench", str(arch), str(tmp_path / "out")]
    else:
        src.mkdir()
        (src / "MMR_Bench.csv").write_bytes(b"index,question\n1,caf\xe9 \xff\n")
        cmd = ["data", "convert", "mmr", str(src), str(tmp_path / "out")]
    res = runner.invoke(main, cmd)
    assert res.exit_code == 1 and one_error_line(res) and "Aborted" not in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_image_paths_leave_no_open_file(router):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            router.features([([EXAMPLES / "receipt.jpg", EXAMPLES / "chart.png"], "What is this?")])
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_models_add_and_remove_clean_up_on_failure(runner, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    outcomes = tmp_path / "new.jsonl"
    outcomes.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"n{i}",
                    "question": f"What is {i} * 2?",
                    "images": [],
                    "outcomes": {"NewVLM": {"score": i % 2, "cost": 1e-4}},
                }
            )
            for i in range(30)
        )
        + "\n"
    )
    out = tmp_path / "missing" / "b2"
    for cmd in (
        models_add_args(
            DEFAULT_BUNDLE,
            out,
            "NewVLM",
            "--outcomes",
            str(outcomes),
        ),
        [
            "models",
            "remove",
            "--bundle",
            str(DEFAULT_BUNDLE),
            "--out",
            str(out),
            "--name",
            load_bundle(DEFAULT_BUNDLE).model_names[0],
        ],
    ):
        res = runner.invoke(main, cmd)
        assert res.exit_code == 1 and "does not exist" in res.output and one_error_line(res)
    assert list(scratch.iterdir()) == [] and not out.parent.exists()


# ----------------------------------------------------------------------------- 5. CLI and API conventions
@pytest.mark.parametrize(
    "args",
    [
        ["route", "q", "--lambda", "cheapest"],
        ["route", "q", "--models", "nope"],
        ["route", "q", "--exclude", "x"],
        ["route", "q", "--models", ",,,"],
        ["route", "q", "--bundle", ""],
    ],
)
def test_usage_errors_exit_2(runner, args, router):
    if args[-1] == "x":
        args = args[:-1] + [",".join(router.names)]  # everything excluded
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output


def test_route_with_only_an_image_is_not_a_question(runner):
    res = runner.invoke(main, ["route", str(EXAMPLES / "receipt.jpg")])
    assert res.exit_code == 2 and "the last argument must be the question" in res.output


def test_route_batch_option_errors_are_reported_once(runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"q{i}", "question": "q"}) for i in range(5)) + "\n")
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(tmp_path / "o.jsonl"), "--models", "nope"])
    assert res.exit_code == 2 and res.output.count("unknown model") == 1 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.route_many([([], "q")], batch_size=-1),
        lambda r: r.route_many([([], "q")], batch_size=0),
        lambda r: r.route(5, "What?"),
        lambda r: r.route([], None),
        lambda r: r.route([], "q", models=[3]),
        lambda r: r.route_many("abc"),
        lambda r: r.route_many([("q",)]),
        lambda r: r.route([object()], "q"),
        lambda r: r.route([np.zeros((4, 4, 3), dtype=object)], "q"),
    ],
)
def test_unsupported_api_inputs_raise_input_error(router, call):
    with pytest.raises(InputError):
        call(router)


def test_option_errors_are_input_errors_too(router):
    with pytest.raises(OptionError):
        router.route([], "q", lam="nope")
    assert issubclass(OptionError, InputError)
