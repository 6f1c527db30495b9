"""`lr-onnx serve` (issue 15): a real server on 127.0.0.1, a real HTTP client, a stand-in upstream on another port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from conftest import REPO  # noqa: E402
from lr_onnx.runtime.router import Router  # noqa: E402
from lr_onnx.serve.app import create_app  # noqa: E402
from lr_onnx.serve.config import Batching, Limits, ServeConfig, Upstream, UpstreamPolicy, load_config  # noqa: E402
from lr_onnx.serve.server import served_router  # noqa: E402
from lr_onnx.serve.standin import BackgroundServer, standin_app, wait_until_ready  # noqa: E402

EXAMPLES = REPO / "assets" / "examples"
CHART = (EXAMPLES / "chart.png").read_bytes()
DATA_URL = "data:image/png;base64," + base64.b64encode(CHART).decode()
QUESTION = "What is the highest bar in this chart?"


def _tiny_png() -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bomb_png() -> str:
    """69 bytes whose header claims 60,000 x 60,000 pixels: refused by the runtime's pixel limit before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


TINY = _tiny_png()
FIRST, LAST = Router.load().names[0], Router.load().names[-1]  # any two models of the default bundle


@pytest.fixture(scope="module")
def router():
    return Router.load()


@pytest.fixture(scope="module")
def upstream():
    app = standin_app()
    with BackgroundServer(app) as s:
        s.app = app
        yield s


def ranked(router, question=QUESTION, images=(), lam=None) -> list[str]:
    return [c.name for c in router.route(list(images), question, lam=lam).candidates]


def make_server(router, standin, behaviours: dict[str, str], **cfg):
    """A served app in which pool model NAME is answered by the stand-in behaving as behaviours[NAME] (ok)."""
    models = {
        n: Upstream(n, f"{standin.url}/{behaviours.get(n, 'ok')}/v1", f"up-{n.lower()}", "LR_TEST_KEY")
        for n in router.names
    }
    config = ServeConfig(
        limits=cfg.pop("limits", Limits()),
        batching=cfg.pop("batching", Batching()),
        upstream=cfg.pop("upstream", UpstreamPolicy(timeout_s=1.0, retries=2)),
        models=models,
    )
    served, _ = served_router(router, config)
    return BackgroundServer(create_app(served, config, **cfg))


@pytest.fixture(scope="module")
def server(router, upstream):
    with make_server(router, upstream, {}) as s:
        yield s


def chat(text, model="lr-onnx/auto", stream=False, images=()):
    content = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
    }


def test_route_endpoint_equals_router_route(router, server):
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").json()["status"] == "ready" and c.get("/healthz").status_code == 200
        for body, kw in (
            ({"question": QUESTION, "images": [DATA_URL]}, {}),
            (
                {
                    "question": QUESTION,
                    "images": [base64.b64encode(CHART).decode()],
                    "lambda": "budget_25",
                    "exclude": [FIRST],
                    "explain": True,
                },
                {"lam": "budget_25", "exclude": [FIRST], "explain": True},
            ),
            ({"question": "What is 7 * 6?", "models": [FIRST, LAST], "lambda": 0.3}, None),
        ):
            res = c.post("/v1/route", json=body)
            assert res.status_code == 200, res.text
            images = [CHART] if body.get("images") else []
            kw = kw if kw is not None else {"models": [FIRST, LAST], "lam": 0.3}
            assert res.json() == json.loads(json.dumps(router.route(images, body["question"], **kw).to_dict()))


def test_concurrent_requests_are_batched_and_still_exact(router, server):
    bodies = [{"question": f"What is {i} + {i}?", "lambda": float(i % 3) / 10} for i in range(24)]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url) as c:
            return await asyncio.gather(*(c.post("/v1/route", json=b) for b in bodies))

    results = asyncio.run(fire())
    for b, r in zip(bodies, results):
        assert r.status_code == 200
        assert r.json()["model"] == router.route([], b["question"], lam=b["lambda"]).model
    metrics = httpx.get(f"{server.url}/metrics").text
    sizes = [ln for ln in metrics.splitlines() if ln.startswith("lr_onnx_batch_size_count")]
    count = float(sizes[0].split()[-1])
    total = float([ln for ln in metrics.splitlines() if ln.startswith("lr_onnx_batch_size_sum")][0].split()[-1])
    assert total / count > 1.0  # some requests shared a batch
    for stage in ("decode", "encoders", "router"):
        assert f'lr_onnx_stage_seconds_count{{stage="{stage}"}}' in metrics


