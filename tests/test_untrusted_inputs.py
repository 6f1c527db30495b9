"""Inputs the runtime must refuse with one line, however they arrive (issue 22): paths with NUL bytes, images
that would cost more memory than allowed, graphs that read files outside the bundle, a graph copied over
another one, and a route-batch OUT that is not a previous run's output."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
import zlib

import pytest

from conftest import REPO
from lr_onnx.cli import main
from lr_onnx.runtime.errors import BundleError, InputError
from lr_onnx.runtime.preprocess import open_image
from lr_onnx.runtime.router import Router
from test_hostile_input import linked_bundle

LR_ONNX = [sys.executable, "-m", "lr_onnx.cli"]
EXAMPLES = REPO / "assets" / "examples"


@pytest.fixture(scope="module")
def router():
    return Router.load()


def declared_png(w: int, h: int, colour_type: int = 6, depth: int = 8) -> bytes:
    """A tiny PNG whose header declares w x h pixels (RGBA by default); its pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- NUL bytes in image paths
def test_a_nul_byte_in_an_image_path_is_an_input_error(router):
    with pytest.raises(InputError, match="NUL byte"):
        router.route(["a\x00b.png"], "q")


def test_route_batch_skips_a_record_with_a_nul_byte_and_routes_the_rest(runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "a", "question": "What is 1 + 1?"},
                {"id": "b", "question": "q", "images": ["x\u0000y.png"]},
                {"id": "c", "question": "What is 2 + 2?"},
            ]
        )
        + "\n"
    )
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,question,images\nd,What is 3?,\ne,q,x\x00y.png\n")
    for src in (inp, csv_in):
        out = tmp_path / (src.stem + src.suffix.replace(".", "_") + ".out.jsonl")
        res = runner.invoke(main, ["route-batch", str(src), "--out", str(out)])
        assert res.exit_code == 1 and "Traceback" not in res.output and "NUL byte" in res.output, res.output
        assert len(out.read_text().splitlines()) == (2 if src is inp else 1)


# ----------------------------------------------------------------------------- what an image may cost
def test_an_image_is_refused_by_its_decoded_bytes_before_any_pixel_is_decoded():
    big = declared_png(8900, 8900)  # 79 MP of RGBA: under the pixel limit, 302 MiB decoded
    t0 = time.monotonic()
    with pytest.raises(InputError, match="MiB per image"):
        open_image(big, max_bytes=64 << 20)
    assert time.monotonic() - t0 < 0.5
    budget = [100 << 20]
    mid = declared_png(4000, 3000)  # 48 MB of RGBA each; its pixel data is a stub, so each decode fails after
    for _ in range(2):  # the budget check passed
        with pytest.raises(InputError, match="truncated|corrupt|readable"):
            open_image(mid, max_bytes=64 << 20, budget=budget)
    assert budget[0] == (100 << 20) - 2 * 4000 * 3000 * 4
    with pytest.raises(InputError, match="request's image budget"):
        open_image(mid, max_bytes=64 << 20, budget=budget)


def test_a_request_budget_covers_all_of_its_images(router):
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000), (10, 200, 30)).save(buf, "PNG")
    png = buf.getvalue()  # 3.4 MiB decoded
    router.prepare([png, png], "q", max_request_bytes=8 << 20)
    with pytest.raises(InputError, match="request's image budget"):
        router.prepare([png, png, png], "q", max_request_bytes=8 << 20)


