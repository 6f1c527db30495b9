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
import tempfile
import time
from pathlib import Path

import numpy as np

from ...runtime.features import IMAGE_DIM, n_words, pool_images, query_features
from ...runtime.policy import choose
from ...runtime.preprocess import ImageSpec, TextSpec, image_tensor, load_tokenizer, open_image, tokenize
from .footprint import EXAMPLES, QUESTION, REPO, cold_start, cpu_name, install_size, peak_rss


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


def _interleaved(fns: dict, n: int) -> dict:
    """p50/p95 of each function, timed in turns (a, b, c, a, b, c, ...): a host whose speed drifts (a shared
    VM) slows every variant alike, so the ratios between them hold where sequential blocks would not."""
    for fn in fns.values():
        fn()
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: _pct(v) for k, v in times.items()}


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

    from ..train.model import LatentRouter, RouterConfig

    net = LatentRouter(RouterConfig(model_dim=S + 8, slices=S)).eval()
    c = torch.randn(S, net.slice_prior.centroids.shape[1])
    net.slice_prior.centroids.copy_(c / c.norm(dim=1, keepdim=True))
    return net, S + 8


class Pipelines:
    """The same model three ways: ORT fp32 graphs, ORT int8-encoder graphs, PyTorch eager."""

    def __init__(self, tmp: Path, threads: int):
        import torch

        from ..train.encoders import load_image_encoder, load_text_encoder, minilm_dir
        from .graphs import export_graphs
        from .quantise import quantize_encoders

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
        self.tmp, self.threads = tmp, threads
        self.sess: dict = {}
        self.model_feat = np.random.default_rng(0).normal(size=(10, self.P)).astype(np.float32)

    def open_sessions(self, variants: tuple[str, ...]) -> None:
        """ONNX Runtime sessions of these variants, replacing any open ones. Spinning stays off (`Router.load`'s
        default): a pipeline is three sessions, and with spinning on each one's idle pool spins while the
        next runs (measured: 32.6 ms end to end at B=1 against 15.8 ms without), and takes the cores from
        the PyTorch turns too."""
        import gc

        from ...runtime.sessions import new_session

        from ...runtime.sessions import SMALL_BATCH

        self.sess = {}
        gc.collect()
        self.small_batch = SMALL_BATCH
        self.sess = {
            v: {
                g: new_session(self.tmp / v / f"{g}.onnx", provider="cpu", threads=self.threads, spinning=False)
                for g in ("image_encoder", "text_encoder", "router")
            }
            for v in variants
        }
        for v in variants:  # as Router does: small router batches on a single-threaded twin of the graph
            self.sess[v]["router_small"] = new_session(
                self.tmp / v / "router.onnx", provider="cpu", threads=1, spinning=False
            )

    # one stage at a time, so the breakdown and the end-to-end path share code
    def decode(self, data: bytes):
        return open_image(data, draft_size=self.spec.size)

    def prep(self, img, variant: str = "fp32"):
        """ONNX Runtime's input: the runtime's own preprocessing. PyTorch's: what a PyTorch user writes, the
        torchvision way (PIL letterbox, then a uint8 tensor converted, scaled and normalised in torch)."""
        if variant != "torch":
            return image_tensor(img, self.spec)
        import torch
        from PIL import Image

        from ...runtime.preprocess import _RESAMPLE

        w, h = img.size
        s = self.spec.size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        canvas = Image.new("RGB", (self.spec.size, self.spec.size), tuple(self.spec.pad))
        canvas.paste(
            img.resize((nw, nh), _RESAMPLE[self.spec.resample]),
            ((self.spec.size - nw) // 2, (self.spec.size - nh) // 2),
        )
        x = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float().div(255.0)  # TF.to_tensor
        mean, std = torch.tensor(self.spec.mean), torch.tensor(self.spec.std)
        return x.sub(mean[:, None, None]).div(std[:, None, None]).numpy()  # TF.normalize

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
        graph = "router_small" if len(q) <= self.small_batch else "router"
        return self.sess[variant][graph].run(None, {"query": q, "model_feat": mf, "avail": avail})[
            3
        ]  # the router graph is fp32 in both

    def route(self, variant: str, images: list[bytes | None], questions: list[str]) -> np.ndarray:
        """Decode + preprocess + encoders + router + policy for a batch; returns the choices."""
        pix = [self.prep(self.decode(b), variant) for b in images if b is not None]
        text = self.text(variant, questions)
        img = np.zeros((len(questions), IMAGE_DIM), np.float32)
        if pix:
            per = self.image(variant, np.stack(pix))
            j = 0
            for i, b in enumerate(images):
                if b is not None:
                    img[i] = pool_images(per[j : j + 1])
                    j += 1
        q = query_features(text, img, [int(b is not None) for b in images], [n_words(x) for x in questions])
        mt = self.router(variant, q)
        return choose(mt, np.zeros(mt.shape[1]), np.ones(mt.shape, bool), 0.0)


def run_bench(out: Path | None = None, *, quick: bool = False, threads: int | None = None) -> dict:
    threads = threads or os.cpu_count() or 1
    reps = 10 if quick else 50
    jpeg = _jpeg_640x480()
    res: dict = {
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({cpu_name()}), no GPU used",
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "threads": threads,
        "quick": quick,
        "repeats": reps,
    }
    with tempfile.TemporaryDirectory() as td:
        P = Pipelines(Path(td), threads)
        import onnxruntime
        import torch

        res["versions"] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
        img = P.decode(jpeg)
        px = P.prep(img)[None]
        res["decoded_size"] = list(img.size)
        q1 = np.random.default_rng(1).normal(size=(1, 1667)).astype(np.float32)
        r64 = 1 if quick else 3
        imgs64 = [P.decode(jpeg) for _ in range(64)]

        def each(make, n):
            return _interleaved({name: make(v) for v, name in variants}, n)

        P.open_sessions(("fp32", "int8"))  # spinning off: idle pools sleep, so they never slow the PyTorch turns
        variants = (("fp32", "ort_fp32"), ("int8", "ort_int8"), ("torch", "torch"))
        order = tuple(name for _, name in variants)
        res["e2e_b1_ms"] = each(lambda v: lambda: P.route(v, [jpeg], [QUESTION]), reps)
        res["e2e_text_only_b1_ms"] = each(lambda v: lambda: P.route(v, [None], ["What is 37 + 58?"]), reps)
        best_ort = min(res["e2e_b1_ms"]["ort_fp32"]["p50"], res["e2e_b1_ms"]["ort_int8"]["p50"])
        res["speedup_vs_torch_b1"] = round(res["e2e_b1_ms"]["torch"]["p50"] / best_ort, 2)
        stage_fns = {
            "decode": lambda v: lambda: P.decode(jpeg),
            "preprocess": lambda v: lambda: P.prep(img, v),
            "image_encoder": lambda v: lambda: P.image(v, px),
            "text_encoder": lambda v: lambda: P.text(v, [QUESTION]),
            "router": lambda v: lambda: P.router(v, q1),
        }
        st = {stage: each(make, reps * (4 if stage == "router" else 1)) for stage, make in stage_fns.items()}
        res["stages_b1_ms_p50"] = {k: {stage: st[stage][k]["p50"] for stage in stage_fns} for k in order}
        # where the B=64 time goes: each stage over a whole batch of 64 (medians of a few runs)
        s64 = {
            "decode": lambda v: lambda: [P.decode(jpeg) for _ in range(64)],
            "preprocess": lambda v: lambda: [P.prep(i, v) for i in imgs64],
            "image_encoder": lambda v: lambda: P.image(v, np.repeat(px, 64, 0)),
            "text_encoder": lambda v: lambda: P.text(v, [QUESTION] * 64),
            "router": lambda v: lambda: P.router(v, np.repeat(q1, 64, 0)),
        }
        st64 = {stage: each(make, r64) for stage, make in s64.items()}
        res["stages_b64_ms_median"] = {k: {stage: st64[stage][k]["p50"] for stage in s64} for k in order}
        res["throughput_qps"] = {}
        for B in (64, 256):
            imgs = [jpeg if i % 8 else None for i in range(B)]  # 1 in 8 queries text-only, as in the demo set
            qs = [QUESTION if i % 8 else "What is 37 + 58?" for i in range(B)]
            t = each(lambda v: lambda: P.route(v, imgs, qs), 1 if quick else 3)
            res["throughput_qps"][f"b{B}"] = {k: round(B / (t[k]["p50"] / 1000), 1) for k in order}
        res["router_b1_k16_ms"] = _pct(_timeit(lambda: P.router("fp32", q1, K=16), reps * 4))["p50"]
        res["router_vs_k"] = {
            str(K): _pct(_timeit(lambda: P.router("fp32", q1, K=K), reps * 2))["p50"] for K in (2, 4, 8, 16, 32, 64)
        }
        res["router_vs_b_k16"] = {
            str(B): _pct(_timeit(lambda: P.router("fp32", np.repeat(q1, B, 0), K=16), max(3, reps // 2)))["p50"]
            for B in (1, 8, 64, 256)
        }
        P.open_sessions(())  # closed before the default bundle, cold start and memory are measured
        res["default_bundle_e2e_b1_ms"] = _default_bundle_latency(jpeg, reps)
    res["cold_start_s"] = cold_start(3 if quick else 5)
    res["peak_rss_mb"] = peak_rss()
    res["runtime_install_mb"], res["install_breakdown_mb"] = install_size()
    db = res["default_bundle_e2e_b1_ms"]
    res["targets"] = {
        "ort_3x_faster_than_torch_b1": res["speedup_vs_torch_b1"] >= 3.0,
        "preprocess_le_0_5ms": res["stages_b1_ms_p50"]["ort_int8"]["preprocess"] <= 0.5,
        "router_and_numpy_le_5pct_of_e2e_b1": db["decide"]["p50"] <= 0.05 * db["image"]["p50"],
        "router_b1_k16_le_1ms": res["router_b1_k16_ms"] <= 1.0,
        "e2e_p50_le_30ms_640x480": min(res["e2e_b1_ms"]["ort_fp32"]["p50"], res["e2e_b1_ms"]["ort_int8"]["p50"])
        <= 30.0,
        "cold_start_le_1s": res["cold_start_s"] <= 1.0,
        "peak_rss_le_300mb": res["peak_rss_mb"] <= 300,
        "runtime_install_le_50mb": res["runtime_install_mb"] <= 50,
    }
    out = Path(out or REPO / "benchmarks" / "results" / f"{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..files import atomic_write_text

    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), table(res))
    return res


def _default_bundle_latency(jpeg: bytes, reps: int) -> dict:
    from ...runtime.router import Router

    r = Router.load()
    r.route([jpeg], QUESTION)
    prepared = r.prepare([jpeg], QUESTION)
    q, opts = r.encode([prepared]), r.options()
    # "decide": everything after the encoders (per-query costs, the router graph, coverage, the decision),
    # timed in turns with the whole route, so its share of the end-to-end time is read off one stretch of time
    return _interleaved(
        {
            "image": lambda: r.route([jpeg], QUESTION),
            "text_only": lambda: r.route(None, "What is 37 + 58?"),
            "decide": lambda: r.decide(q, [opts], meta=[prepared.meta]),
        },
        reps,
    )


def table(r: dict) -> str:
    e, t, th = r["e2e_b1_ms"], r["e2e_text_only_b1_ms"], r["throughput_qps"]
    lines = [
        f"# lr-onnx benchmark: {r['device']}",
        "",
        f"`lr-onnx bench{' --quick' if r['quick'] else ''}`, {r['repeats']} repeats, {r['threads']} threads, "
        f"onnxruntime {r['versions']['onnxruntime']}, torch {r['versions']['torch']}.",
        "",
        "| path | e2e B=1 640x480 JPEG p50 / p95 ms | text-only p50 ms | B=64 q/s | B=256 q/s |",
        "|---|---|---|---|---|",
    ]
    for k in ("ort_fp32", "ort_int8", "torch"):
        lines.append(
            f"| {k} | {e[k]['p50']:.1f} / {e[k]['p95']:.1f} | {t[k]['p50']:.1f} | {th['b64'][k]} | {th['b256'][k]} |"
        )
    s = r["stages_b1_ms_p50"]
    lines += ["", "| stage (B=1, p50 ms) | " + " | ".join(s) + " |", "|---|" + "---|" * len(s)]
    for st in ("decode", "preprocess", "image_encoder", "text_encoder", "router"):
        lines.append(f"| {st} | " + " | ".join(f"{s[k][st]:.2f}" for k in s) + " |")
    if "stages_b64_ms_median" in r:
        s64 = r["stages_b64_ms_median"]
        lines += ["", "| stage (B=64, whole batch, ms) | " + " | ".join(s64) + " |", "|---|" + "---|" * len(s64)]
        for st in ("decode", "preprocess", "image_encoder", "text_encoder", "router"):
            lines.append(f"| {st} | " + " | ".join(f"{s64[k][st]:.1f}" for k in s64) + " |")
    lines += [
        "",
        f"- speed-up of ONNX Runtime over PyTorch eager at B=1: **{r['speedup_vs_torch_b1']}x** "
        "(the variants timed in turns)",
        f"- router graph alone, B=1, K=16: **{r['router_b1_k16_ms']} ms**; vs K: "
        + ", ".join(f"K={k}: {v} ms" for k, v in r["router_vs_k"].items()),
        "- router vs B (K=16): " + ", ".join(f"B={k}: {v} ms" for k, v in r["router_vs_b_k16"].items()),
        f"- default bundle (int8 text encoder), B=1: image {r['default_bundle_e2e_b1_ms']['image']['p50']} ms, "
        f"text-only {r['default_bundle_e2e_b1_ms']['text_only']['p50']} ms (p50); after the encoders (costs, "
        f"router graph, coverage, decision): {r['default_bundle_e2e_b1_ms']['decide']['p50']} ms",
        f"- CLI cold start (`lr-onnx route IMAGE QUESTION`, whole process): **{r['cold_start_s']} s**",
        f"- peak RSS of a routing process: **{r['peak_rss_mb']} MB**",
        f"- lr-onnx installed (code + default bundle, without onnxruntime): **{r['runtime_install_mb']} MB**; "
        f"dependencies: "
        + ", ".join(
            f"{k} {v} MB"
            for k, v in r["install_breakdown_mb"].items()
            if k not in ("lr_onnx_code", "lr_onnx_assets", "lr-onnx")
        ),
        "",
        "| target | met |",
        "|---|---|",
    ]
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
