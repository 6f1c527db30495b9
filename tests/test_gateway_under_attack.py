"""The gateway under attack and faults (issue 22): each class of break has a test here, against loopback only.

Servers are the real app on 127.0.0.1 (uvicorn in a thread), upstreams the stand-in in another thread;
every load or timing test is bounded in requests and seconds.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from test_serve import CHART, FIRST, QUESTION, chat, make_server, ranked, router, upstream  # noqa: E402, F401
from lr_onnx.cli import main  # noqa: E402
from lr_onnx.serve.config import Batching, Limits, UpstreamPolicy, load_config  # noqa: E402
from lr_onnx.serve.standin import BackgroundServer, standin_app, wait_until_ready  # noqa: E402

KEY = "sk-secret-for-the-attack-tests-0123456789"


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stalled(url: str, path: str = "/v1/route") -> socket.socket:
    """A connection that sends its headers and one byte of a 1000-byte body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{".encode()
    )
    return s


# ----------------------------------------------------------------------------- 1. stalled bodies
def test_stalled_bodies_never_take_a_routing_slot(router, upstream):
    """More stalled connections than queue + batch used to turn every other request into a 503."""
    limits = Limits(queue_size=2, body_timeout_s=1.5)
    with make_server(router, upstream, {}, limits=limits, batching=Batching(max_batch=1)) as s:
        socks = [stalled(s.url) for _ in range(12)] + [stalled(s.url, "/v1/chat/completions") for _ in range(4)]
        try:
            time.sleep(0.2)
            for _ in range(3):
                res = httpx.post(f"{s.url}/v1/route", json={"question": "What is 2 + 2?"}, timeout=10)
                assert res.status_code == 200, res.text
            time.sleep(1.6)  # past body_timeout_s: each stalled request has been answered 408 and counted
            socks[0].settimeout(2)
            assert b" 408 " in socks[0].recv(4096).split(b"\r\n", 1)[0]
            assert metric(s.url, 'lr_onnx_requests_total{endpoint="route",status="408"}') >= 12
        finally:
            for sk in socks:
                sk.close()


# ----------------------------------------------------------------------------- 6. values JSON cannot carry
@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "lr-onnx/auto", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "lr-onnx/auto", "max_tokens": Infinity, "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "lr-onnx/auto", "max_tokens": '
        + b"9" * 400
        + b', "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "lr-onnx/auto", "messages": [{"role": "system", "content": "\\ud800"}, {"role": "user", "content": "hi"}]}',
    ],
)
def test_values_json_cannot_carry_are_400_and_counted(router, upstream, raw):
    with make_server(router, upstream, {}) as s:
        for model in ("lr-onnx/auto", f"up-{FIRST.lower()}"):  # routed and passed through
            body = raw.replace(b'"lr-onnx/auto"', json.dumps(model).encode())
            res = httpx.post(f"{s.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json", res.text
        assert metric(s.url, 'lr_onnx_requests_total{endpoint="chat_completions",status="400"}') == 2


# ----------------------------------------------------------------------------- 7. image URLs
def test_image_urls_with_control_characters_or_private_hosts_are_400(router, upstream):
    images = BackgroundServer(standin_app())
    limits = Limits(allow_image_urls=True, image_url_timeout_s=2.0)
    with images as img, make_server(router, upstream, {}, limits=limits) as s:
        for url, code in (
            (f"{img.url}/a.png\r\nx-injected: 1", "invalid_value"),
            (f"{img.url}/chart.png", "image_url_private"),  # 127.0.0.1: loopback
            ("http://[::1]:9/a.png", "image_url_private"),
            ("http://10.0.0.1/a.png", "image_url_private"),
            ("http://169.254.169.254/latest/meta-data", "image_url_private"),
        ):
            res = httpx.post(f"{s.url}/v1/route", json={"question": "q", "images": [url]}, timeout=10)
            assert res.status_code == 400 and res.json()["error"]["code"] == code, (url, res.text)


# ----------------------------------------------------------------------------- 8. upstream credentials
def test_upstream_key_is_never_relayed_and_401_is_an_upstream_failure(router, upstream, monkeypatch, logged):
    monkeypatch.setenv("LR_TEST_KEY", KEY)
    order = ranked(router, "What is 9 * 9?")
    with make_server(router, upstream, {order[0]: "unauthorized"}) as s:
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?"))
        assert res.status_code == 200 and res.headers["x-lr-onnx-model"] == order[1]
        assert "rejected our credentials" in res.headers["x-lr-onnx-failed"] and KEY not in str(res.headers)
        assert metric(s.url, f'lr_onnx_upstream_errors_total{{model="{order[0]}",reason="credentials"}}') == 1
        assert metric(s.url, 'lr_onnx_requests_total{endpoint="chat_completions",status="401"}') == 0
    with make_server(router, upstream, {n: "unauthorized" for n in router.names}) as s:
        for model in ("lr-onnx/auto", f"up-{FIRST.lower()}"):
            res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?", model))
            assert res.status_code == 502 and KEY not in res.text and KEY not in str(res.headers), res.text
            assert "rejected our credentials" in res.json()["error"]["message"]
    assert not any(KEY in r.getMessage() for r in logged.records)


# ----------------------------------------------------------------------------- 5. dripping upstreams
def test_an_upstream_that_drips_its_body_times_out_as_a_whole(router, upstream):
    order = ranked(router, "What is 9 * 9?")
    with make_server(router, upstream, {order[0]: "drip"}, upstream=UpstreamPolicy(timeout_s=1.0, retries=2)) as s:
        t0 = time.monotonic()
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?"), timeout=30)
        assert res.status_code == 200 and res.headers["x-lr-onnx-model"] == order[1]
        assert res.headers["x-lr-onnx-failed"] == f"{order[0]} (timeout)" and time.monotonic() - t0 < 5


# ----------------------------------------------------------------------------- 13, 16, 17. streams and headers
@pytest.mark.parametrize("kind,reason", [("cutstream", "stream broken"), ("stallstream", "stream idle")])
def test_a_stream_cut_upstream_ends_with_an_error_event(router, upstream, logged, kind, reason):
    top = ranked(router, "Cut me?")[0]
    with make_server(router, upstream, {top: kind}, upstream=UpstreamPolicy(timeout_s=2, stream_idle_s=0.5)) as s:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=chat("Cut me?", stream=True), timeout=10) as r:
            assert r.status_code == 200
            events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        last = json.loads(events[-1][6:])
        assert (
            len(events) == 3
            and last["error"]["code"] == "upstream_stream_failed"
            and reason in last["error"]["message"]
        )
        assert metric(s.url, f'lr_onnx_upstream_errors_total{{model="{top}",reason="stream"}}') == 1
    assert any(top in r.getMessage() and reason in r.getMessage() for r in logged.records)


