"""`lr-onnx bench`: routing latency, throughput, memory and cold start, ONNX Runtime vs PyTorch eager.

Everything is measured side by side in one process on the same weights and inputs:
a LatentRouter (seeded weights; latency does not depend on their values) with the
pretrained encoders, exported to fp32 graphs and to int8-encoder graphs in a
temporary folder, against the same modules run by PyTorch eager. The shipped
default bundle is measured too (cold start, memory, its own end-to-end latency).
Results go to benchmarks/results/<host>.json and a markdown table next to it.
"""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..runtime.features import n_words, pool_images, query_features
from ..runtime.policy import choose
from ..runtime.preprocess import ImageSpec, TextSpec, image_tensor, load_tokenizer, open_image, tokenize

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "assets" / "examples"
QUESTION = "What is the total amount on this receipt?"


def _pct(xs) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3)}


def _timeit(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _jpeg_640x480() -> bytes:
    from PIL import Image

    img = Image.open(EXAMPLES / "coffee.jpg").convert("RGB").resize((640, 480))
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90)
    return b.getvalue()


def shipped_shape_router(S: int = 58):
    """An untrained LatentRouter of the default bundle's shape (slice prior over S = 58 slices, P_in = S + 8)
    with random unit centroids: timings need the shape, not the weights. Returns (router, P_in)."""
    import torch

    from .model import LatentRouter, RouterConfig

    net = LatentRouter(RouterConfig(model_dim=S + 8, slices=S)).eval()
    c = torch.randn(S, net.slice_prior.centroids.shape[1])
    net.slice_prior.centroids.copy_(c / c.norm(dim=1, keepdim=True))
    return net, S + 8


