"""Forwarding a chat completion to the chosen model's upstream, with fallback down the utility ranking.

The upstream's answer goes back unchanged (status, body, streamed SSE bytes). A connection error, a
5xx or a timeout moves to the next candidate, up to `retries` more; which model answered and which
failed is said in headers, never silently. A client that disconnects mid-stream closes the upstream
call. Keys come from the environment at call time and never appear in a log, an error or a header
sent back.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time

import httpx
from starlette.responses import Response, StreamingResponse

from .config import ServeConfig
from .metrics import Metrics
from .schema import HTTPError

_PASS_HEADERS = ("content-type", "openai-processing-ms", "x-request-id")
POOLS, CONNECTIONS_PER_POOL, KEEPALIVE_PER_POOL = 8, 32, 8
LOG_EVERY_S = 60.0
log = logging.getLogger("lr_onnx.serve")


class Upstreams:
    """Upstream calls go through POOLS small httpx clients taken in turn. httpcore checks every connection of
    a pool on each request and each response close (a poll syscall and a dict of socket attributes each),
    so one pool of 32 busy connections spent ~18% of the event loop in that scan at concurrency 32; eight
    pools of a few connections each keep it short."""

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.clients = [httpx.AsyncClient(timeout=httpx.Timeout(config.upstream.timeout_s),
                                          limits=httpx.Limits(max_connections=CONNECTIONS_PER_POOL,
                                                              max_keepalive_connections=KEEPALIVE_PER_POOL))
                        for _ in range(POOLS)]
        self._turn = itertools.count()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (model, reason) -> (last line, quiet since)

    def next_client(self) -> httpx.AsyncClient:
        return self.clients[next(self._turn) % POOLS]

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()

    async def fetch_image(self, url: str) -> bytes:
        """An http(s) image URL (only when the config allows it), within the size limit and within the time
        limit as a whole (a server that drips bytes slowly is cut off too, not only one that stalls)."""
        lim = self.config.limits
        cap = int(lim.image_url_max_mb * 1024 * 1024)
        try:
            async with asyncio.timeout(lim.image_url_timeout_s):
                async with self.next_client().stream("GET", url, timeout=lim.image_url_timeout_s) as resp:
                    if resp.status_code != 200:
                        raise HTTPError(400, f"image URL answered {resp.status_code}", code="image_url_failed")
                    return await read_capped(resp.aiter_bytes(), cap, HTTPError(
                        413, f"image URL is larger than {lim.image_url_max_mb:g} MB", code="image_too_large"))
        except (TimeoutError, httpx.TimeoutException):
            raise HTTPError(400, f"image URL not fetched within {lim.image_url_timeout_s:g} s",
                            code="image_url_failed") from None
        except httpx.HTTPError as e:
            raise HTTPError(400, f"image URL could not be fetched ({type(e).__name__})",
                            code="image_url_failed") from None

    async def forward(self, body: dict, candidates: list[tuple[str, float]], *, stream: bool,
                      headers: dict[str, str]) -> Response:
        """Try `candidates` ([(pool model, utility)], best first) until one answers; `headers` are ours to add."""
        failed: list[str] = []
        for name, utility in candidates[: 1 + self.config.upstream.retries]:
            up = self.config.models[name]
            send = {"content-type": "application/json", "accept-encoding": "identity"}
            key = up.api_key()
            if key:
                send["authorization"] = f"Bearer {key}"
            client = self.next_client()
            req = client.build_request("POST", f"{up.base_url}/chat/completions",
                                       json=dict(body, model=up.upstream_model), headers=send)
            t0 = time.perf_counter()
            try:
                resp = await client.send(req, stream=True)
            except httpx.HTTPError as e:
                failed.append(self._fail(name, _reason(e)))
                continue
            if resp.status_code >= 500:
                await resp.aclose()
                failed.append(self._fail(name, str(resp.status_code)))
                continue
            ours = dict(headers, **{"x-lr-onnx-model": name, "x-lr-onnx-utility": f"{utility:.6f}"})
            if failed:
                ours["x-lr-onnx-failed"] = ", ".join(failed)
            passed = {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}
            if stream:
                return StreamingResponse(self._relay(resp, t0), status_code=resp.status_code,
                                         headers={**passed, **ours}, media_type=resp.headers.get("content-type"))
            try:
                content = await resp.aread()
            except httpx.HTTPError as e:
                failed.append(self._fail(name, _reason(e)))
                continue
            finally:
                await resp.aclose()
            self.metrics.stage.labels("upstream").observe(time.perf_counter() - t0)
            return Response(content, status_code=resp.status_code, headers={**passed, **ours})
        raise HTTPError(502, f"no upstream answered: {', '.join(failed) or 'no candidate'}", type="upstream_error",
                        code="upstream_failed", headers={**headers, "x-lr-onnx-failed": ", ".join(failed)})

    async def _relay(self, resp: httpx.Response, t0: float):
        """The upstream's bytes as they come; closing on the way out (also when the client went away)."""
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            self.metrics.stage.labels("upstream").observe(time.perf_counter() - t0)

    def _fail(self, name: str, reason: str) -> str:
        """Count a failed call, and log it: the first of each (model, reason), then at most one line a
        minute with how many it stands for, so an upstream outage does not flood the log."""
        self.metrics.upstream_errors.labels(name, reason).inc()
        now, (last, quiet) = time.monotonic(), self._logged.get((name, reason), (float("-inf"), 0))
        if now - last >= LOG_EVERY_S:
            more = f" ({quiet} more since the last line)" if quiet else ""
            log.warning("upstream of %s failed: %s%s", name, reason, more)
            self._logged[(name, reason)] = (now, 0)
        else:
            self._logged[(name, reason)] = (last, quiet + 1)
        return f"{name} ({reason})"


def _reason(e: httpx.HTTPError) -> str:
    return "timeout" if isinstance(e, httpx.TimeoutException) else "connection"


async def read_capped(chunks, cap: int, too_large: Exception) -> bytes:
    """Bytes from an async stream of chunks, refused (with `too_large`) as soon as they pass `cap`: a large
    body never sits in memory whole before it is refused."""
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > cap:
            raise too_large
    return bytes(data)