def test_an_idle_server_does_not_hold_a_lone_request_for_company(router, upstream):
    """max_wait_ms is how long a batch waits for company while others are on their way; a lone request on an
    idle server is routed at once (here the wait would be 3 s), and a burst is still batched."""
    with make_server(router, upstream, {}, batching=Batching(max_batch=32, max_wait_ms=3000)) as s:
        for images in ([], [DATA_URL]):
            t0 = time.monotonic()
            assert httpx.post(f"{s.url}/v1/route", json={"question": QUESTION, "images": images}).status_code == 200
            assert time.monotonic() - t0 < 1.5

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                return await asyncio.gather(
                    *(c.post("/v1/route", json={"question": QUESTION, "images": [DATA_URL]}) for _ in range(16))
                )

        assert all(r.status_code == 200 for r in asyncio.run(burst()))
        m = httpx.get(f"{s.url}/metrics").text
        count = float(next(ln for ln in m.splitlines() if ln.startswith("lr_onnx_batch_size_count")).split()[-1])
        assert count < 2 + 16  # the burst shared batches


def test_a_bad_image_in_a_burst_fails_alone(router, server):
    """Images are decoded as requests arrive, before batching: a broken one is that request's 400, and the
    requests around it are still batched and exact."""
    broken = "data:image/png;base64," + base64.b64encode(CHART[: len(CHART) // 3]).decode()
    bodies = [{"question": f"What is bar {i}?", "images": [broken if i == 5 else DATA_URL]} for i in range(12)]
    bodies[8]["max_cost"] = 1e-12  # and one whose budget no model fits: it fails in the batch's decision, alone

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/route", json=b) for b in bodies))

    for i, r in enumerate(asyncio.run(fire())):
        if i in (5, 8):
            msg = r.json()["error"]["message"]
            assert r.status_code == 400 and "\n" not in msg and ("max_cost" in msg) == (i == 8), r.text
        else:
            assert r.status_code == 200 and r.json()["model"] == router.route([CHART], bodies[i]["question"]).model


def test_chat_completion_forwarded_unchanged_with_headers(router, upstream, server):
    top = ranked(router, "What is 2 + 2?")[0]
    res = httpx.post(f"{server.url}/v1/chat/completions", json=chat("What is 2 + 2?"))
    assert res.status_code == 200
    assert res.headers["x-lr-onnx-model"] == top and "x-lr-onnx-failed" not in res.headers
    assert float(res.headers["x-lr-onnx-lambda"]) == pytest.approx(router.default_lambda, rel=1e-5)
    assert res.json()["choices"][0]["message"]["content"] == f"answer from up-{top.lower()}"
    kind, body = upstream.app.state.seen[-1]
    assert body["model"] == f"up-{top.lower()}" and body["messages"] == chat("What is 2 + 2?")["messages"]
    m = httpx.get(f"{server.url}/metrics").text
    assert f'lr_onnx_chosen_total{{model="{top}"}}' in m and 'lr_onnx_stage_seconds_count{stage="upstream"}' in m
    assert 'lr_onnx_requests_total{endpoint="chat_completions",status="200"}' in m


def test_chat_completion_streams_sse(router, server):
    top = ranked(router, QUESTION, [CHART], lam="quality")[0]
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=chat(QUESTION, "lr-onnx/quality", True, [DATA_URL])
    ) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        data = res.read().decode()
    assert res.headers["x-lr-onnx-model"] == top and data.endswith("data: [DONE]\n\n")
    assert f"up-{top.lower()}" in data


def test_failing_and_hanging_upstreams_fall_back_to_the_next_candidate(router, upstream, logged, monkeypatch):
    monkeypatch.setenv("LR_TEST_KEY", "sk-secret-for-the-test")
    order = ranked(router, "What is 9 * 9?")
    with make_server(router, upstream, {order[0]: "fail", order[1]: "hang"}) as s:
        t0 = time.monotonic()
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?"), timeout=30)
        assert res.status_code == 200 and res.headers["x-lr-onnx-model"] == order[2]
        assert res.headers["x-lr-onnx-failed"] == f"{order[0]} (500), {order[1]} (timeout)"
        assert time.monotonic() - t0 < 10
        with httpx.stream(
            "POST", f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?", stream=True), timeout=30
        ) as r:
            assert r.status_code == 200 and r.headers["x-lr-onnx-model"] == order[2]
        m = httpx.get(f"{s.url}/metrics").text
        assert f'lr_onnx_upstream_errors_total{{model="{order[0]}",reason="500"}}' in m
    lines = [r.getMessage() for r in logged.records]
    assert any(order[0] in ln and "500" in ln for ln in lines) and any(
        order[1] in ln and "timeout" in ln for ln in lines
    )
    assert len([ln for ln in lines if order[0] in ln]) == 1  # two failures of the same kind: one line a minute
    assert not any("sk-" in ln or "Bearer" in ln for ln in lines)
    with make_server(
        router, upstream, {n: "fail" for n in router.names}, upstream=UpstreamPolicy(timeout_s=1.0, retries=1)
    ) as s:
        res = httpx.post(f"{s.url}/v1/chat/completions", json=chat("What is 9 * 9?"))
        assert res.status_code == 502 and res.json()["error"]["code"] == "upstream_failed"
        assert res.headers["x-lr-onnx-failed"] == f"{order[0]} (500), {order[1]} (500)"


def test_passthrough_models_and_unknown_models(router, server):
    res = httpx.post(f"{server.url}/v1/chat/completions", json=chat("hi", f"up-{FIRST.lower()}"))
    assert res.status_code == 200 and res.headers["x-lr-onnx-routed"] == "false"
    assert res.headers["x-lr-onnx-model"] == FIRST
    res = httpx.post(f"{server.url}/v1/chat/completions", json=chat("hi", "gpt-5-imaginary"))
    assert res.status_code == 400 and res.json()["error"]["code"] == "model_not_found"
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert "lr-onnx/auto" in ids and "lr-onnx/budget_25" in ids and f"up-{FIRST.lower()}" in ids


def test_without_upstreams_a_malformed_chat_request_is_still_the_clients_4xx(router):
    """No [models.NAME] tables: a well-formed chat request is a 503 (nothing to forward to), a malformed one a 400."""
    config = ServeConfig(limits=Limits(), batching=Batching(), upstream=UpstreamPolicy(), models={})
    served, _ = served_router(router, config)
    with BackgroundServer(create_app(served, config)) as s:
        url = f"{s.url}/v1/chat/completions"
        for body in ({"model": "lr-onnx/auto", "messages": []}, {"model": "lr-onnx/auto", "messages": "x"}, {}):
            res = httpx.post(url, json=body)
            assert res.status_code == 400 and res.json()["error"]["type"] == "invalid_request_error", (body, res.text)
        res = httpx.post(url, json=chat("hi"))
        assert res.status_code == 503 and res.json()["error"]["code"] == "no_upstream"
        res = httpx.post(url, json=chat(" ", images=[TINY]))  # an image alone: nothing to route on, said so
        assert res.status_code == 400 and "has no text" in res.json()["error"]["message"], res.text


def test_client_disconnect_mid_stream_cancels_the_upstream(router, upstream):
    top = ranked(router, "Stream forever?")[0]
    with make_server(router, upstream, {top: "slowstream"}) as s:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=chat("Stream forever?", stream=True)) as r:
            assert r.status_code == 200
            next(r.iter_raw())
        deadline = time.monotonic() + 10
        while f"up-{top.lower()}" not in upstream.app.state.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"up-{top.lower()}" in upstream.app.state.closed