class Pipelines:
    """The same model three ways: ORT fp32 graphs, ORT int8-encoder graphs, PyTorch eager."""

    def __init__(self, tmp: Path, threads: int):
        import torch

        from ..runtime.sessions import new_session
        from .encoders import load_image_encoder, load_text_encoder, minilm_dir
        from .export import export_graphs, quantize_encoders

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.net, self.P = shipped_shape_router()
        self.img_t, self.txt_t = load_image_encoder(), load_text_encoder()
        self.spec, tspec = ImageSpec(), TextSpec()
        self.tok = load_tokenizer(minilm_dir() / "tokenizer.json", tspec)
        (tmp / "fp32").mkdir()
        export_graphs(self.net, tmp / "fp32")
        shutil.copytree(tmp / "fp32", tmp / "int8")
        calib = np.stack([image_tensor(open_image(p), self.spec) for p in sorted(EXAMPLES.glob("*.*g"))])
        quantize_encoders(tmp / "int8", np.concatenate([calib] * 8))
        # spinning off: six sessions spinning on 2 cores slow each other and the torch rows (onnx-notes 4.5)
        self.sess = {v: {g: new_session(tmp / v / f"{g}.onnx", provider="cpu", threads=threads, spinning=False)
                         for g in ("image_encoder", "text_encoder", "router")} for v in ("fp32", "int8")}
        self.model_feat = np.random.default_rng(0).normal(size=(10, self.P)).astype(np.float32)

    # one stage at a time, so the breakdown and the end-to-end path share code
    def decode(self, data: bytes):
        return open_image(data, draft_size=self.spec.size)

    def prep(self, img):
        return image_tensor(img, self.spec)

    def image(self, variant: str, px: np.ndarray) -> np.ndarray:
        if variant == "torch":
            import torch

            with torch.no_grad():
                return self.img_t(torch.from_numpy(px)).numpy()
        return self.sess[variant]["image_encoder"].run(None, {"pixels": px})[0]

    def text(self, variant: str, questions: list[str]) -> np.ndarray:
        ids, mask = tokenize(self.tok, questions)
        if variant == "torch":
            import torch

            with torch.no_grad():
                return self.txt_t(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        return self.sess[variant]["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def router(self, variant: str, q: np.ndarray, K: int = 10) -> np.ndarray:
        mf = np.broadcast_to(np.resize(self.model_feat, (K, self.P)), (len(q), K, self.P)).copy()
        avail = np.ones((len(q), K), bool)
        if variant == "torch":
            import torch

            with torch.no_grad():
                return self.net(torch.from_numpy(q), torch.from_numpy(mf), torch.from_numpy(avail))[3].numpy()
        return self.sess["fp32" if variant == "int8" else variant]["router"].run(
            None, {"query": q, "model_feat": mf, "avail": avail})[3]  # the router graph is fp32 in both

    def route(self, variant: str, images: list[bytes | None], questions: list[str]) -> np.ndarray:
        """Decode + preprocess + encoders + router + policy for a batch; returns the choices."""
        pix = [self.prep(self.decode(b)) for b in images if b is not None]
        text = self.text(variant, questions)
        img = np.zeros((len(questions), 1280), np.float32)
        if pix:
            per = self.image(variant, np.stack(pix))
            j = 0
            for i, b in enumerate(images):
                if b is not None:
                    img[i] = pool_images(per[j:j + 1])
                    j += 1
        q = query_features(text, img, [int(b is not None) for b in images], [n_words(x) for x in questions])
        mt = self.router(variant, q)
        return choose(mt, np.zeros(mt.shape[1]), np.ones(mt.shape, bool), 0.0)


def run_bench(out: Path | None = None, *, quick: bool = False, threads: int | None = None) -> dict:
    threads = threads or os.cpu_count() or 1
    reps = 10 if quick else 50
    jpeg = _jpeg_640x480()
    res: dict = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                           f"({_cpu_name()}), no GPU used",
                 "host": socket.gethostname(), "python": platform.python_version(), "threads": threads,
                 "quick": quick, "repeats": reps}
    with tempfile.TemporaryDirectory() as td:
        P = Pipelines(Path(td), threads)
        import onnxruntime
        import torch

        res["versions"] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
        e2e, e2e_text = {}, {}
        for v, name in (("fp32", "ort_fp32"), ("int8", "ort_int8"), ("torch", "torch")):
            e2e[name] = _pct(_timeit(lambda: P.route(v, [jpeg], [QUESTION]), reps))
            e2e_text[name] = _pct(_timeit(lambda: P.route(v, [None], ["What is 37 + 58?"]), reps))
        res["e2e_b1_ms"] = e2e
        res["e2e_text_only_b1_ms"] = e2e_text
        best_ort = min(e2e["ort_fp32"]["p50"], e2e["ort_int8"]["p50"])
        res["speedup_vs_torch_b1"] = round(e2e["torch"]["p50"] / best_ort, 2)
        img = P.decode(jpeg)
        px = P.prep(img)[None]
        q1 = np.random.default_rng(1).normal(size=(1, 1667)).astype(np.float32)
        stages = {}
        for v, name in (("fp32", "ort_fp32"), ("int8", "ort_int8"), ("torch", "torch")):
            stages[name] = {
                "decode": _pct(_timeit(lambda: P.decode(jpeg), reps))["p50"],
                "preprocess": _pct(_timeit(lambda: P.prep(img), reps))["p50"],
                "image_encoder": _pct(_timeit(lambda: P.image(v, px), reps))["p50"],
                "text_encoder": _pct(_timeit(lambda: P.text(v, [QUESTION]), reps))["p50"],
                "router": _pct(_timeit(lambda: P.router(v, q1), reps * 4))["p50"],
            }
        res["stages_b1_ms_p50"] = stages
        res["router_b1_k16_ms"] = _pct(_timeit(lambda: P.router("fp32", q1, K=16), reps * 4))["p50"]
        res["router_vs_k"] = {str(K): _pct(_timeit(lambda: P.router("fp32", q1, K=K), reps * 2))["p50"]
                              for K in (2, 4, 8, 16, 32, 64)}
        res["router_vs_b_k16"] = {str(B): _pct(_timeit(
            lambda: P.router("fp32", np.repeat(q1, B, 0), K=16), max(3, reps // 2)))["p50"] for B in (1, 8, 64, 256)}
        res["throughput_qps"] = {}
        for B in (64, 256):
            imgs = [jpeg if i % 8 else None for i in range(B)]  # 1 in 8 queries text-only, as in the demo set
            qs = [QUESTION if i % 8 else "What is 37 + 58?" for i in range(B)]
            r = 1 if quick else 3
            res["throughput_qps"][f"b{B}"] = {
                name: round(B / float(np.median(_timeit(lambda: P.route(v, imgs, qs), r, warmup=1))), 1)
                for v, name in (("fp32", "ort_fp32"), ("int8", "ort_int8"), ("torch", "torch"))}
        res["default_bundle_e2e_b1_ms"] = _default_bundle_latency(jpeg, reps)
    res["cold_start_s"] = _cold_start(3 if quick else 5)
    res["peak_rss_mb"] = _peak_rss()
    res["runtime_install_mb"], res["install_breakdown_mb"] = _install_size()
    res["targets"] = {
        "ort_2x_faster_than_torch_b1": res["speedup_vs_torch_b1"] >= 2.0,
        "router_b1_k16_le_1ms": res["router_b1_k16_ms"] <= 1.0,
        "e2e_p50_le_30ms_640x480": min(e2e["ort_fp32"]["p50"], e2e["ort_int8"]["p50"]) <= 30.0,
        "cold_start_le_1s": res["cold_start_s"] <= 1.0,
        "peak_rss_le_300mb": res["peak_rss_mb"] <= 300,
        "runtime_install_le_50mb": res["runtime_install_mb"] <= 50,
    }
    out = Path(out or REPO / "benchmarks" / "results" / f"{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from .files import atomic_write_text

    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), table(res))
    return res


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _default_bundle_latency(jpeg: bytes, reps: int) -> dict:
    from ..runtime.router import Router

    r = Router.load()
    r.route([jpeg], QUESTION)
    return {"image": _pct(_timeit(lambda: r.route([jpeg], QUESTION), reps)),
            "text_only": _pct(_timeit(lambda: r.route(None, "What is 37 + 58?"), reps))}


def _console() -> list[str]:
    exe = shutil.which("lr-onnx")
    return [exe] if exe else [sys.executable, "-m", "lr_onnx.cli"]


def _cold_start(n: int) -> float:
    """Wall time of a whole `lr-onnx route IMAGE QUESTION` process (median of n)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([*_console(), "route", str(EXAMPLES / "receipt.jpg"), QUESTION], check=True,
                       capture_output=True)
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


def _peak_rss() -> float:
    """Peak resident memory (MB) of a fresh process that loads the default bundle and routes."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(EXAMPLES / "coffee.jpg")], check=True,
                         capture_output=True, text=True).stdout
    return round(int(out.strip().splitlines()[-1]) / 1024, 1)


def _install_size() -> tuple[float, dict]:
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


def table(r: dict) -> str:
    e, t, th = r["e2e_b1_ms"], r["e2e_text_only_b1_ms"], r["throughput_qps"]
    lines = [f"# lr-onnx benchmark: {r['device']}", "",
             f"`lr-onnx bench{' --quick' if r['quick'] else ''}`, {r['repeats']} repeats, {r['threads']} threads, "
             f"onnxruntime {r['versions']['onnxruntime']}, torch {r['versions']['torch']}.", "",
             "| path | e2e B=1 640x480 JPEG p50 / p95 ms | text-only p50 ms | B=64 q/s | B=256 q/s |",
             "|---|---|---|---|---|"]
    for k in ("ort_fp32", "ort_int8", "torch"):
        lines.append(f"| {k} | {e[k]['p50']:.1f} / {e[k]['p95']:.1f} | {t[k]['p50']:.1f} | {th['b64'][k]} | "
                     f"{th['b256'][k]} |")
    s = r["stages_b1_ms_p50"]
    lines += ["", "| stage (B=1, p50 ms) | " + " | ".join(s) + " |", "|---|" + "---|" * len(s)]
    for st in ("decode", "preprocess", "image_encoder", "text_encoder", "router"):
        lines.append(f"| {st} | " + " | ".join(f"{s[k][st]:.2f}" for k in s) + " |")
    lines += ["", f"- speed-up of ONNX Runtime over PyTorch eager at B=1: **{r['speedup_vs_torch_b1']}x**",
              f"- router graph alone, B=1, K=16: **{r['router_b1_k16_ms']} ms**; vs K: "
              + ", ".join(f"K={k}: {v} ms" for k, v in r["router_vs_k"].items()),
              "- router vs B (K=16): " + ", ".join(f"B={k}: {v} ms" for k, v in r["router_vs_b_k16"].items()),
              f"- default bundle (int8 text encoder), B=1: image {r['default_bundle_e2e_b1_ms']['image']['p50']} ms, "
              f"text-only {r['default_bundle_e2e_b1_ms']['text_only']['p50']} ms (p50)",
              f"- CLI cold start (`lr-onnx route IMAGE QUESTION`, whole process): **{r['cold_start_s']} s**",
              f"- peak RSS of a routing process: **{r['peak_rss_mb']} MB**",
              f"- lr-onnx installed (code + default bundle, without onnxruntime): **{r['runtime_install_mb']} MB**; "
              f"dependencies: " + ", ".join(f"{k} {v} MB" for k, v in r["install_breakdown_mb"].items()
                                           if k not in ("lr_onnx_code", "lr_onnx_assets", "lr-onnx")),
              "", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="lr-onnx benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run_bench(a.out, quick=a.quick)
    print(table(res))


if __name__ == "__main__":
    main()
