"""Property-based hardening (issue 14): mutated images and random manifests through the public entry points.

Whatever hypothesis feeds in, the answer is a decision or an `LrOnnxError`, nothing else, and no file
outside the bundle folder is ever opened (watched with an audit hook on every `open`). Bounded so the
whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lr_onnx.runtime.errors import LrOnnxError
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Decision, Router

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
_OPENED: list | None = None


def _audit(event, args):
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _seed_images() -> dict[str, bytes]:
    img = Image.new("RGB", (48, 40))
    img.putdata([((x * 5) % 256, (y * 6) % 256, (x * y) % 256) for y in range(40) for x in range(48)])
    out = {}
    for fmt, kw in (
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("TIFF", {}),
        ("GIF", {"save_all": True, "append_images": [img.rotate(90)]}),
    ):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[fmt] = buf.getvalue()
    return out


SEEDS = _seed_images()


@st.composite
def mutated_image(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite_header"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[8 + pos % 24 : 12 + pos % 24] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@pytest.fixture(scope="module")
def router():
    return Router.load()


@settings(max_examples=150, **SETTINGS)
@given(data=mutated_image())
def test_mutated_images_give_a_decision_or_an_lr_onnx_error(router, data):
    try:
        d = router.route([data], "What is shown here?")
    except LrOnnxError:
        return
    assert isinstance(d, Decision) and d.model in router.names


# ----------------------------------------------------------------------------- manifests
BASE = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())


def _paths(node, prefix=(), depth=0) -> list[tuple]:
    """Key paths worth mutating: every key to depth 4, the first two entries of each list (not the centroids)."""
    out = [prefix] if prefix else []
    if depth >= 4:
        return out
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,), depth + 1)
    elif isinstance(node, list) and prefix[-1:] != ("centroids",):
        for i, v in enumerate(node[:2]):
            out += _paths(v, prefix + (i,), depth + 1)
    return out


PATHS = _paths(BASE)
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "../secret.onnx",
            "/etc/passwd",
            "router.onnx",
            "tokenizer.json",
            "",
            "lanczos",
            "\udc80",
            "golden.json",
            "./router.onnx",
            "sub/../../secret.onnx",
        ]
    ),
    st.lists(st.integers(-3, 300), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def mutated_manifest(draw):
    m = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = m
        try:
            for k in path[:-1]:
                node = node[k]
            if draw(st.booleans()) and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = draw(HOSTILE)
        except (KeyError, IndexError, TypeError):
            continue
    return m


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    (root / "secret.onnx").write_bytes((DEFAULT_BUNDLE / "router.onnx").read_bytes())
    b = root / "bundle"
    b.mkdir()
    for f in DEFAULT_BUNDLE.iterdir():
        if f.name != "manifest.json":
            try:
                os.link(f, b / f.name)
            except OSError:
                (b / f.name).write_bytes(f.read_bytes())
    return root, b


@settings(max_examples=60, **SETTINGS)
@given(m=mutated_manifest())
def test_random_manifests_route_or_refuse_and_never_leave_the_bundle(sandbox, m):
    global _OPENED
    root, b = sandbox
    (b / "manifest.json").write_text(json.dumps(m))
    _OPENED = []
    try:
        try:
            d = Router.load(b).route([], "What is 2 + 2?")
            assert isinstance(d, Decision)
        except LrOnnxError:
            pass
        bundle_dir = b.resolve()
        for p in _OPENED:
            real = Path(p).resolve()
            if root.resolve() in real.parents or real == root.resolve():
                assert bundle_dir in real.parents, f"opened {p} outside the bundle"
            assert not str(p).startswith("/etc/"), f"opened {p}"
    finally:
        _OPENED = None