def test_image_urls_when_allowed_are_fetched_within_size_and_time_limits(router, upstream):
    """limits.allow_image_urls: a good URL routes like the same bytes sent inline; a too-large one is 413; one that
    answers 404, stalls, or drips bytes slower than the time limit allows is a one-line 400, in about that time."""
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def drip():
        for _ in range(100):
            yield b"x"
            await asyncio.sleep(0.2)

    async def stall():
        await asyncio.sleep(30)
        yield b""

    images = Starlette(
        routes=[
            Route("/chart.png", lambda r: Response(CHART, media_type="image/png")),
            Route("/big.png", lambda r: Response(b"\0" * 200_000, media_type="image/png")),
            Route("/missing.png", lambda r: Response(b"no", status_code=404)),
            Route("/drip.png", lambda r: StreamingResponse(drip(), media_type="image/png")),
            Route("/stall.png", lambda r: StreamingResponse(stall(), media_type="image/png")),
        ]
    )
    limits = Limits(
        allow_image_urls=True, allow_private_image_hosts=True, image_url_max_mb=0.05, image_url_timeout_s=1.0
    )
    with BackgroundServer(images) as img, make_server(router, upstream, {}, limits=limits) as s:
        res = httpx.post(f"{s.url}/v1/route", json={"question": QUESTION, "images": [f"{img.url}/chart.png"]})
        assert res.status_code == 200 and res.json()["model"] == router.route([CHART], QUESTION).model
        for name, status, code in (
            ("big", 413, "image_too_large"),
            ("missing", 400, "image_url_failed"),
            ("drip", 400, "image_url_failed"),
            ("stall", 400, "image_url_failed"),
        ):
            t0 = time.monotonic()
            res = httpx.post(
                f"{s.url}/v1/route", json={"question": "q", "images": [f"{img.url}/{name}.png"]}, timeout=30
            )
            err = res.json()["error"]
            assert res.status_code == status and err["code"] == code and "\n" not in err["message"], (name, res.text)
            assert time.monotonic() - t0 < 5, name