def test_gzipped_upstream_streams_arrive_decoded(router, upstream):
    top = ranked(router, "Zip?")[0]
    with make_server(router, upstream, {top: "gzipstream"}) as s:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=chat("Zip?", stream=True)) as r:
            raw = b"".join(r.iter_raw())
            assert r.status_code == 200 and "content-encoding" not in r.headers
        assert raw.startswith(b"data: ") and raw.rstrip().endswith(b"data: [DONE]")


def test_passthrough_answers_carry_no_utility(router, upstream):
    with make_server(router, upstream, {}) as s:
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("hi", f"up-{FIRST.lower()}"))
        assert res.status_code == 200 and "x-lr-onnx-utility" not in res.headers
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("hi"))
        assert float(res.headers["x-lr-onnx-utility"]) == float(res.headers["x-lr-onnx-utility"])  # a number


# ----------------------------------------------------------------------------- 14. clients dropping mid-body
def test_clients_dropping_mid_body_are_one_throttled_line_and_counted(router, upstream, logged):
    with make_server(router, upstream, {}) as s:
        for _ in range(20):
            stalled(s.url).close()
        deadline = time.monotonic() + 10
        while metric(s.url, "lr_onnx_client_disconnects_total") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(s.url, "lr_onnx_client_disconnects_total") == 20
    lines = [r.getMessage() for r in logged.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]


# ----------------------------------------------------------------------------- 2. image cost over HTTP
def test_an_image_over_the_servers_decoded_byte_budget_is_refused_before_decoding(router, upstream):
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 79 megapixels of RGBA declared (under the 80 MP pixel limit): 316 MB decoded, over the server's 64 MB
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8900, 8900, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    with make_server(router, upstream, {}) as s:
        t0 = time.monotonic()
        res = httpx.post(f"{s.url}/v1/route", json={"question": "q", "images": [url] * 8})
        assert res.status_code == 400 and "MiB per image" in res.json()["error"]["message"], res.text
        assert time.monotonic() - t0 < 2
        ok = httpx.post(
            f"{s.url}/v1/route",
            json={"question": QUESTION, "images": ["data:image/png;base64," + base64.b64encode(CHART).decode()]},
        )
        assert ok.status_code == 200


# ----------------------------------------------------------------------------- 10, 11. the operator's input
def test_config_files_that_are_not_small_regular_files_are_one_line(tmp_path):
    import os

    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * 400_000)
    for path, words in (
        (deep, "nested too deeply"),
        (fifo, "regular file"),
        ("/dev/zero", "regular file"),
        (big, "larger than"),
    ):
        t0 = time.monotonic()
        with pytest.raises(Exception) as e:
            load_config(path)
        assert type(e.value).__name__ == "InputError" and words in str(e.value) and time.monotonic() - t0 < 2


def test_an_unset_upstream_key_variable_refuses_strict_start(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("LR_NOT_SET_ANYWHERE", raising=False)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[models."{FIRST}"]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "LR_NOT_SET_ANYWHERE"\n')
    res = runner.invoke(main, ["serve", "--config", str(cfg), "--strict", "--port", "9"])
    assert res.exit_code != 0 and "LR_NOT_SET_ANYWHERE" in res.output and "Traceback" not in res.output


# ----------------------------------------------------------------------------- 15. the shutdown grace period
def test_a_stream_longer_than_the_grace_period_ends_cleanly_at_sigterm(router, upstream, tmp_path):
    """[server] grace_s: a stream still running when it is almost over ends with an error event, and the
    server exits 0 without a traceback (it used to be cut mid-chunk, with one)."""
    import signal
    import subprocess
    import sys

    from lr_onnx.serve.standin import free_port

    top = ranked(router, "Stream forever?")[0]
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[server]\ngrace_s = 2\n\n[models."{top}"]\nbase_url = "{upstream.url}/slowstream/v1"\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lr_onnx.cli", "serve", "--port", str(port), "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc)
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=chat("Stream forever?", stream=True), timeout=30
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(ln for ln in lines if ln.startswith("data: "))
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            events = [ln for ln in lines if ln.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["code"] == "upstream_stream_failed"
        assert "shutting down" in events[-1] and time.monotonic() - t0 < 5
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