def test_a_16_bit_image_converts_without_a_float64_copy():
    import io

    import numpy as np
    from PIL import Image

    a = (np.arange(300 * 200, dtype=np.uint32).reshape(200, 300) * 7 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    img = open_image(buf.getvalue())
    ref = (a.astype(np.float64) / a.max() * 255).astype(np.uint8)
    assert img.mode == "RGB" and np.abs(np.asarray(img)[..., 0].astype(int) - ref).max() <= 1


# ----------------------------------------------------------------------------- a closed bundle, graphs included
def _with_graph(tmp_path, name: str, data: bytes, extra: dict | None = None):
    def edit(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest()}
        for f, d in (extra or {}).items():
            m["files"][f] = {"sha256": hashlib.sha256(d).hexdigest()}
        return m

    b = linked_bundle(tmp_path / "b", edit)
    (b / name).unlink()
    (b / name).write_bytes(data)
    for f, d in (extra or {}).items():
        (b / f).write_bytes(d)
    return b


def test_a_graph_with_external_data_is_refused_even_when_the_file_is_listed(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    m = onnx.load(str(REPO / "assets" / "bundle" / "router.onnx"))
    work = tmp_path / "x"
    work.mkdir()
    onnx.save_model(
        m,
        str(work / "router.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    b = _with_graph(
        tmp_path, "router.onnx", (work / "router.onnx").read_bytes(), {"w.bin": (work / "w.bin").read_bytes()}
    )
    monkeypatch.chdir(b)  # where ONNX Runtime would look for w.bin
    with pytest.raises(BundleError, match="external data .*'w.bin'"):
        Router.load(b).route([], "What is 2 + 2?")


def test_a_graph_copied_over_another_is_one_line_at_load(tmp_path, runner):
    data = (REPO / "assets" / "bundle" / "text_encoder.onnx").read_bytes()
    b = _with_graph(tmp_path, "router.onnx", data)
    with pytest.raises(BundleError, match="router.onnx has inputs"):
        Router.load(b).route([], "What is 2 + 2?")
    res = runner.invoke(main, ["route", "--bundle", str(b), "What is 2 + 2?"])
    assert res.exit_code == 1 and "Traceback" not in res.output and "has inputs" in res.output
    pytest.importorskip("uvicorn")
    run = subprocess.run(
        LR_ONNX + ["serve", "--bundle", str(b), "--port", "9"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr and "has inputs" in run.stderr


# ----------------------------------------------------------------------------- route-batch's OUT
def test_route_batch_refuses_an_out_it_did_not_write(runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    queries = "\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?"}) for i in range(4)) + "\n"
    inp.write_text(queries)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(queries)  # any JSONL with ids: it used to count as "already done"
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(foreign)])
    assert res.exit_code == 1 and "not the output of an lr-onnx route-batch" in res.output
    assert foreign.read_text() == queries
    out = tmp_path / "out.jsonl"
    assert runner.invoke(main, ["route-batch", str(inp), "--out", str(out)]).exit_code == 0
    side = json.loads((tmp_path / "out.jsonl.lr-onnx.json").read_text())
    assert side["tool"] == "lr-onnx route-batch" and side["input"] == str(inp.resolve())
    assert side["bundle_sha256"] == Router.load().bundle.digest
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out)])
    assert res.exit_code == 0 and "already done 4" in res.output
    other = tmp_path / "other.jsonl"
    other.write_text(queries)
    res = runner.invoke(main, ["route-batch", str(other), "--out", str(out)])
    assert res.exit_code == 1 and "from the input" in res.output

    def edit(m):
        m["lambda"]["default"] = 0.0
        return m

    b = linked_bundle(tmp_path / "b2", edit)
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out), "--bundle", str(b)])
    assert res.exit_code == 1 and "another bundle" in res.output


def test_route_batch_refuses_its_own_out_on_standard_input(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?"}) for i in range(3)) + "\n")
    out = tmp_path / "out.jsonl"
    with open(inp, "rb") as fh:
        assert subprocess.run(LR_ONNX + ["route-batch", "-", "--out", str(out)], stdin=fh).returncode == 0
    before = out.read_bytes()
    with open(out, "rb") as fh:
        run = subprocess.run(
            LR_ONNX + ["route-batch", "-", "--out", str(out)], stdin=fh, capture_output=True, text=True
        )
    assert run.returncode == 1 and "OUT is the input" in run.stderr and out.read_bytes() == before
