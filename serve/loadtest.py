"""`lr-onnx bench serve`: the gateway under load, next to the in-process router, in one run.

A stand-in upstream answers at once, so the router itself is measured. The server runs as its own
process (`lr-onnx serve`, its peak RSS read from /proc); the load generator keeps C requests in flight
(C = 1, 8, 32), a fixed number each, mixed image and text-only chat completions. Then the overload
check: a server with a small queue gets an open-loop arrival rate of 4x the sustainable throughput for
a few seconds; the admitted requests must answer 200, the rest 503, nothing else, and nothing may hang.
The reference is `Router.route_many` on the same queries in this process, batched like the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..runtime.router import DEFAULT_BUNDLE, Router
from .standin import free_port

EXAMPLES = DEFAULT_BUNDLE.parent / "examples"
QUESTIONS = [
    "What is the total amount?",
    "Which bar is the highest?",
    "What does this picture show?",
    "Summarise this page in one sentence.",
    "What is 17 times 23?",
    "Name three prime numbers above 50.",
]


def workload(n: int) -> list[tuple[list[bytes], str]]:
    """n queries, every other one with one of the shipped example images."""
    images = [p.read_bytes() for p in sorted(EXAMPLES.glob("*")) if p.suffix in (".png", ".jpg")]
    return [
        ([images[i % len(images)]] if i % 2 == 0 else [], f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})") for i in range(n)
    ]


def _chat_body(images: list[bytes], question: str) -> bytes:
    parts = [{"type": "text", "text": question}] + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b).decode()}}
        for b in images
    ]
    return json.dumps({"model": "lr-onnx/auto", "messages": [{"role": "user", "content": parts}]}).encode()


class _StandIn:
    """The stand-in upstream in its own process, so it does not share the load generator's interpreter."""

    def __enter__(self):
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lr_onnx.serve.standin", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{self.url}/ok/v1/chat/completions", json={"model": "x"}, timeout=2)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the stand-in upstream did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class _Served:
    """`lr-onnx serve` in a subprocess, every pool model answered by the stand-in."""

    def __init__(self, upstream_url: str, names: list[str], *, queue_size: int, max_batch: int, bundle):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the shipped defaults, but for the queue and the batch size each phase sets
        cfg = [
            f"[limits]\nqueue_size = {queue_size}\n[batching]\nmax_batch = {max_batch}\n"
            f"[upstream]\ntimeout_s = 30\nretries = 0\n"
        ]
        cfg += [f'[models."{n}"]\nbase_url = "{upstream_url}/ok/v1"\nupstream_model = "{n}"\n' for n in names]
        fd, self.cfg = tempfile.mkstemp(suffix=".toml")
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(cfg))
        cmd = [sys.executable, "-m", "lr_onnx.cli", "serve", "--port", str(self.port), "--config", self.cfg]
        if bundle:
            cmd += ["--bundle", str(bundle)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lr-onnx serve did not become ready: {self.proc.stderr.read()[-500:]}")
            time.sleep(0.1)

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.cfg)


class _Conn:
    """A minimal keep-alive HTTP/1.1 client connection: requests are pre-encoded bytes, so the load generator
    spends its CPU on almost nothing (as wrk would) and the server, which shares the 2 cores, gets the rest."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def post(self, path: str, body: bytes, timeout: float) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            return await asyncio.wait_for(self._response(), timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> int:
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, path: str = "/v1/chat/completions") -> dict:
    """Keep `concurrency` requests in flight (one connection each) until every body was sent once."""
    lat, status, lost = [], {}, 0
    it = iter(bodies)

    async def worker():
        nonlocal lost
        conn = _Conn(_port(url))
        for body in it:
            t0 = time.perf_counter()
            try:
                code = await conn.post(path, body, 60)
                status[code] = status.get(code, 0) + 1
                lat.append(time.perf_counter() - t0)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                lost += 1
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(lat, status, lost, time.perf_counter() - t0, len(bodies))


async def _open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """Send at a fixed arrival rate for `seconds` (each arrival on a free keep-alive connection, a new one if
    none is free: arrivals never wait for answers); every request is awaited, 30 s at most."""
    lat_ok, status, lost = [], {}, 0
    idle: list[_Conn] = []

    async def one(body):
        nonlocal lost
        conn = idle.pop() if idle else _Conn(_port(url))
        t0 = time.perf_counter()
        try:
            code = await conn.post("/v1/chat/completions", body, 30)
            status[code] = status.get(code, 0) + 1
            if code == 200:
                lat_ok.append(time.perf_counter() - t0)
            idle.append(conn)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            lost += 1

    tasks, t0 = [], time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        while len(tasks) < elapsed * rate:  # catch up: arrivals do not wait for a busy client
            tasks.append(asyncio.create_task(one(bodies[len(tasks) % len(bodies)])))
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    for c in idle:
        c.close()
    out = _summary(lat_ok, status, lost, wall, len(tasks))
    out["offered_qps"] = round(len(tasks) / seconds, 1)
    return out


def _server_p99_ms(url: str, endpoint: str = "chat_completions") -> float | None:
    """The server's own p99 of the endpoint (arrival in the handler to answer), as the upper edge of the
    Prometheus histogram bucket that holds it: what the server controls, without the client's lag."""
    import httpx

    buckets = []
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("lr_onnx_request_seconds_bucket") and f'endpoint="{endpoint}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    edge = next(le for le, n in sorted(buckets) if n >= 0.99 * total)
    return None if edge == float("inf") else edge * 1000


