"""Measure BERT fusions for the MiniLM text encoder: two export routes, one table.

    python benchmarks/measure_text_fusion.py [OUT_JSON]

A) lr-onnx's own graph (torch.onnx.export, dynamo) optimised by onnxruntime.transformers.optimizer
   (model_type="bert"); B) optimum's exporter (feature-extraction) optimised by optimum's ORTOptimizer.
For each: fused-op counts, CPU latency at B=1 (one question) and B=64, parity of the pooled
sentence vector against PyTorch, file size. Writes benchmarks/results/text_encoder_fusion.json.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from lr_onnx.export.train.encoders import load_text_encoder, minilm_dir
from lr_onnx.export.bundle.graphs import export_graphs
from lr_onnx.export.train.model import LatentRouter, RouterConfig
from lr_onnx.runtime.preprocess import TextSpec, load_tokenizer, tokenize

FUSED = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "MatMul",
)
QS = ["What is the total amount on this receipt?"] + [f"Which segment is the largest in chart {i}?" for i in range(63)]


def ops(path):
    c = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {k: c.get(k, 0) for k in FUSED}


def latency(sess, feeds, reps=30):
    for _ in range(3):
        sess.run(None, feeds)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return round(float(np.median(ts)) * 1000, 3)


def pooled(out, mask):
    m = mask[..., None].astype(np.float32)
    return (out * m).sum(1) / np.maximum(m.sum(1), 1)


def main(out_json):
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", TextSpec())
    ids64, mask64 = tokenize(tok, QS)
    ids1, mask1 = tokenize(tok, QS[:1])
    with torch.no_grad():
        ref = load_text_encoder()(torch.from_numpy(ids64), torch.from_numpy(mask64)).numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    res = {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        export_graphs(LatentRouter(RouterConfig()).eval(), td)
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(td / "text_encoder.onnx"), model_type="bert", num_heads=12, hidden_size=384)
        opt.save_model_to_file(str(td / "a_opt.onnx"))
        for label, path in (
            ("A_dynamo_plain", td / "text_encoder.onnx"),
            ("A_dynamo_ort_bert_optimizer", td / "a_opt.onnx"),
        ):
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            got = s.run(None, {"input_ids": ids64, "attention_mask": mask64})[0]
            res[label] = {
                "ops": ops(path),
                "ms_b1": latency(s, {"input_ids": ids1, "attention_mask": mask1}),
                "ms_b64": latency(s, {"input_ids": ids64, "attention_mask": mask64}, reps=10),
                "max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
                "mb": round(path.stat().st_size / 1e6, 1),
            }
            print(label, res[label], flush=True)
        try:
            from optimum.exporters.onnx import main_export
            from optimum.onnxruntime import ORTOptimizer
            from optimum.onnxruntime.configuration import OptimizationConfig

            main_export(
                str(minilm_dir()),
                output=str(td / "optimum"),
                task="feature-extraction",
                opset=18,
                device="cpu",
                no_post_process=False,
            )
            optimizer = ORTOptimizer.from_pretrained(str(td / "optimum"))
            optimizer.optimize(OptimizationConfig(optimization_level=2), save_dir=str(td / "optimum_opt"))
            for label, path in (
                ("B_optimum_plain", td / "optimum" / "model.onnx"),
                ("B_optimum_ortoptimizer_O2", next((td / "optimum_opt").glob("*.onnx"))),
            ):
                s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                names = [i.name for i in s.get_inputs()]
                feeds = {"input_ids": ids64, "attention_mask": mask64}
                if "token_type_ids" in names:
                    feeds["token_type_ids"] = np.zeros_like(ids64)
                got = pooled(s.run(None, feeds)[0], mask64)
                f1 = {k: v[:1] for k, v in feeds.items()}
                f1 = {
                    "input_ids": ids1,
                    "attention_mask": mask1,
                    **({"token_type_ids": np.zeros_like(ids1)} if "token_type_ids" in names else {}),
                }
                res[label] = {
                    "ops": ops(path),
                    "ms_b1": latency(s, f1),
                    "ms_b64": latency(s, feeds, reps=10),
                    "max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
                    "mb": round(path.stat().st_size / 1e6, 1),
                    "note": "pooling done outside the graph",
                }
                print(label, res[label], flush=True)
        except Exception as e:  # optimum's exporter depends on transformers internals; record why it failed
            res["B_optimum"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            print(res["B_optimum"])
    Path(out_json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/text_encoder_fusion.json")
