"""A stand-in OpenAI-compatible upstream, for `lr-onnx bench serve` and the tests: no network, no keys.

Its behaviour is chosen by the first path segment of the base URL, so one process plays many models:
`http://HOST:PORT/ok/v1` answers at once (JSON or SSE), `/fail/v1` answers 500, `/hang/v1` never
answers, `/slowstream/v1` streams one chunk every 50 ms for a minute (to test disconnects). Faults the
gateway must survive: `/drip/v1` sends its headers, then one byte every 200 ms; `/unauthorized/v1`
answers 401 quoting the key it was sent (as OpenAI does); `/cutstream/v1` and `/stallstream/v1` send
two SSE chunks, then break the connection or fall silent; `/gzipstream/v1` gzips its SSE stream
whatever the client accepts. Every request it received is kept in `seen` (behaviour, body) and every
stream it closed early in `closed`.
"""

from __future__ import annotations

import asyncio
import json
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chunks(model: str, text: str) -> list[bytes]:
    out = []
    for word in text.split(" "):
        delta = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
        }
        out.append(f"data: {json.dumps(delta)}\n\n".encode())
    return out + [b"data: [DONE]\n\n"]


_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')


def standin_app(*, record: bool = True) -> Starlette:
    """`record=False` (the benchmark) skips parsing whole bodies: it reads the model and the stream flag
    with two regular expressions, so the stand-in takes as little of the shared CPU as it can."""
    seen: list[tuple[str, dict]] = []
    closed: list[str] = []

    async def chat(request: Request):
        kind = request.path_params["kind"]
        if record:
            body = await request.json()
            seen.append((kind, body))
        else:
            raw = await request.body()
            m = _MODEL.search(raw)
            body = {"model": m.group(1).decode() if m else "?", "stream": bool(_STREAM.search(raw))}
        model = body.get("model", "?")
        if kind == "fail":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
        if kind == "hang":
            await asyncio.sleep(3600)
        if kind == "unauthorized":
            given = request.headers.get("authorization", "")
            return JSONResponse(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {given}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        if kind == "drip":

            async def drip():
                for _ in range(600):
                    yield b" "
                    await asyncio.sleep(0.2)

            return StreamingResponse(drip(), media_type="application/json")
        if kind in ("cutstream", "stallstream"):

            async def broken():
                for c in chunks(model, "two words")[:2]:
                    yield c
                if kind == "stallstream":
                    await asyncio.sleep(3600)
                raise RuntimeError("the stand-in cuts this stream")  # uvicorn drops the connection mid-body

            return StreamingResponse(broken(), media_type="text/event-stream")
        if kind == "gzipstream":
            import gzip

            return Response(
                gzip.compress(b"".join(chunks(model, f"answer from {model}"))),
                media_type="text/event-stream",
                headers={"content-encoding": "gzip"},
            )
        text = f"answer from {model}"
        if kind == "slowstream":

            async def slow():
                try:
                    for i in range(1200):
                        yield f"data: {json.dumps({'n': i})}\n\n".encode()
                        await asyncio.sleep(0.05)
                finally:
                    closed.append(model)

            return StreamingResponse(slow(), media_type="text/event-stream")
        if body.get("stream"):

            async def gen():
                for c in chunks(model, text):
                    yield c

            return StreamingResponse(gen(), media_type="text/event-stream")
        return JSONResponse(completion(model, text))

    app = Starlette(routes=[Route("/{kind}/v1/chat/completions", chat, methods=["POST"])])
    app.state.seen, app.state.closed = seen, closed
    return app


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc=None, timeout_s: float = 60.0) -> None:
    """Poll `url`/readyz until it answers 200; a server process (`proc`) that exits first, or a deadline that
    passes, is a RuntimeError carrying what the process printed on stderr."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            err = proc.stderr.read() if proc is not None and proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"the server at {url} did not become ready: {err}")
        time.sleep(0.1)


class BackgroundServer:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1 (a free port unless given); a context manager."""

    def __init__(self, app, port: int = 0):
        import uvicorn

        self.port = port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        # a stand-in's hanging requests are cut after 2 s at shutdown instead of holding the thread
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )

    def __enter__(self) -> "BackgroundServer":
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def main(argv=None) -> None:
    """`python -m lr_onnx.serve.standin --port P`: the stand-in in its own process (the serve benchmark)."""
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    uvicorn.run(standin_app(record=False), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