def _summary(lat: list[float], status: dict, lost: int, wall: float, sent: int) -> dict:
    ms = np.asarray(lat) * 1000
    pct = {f"p{p}_ms": round(float(np.percentile(ms, p)), 1) if len(ms) else None for p in (50, 95, 99)}
    return {
        "requests": sent,
        "seconds": round(wall, 2),
        "qps": round(status.get(200, 0) / wall, 1),
        **pct,
        "status": {str(k): v for k, v in sorted(status.items())},
        "errors": sum(v for k, v in status.items() if k not in (200, 503)),
        "lost": lost,
    }


def run_serve_bench(
    out: str | os.PathLike | None = None, *, quick: bool = False, bundle=None, progress=lambda message: None
) -> dict:
    """Run every phase (`progress` hears of each as it starts) and write the JSON atomically."""
    n = 96 if quick else 256
    queries = workload(n)
    bodies = [_chat_body(im, q) for im, q in queries]
    route_bodies = [
        json.dumps({"question": q, "images": [base64.b64encode(b).decode() for b in im]}).encode() for im, q in queries
    ]
    router = Router.load(bundle)
    progress(f"in-process reference: Router.route_many on {n} queries, best of 3 passes")
    router.route_many(queries[:8], batch_size=8)  # warm the sessions
    best = float("inf")
    for _ in range(3):  # the reference at its best of three passes: the harder bar for the server
        t0 = time.perf_counter()
        router.route_many(queries, batch_size=32)
        best = min(best, time.perf_counter() - t0)
    ref_qps = n / best
    result = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "queries": n,
        "mix": "half with an image",
        "in_process_route_many": {"batch_size": 32, "qps": round(ref_qps, 1), "passes": "best of 3"},
        "levels": {},
    }
    with _StandIn() as up:
        progress("starting the stand-in upstream and lr-onnx serve")
        with _Served(up.url, router.names, queue_size=256, max_batch=32, bundle=bundle) as srv:
            asyncio.run(_closed_loop(srv.url, bodies[:16], 4))  # warm-up
            for c in (1, 8, 32):
                progress(f"concurrency {c}: {n} chat completions")
                result["levels"][str(c)] = asyncio.run(_closed_loop(srv.url, bodies, c))
            # the same queries through /v1/route: the gateway without the upstream hop
            progress(f"concurrency 32 on /v1/route: {n} requests")
            result["route_endpoint_c32"] = asyncio.run(_closed_loop(srv.url, route_bodies, 32, "/v1/route"))
            result["server_peak_rss_mb"] = srv.peak_rss_mb()
        progress("concurrency 32 without micro-batching (a server with max_batch = 1)")
        with _Served(up.url, router.names, queue_size=256, max_batch=1, bundle=bundle) as srv:
            asyncio.run(_closed_loop(srv.url, bodies[:16], 4))
            result["no_batching_c32"] = asyncio.run(_closed_loop(srv.url, bodies, 32))  # max_batch = 1
        sustainable = result["levels"]["32"]["qps"]
        progress(
            f"overload: {4 * sustainable:.0f} q/s offered for {3 if quick else 5} s to a server with a queue of 16"
        )
        with _Served(up.url, router.names, queue_size=16, max_batch=32, bundle=bundle) as srv:
            over = asyncio.run(_open_loop(srv.url, bodies, rate=4 * sustainable, seconds=3 if quick else 5))
            over["queue_size"] = 16
            over["server_side_p99_ms_at_most"] = _server_p99_ms(srv.url)
            result["overload_4x"] = over
            result["overload_server_peak_rss_mb"] = srv.peak_rss_mb()
    c32 = result["levels"]["32"]
    ratio = c32["qps"] / ref_qps
    result["targets"] = {
        "c32_throughput_ratio": round(ratio, 3),
        "c32_route_endpoint_ratio": round(result["route_endpoint_c32"]["qps"] / ref_qps, 3),
        "micro_batching_gain_c32": round(c32["qps"] / result["no_batching_c32"]["qps"], 2),
        "c32_at_least_0.8x_in_process": ratio >= 0.8,
        "zero_errors_and_lost": all(v["errors"] == 0 and v["lost"] == 0 for v in result["levels"].values()),
        "overload_only_200_or_503": over["errors"] == 0 and over["lost"] == 0 and "503" in over["status"],
        "overload_p99_admitted_ms": over["p99_ms"],
    }
    path = Path(out) if out else Path("benchmarks/results/serve.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return result


def table(r: dict) -> str:
    lines = [
        f"in-process Router.route_many (batch 32): {r['in_process_route_many']['qps']} q/s",
        f"{'concurrency':>11s} {'q/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'lost':>5s}",
    ]
    for c, v in r["levels"].items():
        lines.append(
            f"{c:>11s} {v['qps']:>7.1f} {v['p50_ms']:>8.1f} {v['p95_ms']:>8.1f} {v['p99_ms']:>8.1f} "
            f"{v['errors']:>6d} {v['lost']:>5d}"
        )
    o = r["overload_4x"]
    lines.append(
        f"overload: offered {o['offered_qps']} q/s to a queue of {o['queue_size']}: status {o['status']}, "
        f"p99 of the admitted {o['p99_ms']} ms at the client, <= {o['server_side_p99_ms_at_most']} ms in "
        f"the server, errors {o['errors']}, lost {o['lost']}"
    )
    rt = r["route_endpoint_c32"]
    lines.append(f"/v1/route at concurrency 32 (no upstream hop): {rt['qps']} q/s, p99 {rt['p99_ms']} ms")
    lines.append(f"without micro-batching (max_batch 1) at concurrency 32: {r['no_batching_c32']['qps']} q/s")
    lines.append(f"server peak RSS {r['server_peak_rss_mb']} MB; targets {r['targets']}")
    return "\n".join(lines)