@pytest.fixture(scope="module")
def limited(router, upstream):
    limits = Limits(max_body_mb=0.002, max_images=2, max_question_chars=100, max_json_depth=6)
    with make_server(router, upstream, {}, limits=limits) as s:
        yield s


@pytest.mark.parametrize(
    "send,status,code",
    [
        (lambda: {"content": b"{not json"}, 400, "invalid_json"),
        (lambda: {"json": {"question": "q", "colour": 1}}, 400, "unknown_field"),
        (lambda: {"json": {"question": ""}}, 400, "invalid_value"),
        (lambda: {"json": {"question": "q", "lambda": "cheapest"}}, 400, "invalid_value"),
        (lambda: {"json": {"question": "q", "models": ["nope"]}}, 400, "invalid_value"),
        (lambda: {"json": {"question": "q", "images": ["http://example.invalid/a.png"]}}, 400, "image_url_not_allowed"),
        (lambda: {"json": {"question": "q", "images": ["data:image/png;base64,@@@"]}}, 400, "invalid_value"),
        (
            lambda: {
                "json": {"question": "q", "images": ["data:image/png;base64," + base64.b64encode(b"%!PS").decode()]}
            },
            400,
            "invalid_value",
        ),
        (lambda: {"json": {"question": "q", "images": [TINY] * 3}}, 413, "too_many_images"),
        (lambda: {"json": {"question": "x" * 101}}, 413, "question_too_long"),
        (lambda: {"content": json.dumps({"question": "q", "explain": [[[[[[[[[[1]]]]]]]]]]})}, 400, "invalid_json"),
        (lambda: {"content": b"{" + b" " * 3000 + b"}"}, 413, "body_too_large"),
    ],
)
def test_limits_and_malformed_requests_are_one_line_4xx(limited, send, status, code):
    res = httpx.post(f"{limited.url}/v1/route", headers={"content-type": "application/json"}, **send())
    err = res.json()["error"]
    assert res.status_code == status and err["code"] == code and "\n" not in err["message"] and err["type"]


def test_the_runtime_pixel_limit_holds_over_http(limited):
    res = httpx.post(f"{limited.url}/v1/route", json={"question": "q", "images": [_bomb_png()]})
    err = res.json()["error"]
    assert res.status_code == 400 and err["code"] == "invalid_value" and "pixel limit" in err["message"], res.text


