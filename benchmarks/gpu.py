"""GPU throughput check for the lent accelerator machine (run by benchmarks/gpu.sh, <= 5 minutes).

B=256 queries through the same architecture: torch CUDA fp32 and fp16 (encoders + router on
the GPU; weights random-initialised: the pretrained encoder wheels cannot be carried there and
weights do not change speed), ONNX Runtime on the CPU with all cores (the shipped bundle), and
the ONNX Runtime CUDA / TensorRT providers when the installed onnxruntime offers them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def timed(fn, reps=5, warmup=2, sync=None):
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(out_path: str) -> None:
    import torch

    from lr_onnx.export.train.encoders import EfficientNetLite0, MiniLM
    from lr_onnx.export.bundle.bench import shipped_shape_router
    from lr_onnx.runtime.router import Router

    B, K = 256, 10
    res = {"batch": B, "models": K, "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    minilm_cfg = {
        "hidden_size": 384,
        "layer_norm_eps": 1e-12,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
    }
    torch.manual_seed(0)
    img, txt = EfficientNetLite0().eval(), MiniLM(minilm_cfg).eval()
    router, P_in = shipped_shape_router()
    px = torch.randn(B, 3, 224, 224)
    ids = torch.randint(1000, 5000, (B, 24))
    mask = torch.ones_like(ids)
    mf = torch.randn(B, K, P_in)
    avail = torch.ones(B, K, dtype=torch.bool)

    def pipeline(dtype, dev):
        with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32):
            i = img(px_d)
            t = txt(ids_d, mask_d)
            q = torch.cat([t, i, torch.zeros(B, 3, device=dev)], dim=1).float()
            return router(q, mf_d, avail_d)[3]

    if torch.cuda.is_available():
        dev = "cuda"
        res["device"] = torch.cuda.get_device_name(0)
        for m in (img, txt, router):
            m.to(dev)
        px_d, ids_d, mask_d, mf_d, avail_d = (x.to(dev) for x in (px, ids, mask, mf, avail))
        for name, dtype in (("torch_cuda_fp32", torch.float32), ("torch_cuda_fp16", torch.float16)):
            s = timed(lambda: pipeline(dtype, dev), reps=10, sync=torch.cuda.synchronize)
            res[name] = {"batch_s": round(s, 4), "qps": round(B / s, 1)}
            print(name, res[name], flush=True)
        for m in (img, txt, router):
            m.to("cpu")
    else:
        res["device"] = "no CUDA device visible to torch"

    import onnxruntime as ort

    res["onnxruntime"] = ort.__version__
    res["ort_providers_available"] = ort.get_available_providers()
    repo = Path(__file__).resolve().parents[1]
    jpeg = (repo / "assets" / "examples" / "coffee.jpg").read_bytes()
    queries = [([jpeg], "What does this image show?")] * B
    r = Router.load(provider="cpu", threads=os.cpu_count())
    s = timed(lambda: r.route_many(queries, batch_size=B), reps=3, warmup=1)
    res["ort_cpu_all_cores"] = {
        "threads": os.cpu_count(),
        "batch_s": round(s, 3),
        "qps": round(B / s, 1),
        "includes": "JPEG decode + preprocessing + encoders + router (shipped bundle)",
    }
    print("ort_cpu_all_cores", res["ort_cpu_all_cores"], flush=True)
    for prov in ("cuda", "tensorrt"):
        name = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[prov]
        if name in res["ort_providers_available"]:
            rg = Router.load(provider=prov)
            s = timed(lambda: rg.route_many(queries, batch_size=B), reps=3, warmup=1)
            res[f"ort_{prov}"] = {
                "batch_s": round(s, 3),
                "qps": round(B / s, 1),
                "bound": rg.bound_providers()["image_encoder"],
            }
        else:
            res[f"ort_{prov}"] = (
                f"not run: the installed onnxruntime {ort.__version__} is the CPU build; "
                f"onnxruntime-gpu (255 MB) cannot be installed on the lent machine"
            )
    res["note"] = "GPU and CPU figures come from different machines and are not comparable with the CPU benchmark."
    Path(out_path).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu.json")
