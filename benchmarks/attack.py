"""The gateway under attack, measured in one run (issue 22): `python benchmarks/attack.py [--quick]`.

A real `lr-onnx serve` in its own process on 127.0.0.1 (route only, the shipped defaults except a long
body deadline, so stalled connections stay open for the whole phase: the worst case), and a load
generator here, both on this machine:

1. normal clients' throughput (POST /v1/route, half with the shipped chart.png) without, then with 150
   connections that sent their headers and one byte of body and then nothing (bar: ratio >= 0.8);
2. 8 requests each carrying a 79-megapixel PNG (about 10 KB each, 302 MiB of RGBA once decoded) sent
   together with ordinary requests: what they are answered, the server's peak RSS (bar: <= 600 MB) and
   the ordinary requests' p99 meanwhile;
3. the worst case the limits admit: 8 requests each with an image just under the per-image budget (RGBA
   4096 x 4000, 62.5 MiB decoded), together with ordinary requests: peak RSS, the seconds they take, and
   the ordinary requests' p99.

Results go to benchmarks/results/attack.json (the README quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

from lr_onnx.serve.standin import wait_until_ready

REPO = Path(__file__).resolve().parents[1]
CHART = "data:image/png;base64," + base64.b64encode((REPO / "assets" / "examples" / "chart.png").read_bytes()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_declaring(w: int, h: int) -> str:
    """A ~10 KB PNG whose header declares w x h RGBA pixels (a decompression bomb under the pixel limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\0" * (1 << 24), 9)[:10_000]
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_real(w: int, h: int) -> str:
    """A real RGBA PNG of w x h (a smooth gradient: small on the wire, every pixel decoded)."""
    from PIL import Image

    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    a = np.empty((h, w, 4), np.uint8)
    a[..., 0] = (x + 0 * y).astype(np.uint8)
    a[..., 1] = (y + 0 * x).astype(np.uint8)
    a[..., 2] = 128
    a[..., 3] = 200
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, "PNG", compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def vm_hwm_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def load(url: str, n: int, concurrency: int) -> dict:
    """n ordinary /v1/route requests (every other one with chart.png) from `concurrency` clients."""
    lat: list[float] = []
    codes: dict[str, int] = {}
    todo = iter(range(n))

    async def client(c: httpx.AsyncClient):
        for i in todo:
            body = {"question": f"What is the value of bar {i}?", "images": [CHART] if i % 2 else []}
            t = time.perf_counter()
            r = await c.post(f"{url}/v1/route", json=body)
            lat.append(time.perf_counter() - t)
            codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {
        "n": n,
        "qps": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "status": codes,
    }


async def heavy_with_ordinary(url: str, image: str, n_heavy: int, n_ordinary: int) -> dict:
    async def one(c):
        t = time.perf_counter()
        r = await c.post(f"{url}/v1/route", json={"question": "What does this show?", "images": [image]})
        return r.status_code, time.perf_counter() - t, r.json().get("error", {}).get("message", "")

    async with httpx.AsyncClient(timeout=120) as c:
        heavy = asyncio.gather(*(one(c) for _ in range(n_heavy)))
        ordinary = load(url, n_ordinary, 4)
        h, o = await asyncio.gather(heavy, ordinary)
    return {
        "heavy": {
            "n": n_heavy,
            "status": sorted({str(s) for s, _, _ in h}),
            "seconds_max": round(max(t for _, t, _ in h), 2),
            "message": h[0][2][:160],
        },
        "ordinary_during": o,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per phase")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attack.json"))
    a = ap.parse_args(argv)
    n = 60 if a.quick else 240
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as td:
        cfg = Path(td) / "serve.toml"
        cfg.write_text("[limits]\nbody_timeout_s = 600\n")  # stalled bodies stay open for the whole phase
        proc = subprocess.Popen(
            [sys.executable, "-m", "lr_onnx.cli", "serve", "--port", str(port), "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            try:
                wait_until_ready(url, proc, 120)
            except RuntimeError as e:
                raise SystemExit(str(e)) from None
            res: dict = {
                "server": "lr-onnx serve, shipped defaults (body_timeout_s raised to keep stalls open)",
                "host_cores": os.cpu_count(),
                "quick": a.quick,
            }
            asyncio.run(load(url, 20, 4))  # warm-up
            print("1. throughput without / with 150 stalled bodies", file=sys.stderr)
            base = asyncio.run(load(url, n, 8))
            socks = []
            for _ in range(150):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(
                    b"POST /v1/route HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 100000\r\n\r\n{"
                )
                socks.append(s)
            time.sleep(0.5)
            attacked = asyncio.run(load(url, n, 8))
            for s in socks:
                s.close()
            res["stalled_bodies"] = {
                "connections": 150,
                "without": base,
                "with": attacked,
                "ratio": round(attacked["qps"] / base["qps"], 3),
            }
            res["rss_mb_before_images"] = vm_hwm_mb(proc.pid)
            print("2. eight 79-megapixel PNGs with ordinary requests", file=sys.stderr)
            res["bombs_79mp"] = asyncio.run(heavy_with_ordinary(url, png_declaring(8900, 8900), 8, n // 2))
            res["bombs_79mp"]["server_peak_rss_mb"] = vm_hwm_mb(proc.pid)
            print("3. eight images just under the per-image budget with ordinary requests", file=sys.stderr)
            res["worst_admitted"] = asyncio.run(heavy_with_ordinary(url, png_real(4096, 4000), 8, n // 2))
            res["worst_admitted"]["image"] = "RGBA 4096 x 4000 PNG (62.5 MiB decoded; budget 64 MiB per image)"
            res["worst_admitted"]["server_peak_rss_mb"] = vm_hwm_mb(proc.pid)
            res["bars"] = {
                "stalled_ratio_ge_0_8": res["stalled_bodies"]["ratio"] >= 0.8,
                "bombs_peak_rss_le_600mb": res["bombs_79mp"]["server_peak_rss_mb"] <= 600,
            }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, a.out)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
