"""What the installed runtime costs a machine, outside the routing loop: a whole process's cold start, its peak
memory, the install size, the CPU it ran on."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "assets" / "examples"
QUESTION = "What is the total amount on this receipt?"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def console() -> list[str]:
    exe = shutil.which("lr-onnx")
    return [exe] if exe else [sys.executable, "-m", "lr_onnx.cli"]


def cold_start(n: int) -> float:
    """Wall time of a whole `lr-onnx route IMAGE QUESTION` process (median of n)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([*console(), "route", str(EXAMPLES / "receipt.jpg"), QUESTION], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)), 3)


# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the (large) benchmark parent.
PROBE = """
import sys
from lr_onnx import Router
r = Router.load()
for _ in range(3):
    r.route([sys.argv[1]], "What is the total amount on this receipt?")
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def peak_rss() -> float:
    """Peak resident memory (MB) of a fresh process that loads the default bundle and routes."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(EXAMPLES / "coffee.jpg")], check=True, capture_output=True, text=True
    ).stdout
    return round(int(out.strip().splitlines()[-1]) / 1024, 1)


def install_size() -> tuple[float, dict]:
    """Installed size of the runtime: lr-onnx itself (code + default bundle) and its serving dependencies."""
    from importlib import metadata

    sizes = {}
    for dist in ("lr-onnx", "numpy", "pillow", "tokenizers", "click"):
        try:
            files = metadata.distribution(dist).files or []
            sizes[dist] = round(sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 1e6, 1)
        except metadata.PackageNotFoundError:
            sizes[dist] = None
    pkg = REPO
    code = sum(p.stat().st_size for p in pkg.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts)
    bundle = sum(p.stat().st_size for p in (pkg / "assets").rglob("*") if p.is_file())
    sizes["lr_onnx_code"] = round(code / 1e6, 2)
    sizes["lr_onnx_assets"] = round(bundle / 1e6, 1)
    return round((code + bundle) / 1e6, 1), sizes
