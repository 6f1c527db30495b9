"""Forwarding a chat completion to the chosen model's upstream, with fallback down the utility ranking.

The upstream's answer goes back as it came (status, body, streamed SSE bytes, decoded when the upstream
compressed them anyway), with two exceptions: the configured upstream keys are redacted from anything
relayed, and an upstream that rejects our credentials (401/403) is a failed call, never the client's
401. A connection error, a 5xx, a credentials rejection or a missed deadline moves to the next
candidate, up to `retries` more; which model answered and which failed is said in headers. Deadlines:
a non-streamed call must finish within `timeout_s` as a whole (an upstream that drips bytes is cut off
too); a stream must send its first chunk within `timeout_s` and then never fall silent for longer than
`stream_idle_s`. A stream that breaks after its first chunk ends with an error event in OpenAI's stream
shape, a WARNING line and the upstream-error counter. A client that disconnects mid-stream closes the
upstream call. Keys come from the environment at call time and never appear in a log, an error or
anything sent back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import socket
import time

import httpx
from starlette.responses import Response, StreamingResponse

from .config import ServeConfig
from .metrics import Metrics
from .schema import HTTPError

_PASS_HEADERS = ("content-type", "openai-processing-ms", "x-request-id")
POOLS, CONNECTIONS_PER_POOL, KEEPALIVE_PER_POOL = 8, 32, 8
LOG_EVERY_S = 60.0
MAX_ERROR_BODY = 1 << 20  # an upstream's non-2xx body is read whole (to redact it) up to this size
log = logging.getLogger("lr_onnx.serve")


class Throttled:
    """Log lines throttled per key: the first, then at most one a minute with how many it stands for, so a
    flood (an upstream outage, clients dropping mid-body) never floods the log."""

    def __init__(self, logger: logging.Logger, every_s: float = LOG_EVERY_S):
        self.logger, self.every_s = logger, every_s
        self._seen: dict[tuple, tuple[float, int]] = {}  # key -> (last line, quiet since)

    def warning(self, key: tuple, msg: str, *args) -> None:
        now, (last, quiet) = time.monotonic(), self._seen.get(key, (float("-inf"), 0))
        if now - last >= self.every_s:
            more = f" ({quiet} more since the last line)" if quiet else ""
            self.logger.warning(msg + "%s", *args, more)
            self._seen[key] = (now, 0)
        else:
            self._seen[key] = (last, quiet + 1)


class _Failed(Exception):
    """One upstream call failed, for `reason`; the caller moves on to the next candidate."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Upstreams:
    """Upstream calls go through POOLS small httpx clients taken in turn. httpcore checks every connection of
    a pool on each request and each response close (a poll syscall and a dict of socket attributes each),
    so one pool of 32 busy connections spent ~18% of the event loop in that scan at concurrency 32; eight
    pools of a few connections each keep it short."""

    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(config.upstream.timeout_s),
                limits=httpx.Limits(max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=KEEPALIVE_PER_POOL),
            )
            for _ in range(POOLS)
        ]
        self._turn = itertools.count()
        self.throttled = Throttled(log)
        self.stop_by: float | None = None  # set at SIGTERM: streams still running then end with an error event

    def next_client(self) -> httpx.AsyncClient:
        return self.clients[next(self._turn) % POOLS]

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()

    async def fetch_image(self, url: str) -> bytes:
        """An http(s) image URL (only when the config allows it), within the size limit and within the time
        limit as a whole (a server that drips bytes slowly is cut off too, not only one that stalls). A host
        that resolves to a loopback, private, link-local or otherwise non-public address is refused unless
        `limits.allow_private_image_hosts` (no blind requests into the gateway's own network), and no
        redirect is followed (a 3xx is a failed fetch). The host is resolved once: the request goes to the very
        address that was checked (Host header and TLS server name kept), so a DNS answer that changes between
        the check and the connection (rebinding) cannot reach another address."""
        lim = self.config.limits
        cap = int(lim.image_url_max_mb * 1024 * 1024)
        try:
            async with asyncio.timeout(lim.image_url_timeout_s):
                parsed = httpx.URL(url)
                address = await _resolve(parsed, public_only=not lim.allow_private_image_hosts)
                ext = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
                async with self.next_client().stream(
                    "GET",
                    parsed.copy_with(host=address),
                    headers={"host": parsed.netloc.decode("ascii")},
                    timeout=lim.image_url_timeout_s,
                    extensions=ext,
                ) as resp:
                    if resp.status_code != 200:
                        raise HTTPError(400, f"image URL answered {resp.status_code}", code="image_url_failed")
                    return await read_capped(
                        resp.aiter_bytes(),
                        cap,
                        HTTPError(413, f"image URL is larger than {lim.image_url_max_mb:g} MB", code="image_too_large"),
                    )
        except (TimeoutError, httpx.TimeoutException):
            raise HTTPError(
                400, f"image URL not fetched within {lim.image_url_timeout_s:g} s", code="image_url_failed"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise HTTPError(
                400, f"image URL could not be fetched ({type(e).__name__})", code="image_url_failed"
            ) from None

    async def forward(
        self, body: dict, candidates: list[tuple[str, float | None]], *, stream: bool, headers: dict[str, str]
    ) -> Response:
        """Try `candidates` ([(pool model, utility or None when nothing was routed)], best first) until one
        answers; `headers` are ours to add."""
        failed: list[str] = []
        for name, utility in candidates[: 1 + self.config.upstream.retries]:
            ours = dict(headers, **{"x-lr-onnx-model": name})
            if utility is not None:
                ours["x-lr-onnx-utility"] = f"{utility:.6f}"
            try:
                return await self._call(name, body, stream, ours, failed)
            except _Failed as e:
                failed.append(self._fail(name, e.reason))
        raise HTTPError(
            502,
            f"no upstream answered: {', '.join(failed) or 'no candidate'}",
            type="upstream_error",
            code="upstream_failed",
            headers={**headers, "x-lr-onnx-failed": ", ".join(failed)},
        )

    async def _call(self, name: str, body: dict, stream: bool, ours: dict, failed: list[str]) -> Response:
        up = self.config.models[name]
        pol = self.config.upstream
        send = {"content-type": "application/json", "accept-encoding": "identity"}
        key = up.api_key()
        if key:
            send["authorization"] = f"Bearer {key}"
        client = self.next_client()
        req = client.build_request(
            "POST", f"{up.base_url}/chat/completions", json=dict(body, model=up.upstream_model), headers=send
        )
        t0 = time.perf_counter()
        resp = None
        try:
            async with asyncio.timeout(pol.timeout_s):  # non-streamed: the whole call; streamed: to the first chunk
                resp = await client.send(req, stream=True)
                if resp.status_code in (401, 403):
                    raise _Failed(f"upstream rejected our credentials: {resp.status_code}")
                if resp.status_code >= 500:
                    raise _Failed(str(resp.status_code))
                if failed:
                    ours["x-lr-onnx-failed"] = ", ".join(failed)
                passed = {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}
                if not stream or not 200 <= resp.status_code < 300:  # whole answers (and every error) are redacted
                    content = self._redact(
                        await read_capped(
                            resp.aiter_bytes(),
                            MAX_ERROR_BODY if resp.status_code >= 300 else 1 << 30,
                            _Failed("answer too large"),
                        )
                    )
                    await resp.aclose()
                    self.metrics.stage.labels("upstream").observe(time.perf_counter() - t0)
                    return Response(content, status_code=resp.status_code, headers={**passed, **ours})
                chunks = resp.aiter_bytes()
                first = await anext(chunks, b"")
        except (TimeoutError, httpx.TimeoutException):
            await _close(resp)
            raise _Failed("timeout") from None
        except httpx.HTTPError as e:
            await _close(resp)
            raise _Failed(_reason(e)) from None
        except _Failed:
            await _close(resp)
            raise
        return StreamingResponse(
            self._relay(name, resp, chunks, first, t0),
            status_code=resp.status_code,
            headers={**passed, **ours},
            media_type=resp.headers.get("content-type"),
        )

    async def _relay(self, name: str, resp: httpx.Response, chunks, first: bytes, t0: float):
        """The upstream's stream as it comes (decoded, redacted); an upstream that breaks off or falls silent
        for `stream_idle_s` ends the client's stream with an error event, not a silent truncation. Closing on
        the way out, also when the client went away."""
        idle = self.config.upstream.stream_idle_s
        tail = b""
        try:
            chunk = first
            while chunk:
                tail = (tail + chunk)[-64:]
                yield self._redact(chunk)
                wait = idle if self.stop_by is None else min(idle, self.stop_by - time.monotonic())
                try:
                    if wait <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(wait):
                        chunk = await anext(chunks, b"")
                except (TimeoutError, httpx.TimeoutException):
                    if self.stop_by is not None and time.monotonic() >= self.stop_by - 0.01:
                        yield self._stream_error(name, "the gateway is shutting down", upstream_fault=False)
                    else:
                        yield self._stream_error(name, f"stream idle for {idle:g} s")
                    return
                except httpx.HTTPError as e:
                    yield self._stream_error(name, f"stream broken ({type(e).__name__})")
                    return
            if b"[DONE]" not in tail and "event-stream" in resp.headers.get("content-type", ""):
                yield self._stream_error(name, "stream ended without [DONE]")
        finally:
            await resp.aclose()
            self.metrics.stage.labels("upstream").observe(time.perf_counter() - t0)

    def _stream_error(self, name: str, reason: str, *, upstream_fault: bool = True) -> bytes:
        if upstream_fault:
            self._fail(name, reason)
        event = {
            "error": {
                "message": f"the upstream of {name} failed mid-stream: {reason}",
                "type": "upstream_error",
                "code": "upstream_stream_failed",
            }
        }
        return f"data: {json.dumps(event)}\n\n".encode()

    def _redact(self, data: bytes) -> bytes:
        """Every configured upstream key, wherever an upstream echoed one back (error bodies quote them)."""
        for up in self.config.models.values():
            key = up.api_key()
            if key and len(key) >= 4 and key.encode() in data:
                data = data.replace(key.encode(), b"[redacted]")
        return data

    def _fail(self, name: str, reason: str) -> str:
        """Count a failed call and log it, throttled per (model, reason)."""
        self.metrics.upstream_errors.labels(name, _label(reason)).inc()
        self.throttled.warning((name, reason), "upstream of %s failed: %s", name, reason)
        return f"{name} ({reason})"


async def _resolve(url: httpx.URL, *, public_only: bool) -> str:
    """The address a URL's host resolves to, resolved here once; with `public_only`, a host with any address that is
    not public is refused (every address is checked)."""
    host = url.host
    if not host:
        raise HTTPError(400, "image URL has no host", code="image_url_failed")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise HTTPError(400, f"image URL host {host!r} does not resolve", code="image_url_failed") from None
    if not infos:
        raise HTTPError(400, f"image URL host {host!r} does not resolve", code="image_url_failed")
    for info in infos if public_only else ():
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            raise HTTPError(
                400,
                f"image URL host {host!r} resolves to a non-public address; refused (set "
                f"limits.allow_private_image_hosts to allow it)",
                code="image_url_private",
            )
    return str(infos[0][4][0]).split("%")[0]


def _label(reason: str) -> str:
    """The metric label of a failure reason: a few fixed values, whatever the message says."""
    if reason.startswith("upstream rejected"):
        return "credentials"
    if reason.startswith("stream"):
        return "stream"
    return reason


async def _close(resp: httpx.Response | None) -> None:
    if resp is not None:
        await resp.aclose()


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