def test_gateway_key(router, upstream):
    os.environ["LR_TEST_KEY"] = "upstream-secret-123"
    with make_server(router, upstream, {}, api_key="gw-key") as s:
        assert httpx.post(f"{s.url}/v1/route", json={"question": "q"}).status_code == 401
        bad = httpx.post(f"{s.url}/v1/route", json={"question": "q"}, headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(f"{s.url}/v1/route", json={"question": "q"}, headers={"authorization": "Bearer gw-key"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # probes need no key
        res = httpx.post(
            f"{s.url}/v1/chat/completions",
            json=chat("hi", "up-nope-unknown"),
            headers={"authorization": "Bearer gw-key"},
        )
        assert "upstream-secret-123" not in res.text and "upstream-secret-123" not in str(res.headers)


def test_full_queue_answers_503_with_retry_after_and_nothing_else(router, upstream):
    with make_server(
        router, upstream, {}, limits=Limits(queue_size=2), batching=Batching(max_batch=1, max_wait_ms=0, threads=1)
    ) as s:

        async def flood():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                return await asyncio.gather(
                    *(c.post("/v1/route", json={"question": f"What is {i}?"}) for i in range(40))
                )

        codes = [r.status_code for r in asyncio.run(flood())]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        r503 = next(r for r in asyncio.run(flood()) if r.status_code == 503)
        assert r503.headers["retry-after"] == "1" and r503.json()["error"]["code"] == "queue_full"


def test_config_file_is_validated_with_one_line(tmp_path, runner):
    from lr_onnx.cli import main

    good = tmp_path / "ok.toml"
    good.write_text(
        f'[limits]\nmax_images = 4\n[batching]\nmax_batch = 8\n[models."{FIRST}"]\n'
        'base_url = "http://127.0.0.1:9/v1"\napi_key_env = "OPENAI_API_KEY"\nupstream_model = "gpt-4o"\n'
    )
    cfg = load_config(good)
    assert cfg.limits.max_images == 4 and cfg.batching.max_batch == 8 and cfg.models[FIRST].upstream_model == "gpt-4o"
    for bad, msg in (
        ("[limits]\nmax_images = -1\n", "between"),
        ("[limitz]\n", "unknown section"),
        ('[models.X]\nbase_url = "ftp://x"\n', "http"),
        (f'[models."{FIRST}"]\nbase_url = "http://x"\napi_key = "sk-123"\n', "unknown key"),
        ("not toml [", "malformed TOML"),
    ):
        p = tmp_path / "bad.toml"
        p.write_text(bad)
        res = runner.invoke(main, ["serve", "--config", str(p), "--port", "1"])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
    p.write_text('[models.NotInPool]\nbase_url = "http://127.0.0.1:9/v1"\n')
    res = runner.invoke(main, ["serve", "--config", str(p)])
    assert res.exit_code == 1 and "not in the bundle's pool" in res.output


def test_sigterm_answers_every_admitted_request_then_exits_0(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lr_onnx.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc)

        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                tasks = [
                    asyncio.create_task(
                        c.post("/v1/route", json={"question": f"What is {i} * {i}?", "images": [DATA_URL]})
                    )
                    for i in range(16)
                ]
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(in_flight())
        admitted = [r for r in results if not isinstance(r, Exception)]
        assert admitted and all(r.status_code == 200 for r in admitted)
        assert proc.wait(timeout=60) == 0
        assert "http://127.0.0.1:" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_benchmark_quick_run_is_complete_and_clean(tmp_path):
    """`lr-onnx bench serve --quick` end to end: every level answered, nothing lost, only 200/503 under
    overload, and the numbers written where the README says (throughput itself is the benchmark's job)."""
    from lr_onnx.serve.loadtest import run_serve_bench, table

    out = tmp_path / "serve.json"
    r = run_serve_bench(out, quick=True)
    assert json.loads(out.read_text()) == r and not list(tmp_path.glob("*.tmp"))
    for level in ("1", "8", "32"):
        v = r["levels"][level]
        assert v["status"] == {"200": 96} and v["lost"] == 0 and v["qps"] > 0, v
    o = r["overload_4x"]
    assert set(o["status"]) <= {"200", "503"} and o["lost"] == 0 and o["status"].get("503", 0) > 0, o
    assert r["targets"]["zero_errors_and_lost"] and r["server_peak_rss_mb"] > 0
    assert r["in_process_route_many"]["qps"] > 0
    assert "concurrency" in table(r)


def test_an_image_url_is_fetched_from_the_address_that_was_checked(router, upstream, monkeypatch):
    """DNS rebinding: the host is resolved once (`_resolve`, which checks the address), and the request goes to that
    very address with the URL's Host header. Here the resolver answers for a name the system cannot resolve: had the
    HTTP client resolved the name again, the fetch would fail."""
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response
    from starlette.routing import Route

    from lr_onnx.serve import upstream as upstream_module

    seen = {}

    def chart(request: StarletteRequest):
        seen["host"] = request.headers.get("host")
        return Response(CHART, media_type="image/png")

    real = upstream_module._resolve

    async def resolve(url, *, public_only):
        seen["resolved"] = url.host
        return "127.0.0.1" if url.host == "rebind.lr-onnx.test" else await real(url, public_only=public_only)

    monkeypatch.setattr(upstream_module, "_resolve", resolve)
    limits = Limits(allow_image_urls=True, allow_private_image_hosts=True, image_url_timeout_s=2.0)
    with (
        BackgroundServer(Starlette(routes=[Route("/chart.png", chart)])) as img,
        make_server(router, upstream, {}, limits=limits) as s,
    ):
        port = int(img.url.rsplit(":", 1)[1])
        res = httpx.post(
            f"{s.url}/v1/route", json={"question": QUESTION, "images": [f"http://rebind.lr-onnx.test:{port}/chart.png"]}
        )
        assert res.status_code == 200, res.text
        assert res.json()["model"] == router.route([CHART], QUESTION).model
        assert seen == {"resolved": "rebind.lr-onnx.test", "host": f"rebind.lr-onnx.test:{port}"}
