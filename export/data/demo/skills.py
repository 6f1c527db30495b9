"""The simulated outcomes of the demo benchmark: a latent skill model calibrated to real accuracies.

OUTCOMES ARE SIMULATED. For model m and query i of family f (subtype s), with
visual difficulties d_text, d_clutter in [0, 1] measured from the rendering:

    logit P(correct) = alpha[m, f] + gamma[m, f, s]
                       - beta_text[m] * d_text - beta_clutter[m] * d_clutter
                       + u[i] + v[i, lineage(m)]

- alpha[m, f] is solved by bisection so that the model's mean probability over the
  family's queries equals its PUBLISHED accuracy for that family (`skills.json`,
  family mean of primary values; missing cells imputed by an additive
  model x family fit, flagged in the dataset README);
- gamma[m, f, s] ~ N(0, 0.8^2): seeded strengths per task type s within the family
  (reading a receipt total vs an item, bar vs pie charts, counting vs left/right,
  which photo subject, ...): the part of skill that public family means do not show;
- beta_text[m] = 0.5 + 5.0 (1 - read[m]) where `read` is the model's robustness to
  small print (high for native-resolution encoders, low for fixed low-resolution
  ones such as GPT-4o at detail=low); beta_clutter[m] = 0.6 + 2.5 (1 - size[m]) with
  size[m] = log(params) / log(100): small models lose more on busy pictures;
- u[i] ~ N(0, 0.7^2) is query difficulty shared by all models and v[i, g] ~ N(0, 0.5^2)
  is shared by models of one lineage (correlated errors).

The score is a Bernoulli draw (exact-match VQA); costs come from the published
per-token prices with approximate per-model image-token counts and output lengths.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ....runtime.errors import DataError
from ....runtime.validate import loads_json

# skills.json family feeding each demo family ("tables" has no public family: mean of docs and charts).
FAMILY_SOURCE = {
    "documents": ["documents_ocr"],
    "charts": ["charts"],
    "tables": ["documents_ocr", "charts"],
    "math": ["math"],
    "photos": ["general"],
    "spatial": ["spatial"],
    "text": ["text_only"],
}

# The candidate pool. read: robustness to small print (0..1, assumed from each model's published image
# handling); lineage: models sharing a language backbone or lab share errors; out_tokens: typical answer
# length (MiMo-VL-7B-RL is a reasoning model and writes long chains of thought); image tokens: approximate.
POOL = {
    "GPT4o": dict(read=0.35, lineage="openai", out_tokens=60, ms_tok=12, ttft=450, img="fixed:85"),
    "InternVL2_5-78B": dict(read=0.85, lineage="qwen", out_tokens=40, ms_tok=30, ttft=700, img="tiles:448:256"),
    "Qwen2.5-VL-72B-Instruct": dict(read=0.95, lineage="qwen", out_tokens=40, ms_tok=28, ttft=650, img="patch:28"),
    "Gemma3-27B": dict(read=0.50, lineage="google", out_tokens=50, ms_tok=18, ttft=400, img="fixed:256"),
    "Pixtral-12B": dict(read=0.90, lineage="mistral", out_tokens=70, ms_tok=12, ttft=300, img="patch:16"),
    "MiMo-VL-7B-RL": dict(read=0.85, lineage="mimo", out_tokens=700, ms_tok=9, ttft=250, img="patch:28"),
    "Qianfan-VL-8B": dict(read=0.70, lineage="qianfan", out_tokens=60, ms_tok=9, ttft=250, img="tiles:448:256"),
    "Phi-3.5-Vision": dict(read=0.50, lineage="phi", out_tokens=40, ms_tok=7, ttft=200, img="tiles:336:144"),
    "SmolVLM2": dict(read=0.30, lineage="smol", out_tokens=30, ms_tok=5, ttft=120, img="tiles:512:81"),
    "deepseek_vl2_tiny": dict(read=0.45, lineage="deepseek", out_tokens=35, ms_tok=5, ttft=150, img="tiles:384:196"),
}

SUBSKILL_SD = 0.8
QUERY_SD = 0.7
LINEAGE_SD = 0.5


def default_skills_path() -> Path:
    """Where the published-accuracy table is read from: `$LR_ONNX_SKILLS`, else
    `$LR_ONNX_SHARED_DATA/mllm-skills/skills.json`, else `../shared/data/mllm-skills/skills.json` beside the
    checkout. The table is the project's shared data, read in place and never copied into the package."""
    if os.environ.get("LR_ONNX_SKILLS"):
        return Path(os.environ["LR_ONNX_SKILLS"])
    shared = os.environ.get("LR_ONNX_SHARED_DATA") or Path(__file__).resolve().parents[4] / "shared" / "data"
    return Path(shared) / "mllm-skills" / "skills.json"


def load_skills(path: str | os.PathLike | None = None) -> dict:
    """The published-accuracy table (`mllm-skills/skills.json`: per-benchmark accuracies and prices)."""
    path = Path(path) if path is not None else default_skills_path()
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; the demo benchmark needs the mllm-skills table "
            f"(../shared/data/mllm-skills/skills.json, or --skills PATH / $LR_ONNX_SKILLS)"
        )
    skills = loads_json(path.read_bytes(), str(path), err=DataError)
    if not isinstance(skills, dict) or not isinstance(skills.get("models"), dict) or "families" not in skills:
        raise DataError(f"{path}: not an mllm-skills table (expected 'models' and 'families')")
    missing = [m for m in POOL if m not in skills["models"]]
    if missing:
        raise DataError(f"{path}: the demo pool's models {missing} are not in this table")
    return skills


def published_family_means(skills: dict) -> dict[str, dict[str, float]]:
    """Mean of the primary values of each skills.json family's benchmarks, per model (absent if none)."""
    out: dict[str, dict[str, float]] = {}
    for m, spec in skills["models"].items():
        out[m] = {}
        for fam, benches in skills["families"].items():
            vals = [spec["scores"][b]["value"] for b in benches if b in spec["scores"]]
            if vals:
                out[m][fam] = float(np.mean(vals))
    return out


def impute_additive(table: dict[str, dict[str, float]], iters: int = 200) -> dict[str, dict[str, float]]:
    """Fill missing model x family cells with mu + a[model] + b[family] fitted on the observed cells."""
    models = sorted(table)
    fams = sorted({f for row in table.values() for f in row})
    X = np.array([[table[m].get(f, np.nan) for f in fams] for m in models])
    obs = np.isfinite(X)
    mu, a, b = np.nanmean(X), np.zeros(len(models)), np.zeros(len(fams))
    for _ in range(iters):
        a = np.array([np.mean(X[i, obs[i]] - mu - b[obs[i]]) if obs[i].any() else 0.0 for i in range(len(models))])
        b = np.array([np.mean(X[obs[:, j], j] - mu - a[obs[:, j]]) for j in range(len(fams))])
    fit = mu + a[:, None] + b[None, :]
    return {
        m: {f: float(np.clip(X[i, j] if obs[i, j] else fit[i, j], 0.05, 0.97)) for j, f in enumerate(fams)}
        for i, m in enumerate(models)
    }


def family_targets(skills: dict) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, bool]]]:
    """Target accuracy per (pool model, demo family) and whether it rests on imputed numbers."""
    observed = published_family_means(skills)
    full = impute_additive(observed)
    targets, imputed = {}, {}
    for m in POOL:
        targets[m], imputed[m] = {}, {}
        for fam, sources in FAMILY_SOURCE.items():
            targets[m][fam] = float(np.mean([full[m][s] for s in sources]))
            imputed[m][fam] = any(s not in observed[m] for s in sources)
    return targets, imputed


def model_size(skills: dict, name: str) -> float:
    """0..1 scale of model capacity from its parameter count (undisclosed API models count as large)."""
    p = skills["models"][name].get("params_b")
    return 1.0 if p is None else float(np.clip(math.log(p) / math.log(100.0), 0.0, 1.0))


def image_tokens(spec: str, w: int, h: int) -> int:
    """Approximate visual tokens a model spends on a w x h image (see POOL)."""
    kind, *args = spec.split(":")
    if kind == "fixed":
        return int(args[0])
    if kind == "patch":
        p = int(args[0])
        return int(min(1280, math.ceil(w / p) * math.ceil(h / p)))
    tile, per = int(args[0]), int(args[1])
    tiles = min(6, math.ceil(w / tile) * math.ceil(h / tile))
    return per * (1 + tiles if tiles > 1 else 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(
    families: list[str],
    subtypes: list[str],
    d_text: np.ndarray,
    d_clutter: np.ndarray,
    words: np.ndarray,
    sizes: list[tuple[int, int] | None],
    seed: int,
    skills: dict | None = None,
):
    """Draw scores, costs, output tokens and latencies for every (query, pool model).

    Returns (names, Y, C, Tok, Lat, report) where report holds the calibration
    targets, imputation flags, realised family means and the probability table.
    """
    skills = skills or load_skills()
    names = list(POOL)
    targets, imputed = family_targets(skills)
    rng = np.random.default_rng([seed, 7])
    N, K = len(families), len(names)
    fam = np.array(families)
    sub = np.array([f"{f}/{s}" for f, s in zip(families, subtypes)])

    beta_t = np.array([0.5 + 5.0 * (1 - POOL[m]["read"]) for m in names])
    beta_c = np.array([0.6 + 2.5 * (1 - model_size(skills, m)) for m in names])
    lineages = sorted({POOL[m]["lineage"] for m in names})
    lin = np.array([lineages.index(POOL[m]["lineage"]) for m in names])
    u = rng.normal(0, QUERY_SD, size=(N, 1))
    v = rng.normal(0, LINEAGE_SD, size=(N, len(lineages)))[:, lin]
    gamma = np.zeros((N, K))
    for s in sorted(set(sub)):
        gamma[sub == s] = rng.normal(0, SUBSKILL_SD, size=K)
    z = gamma - beta_t * (d_text[:, None] - 0.5) - beta_c * (d_clutter[:, None] - 0.5) + u + v

    alpha = np.zeros((N, K))
    for f in sorted(set(families)):
        rows = fam == f
        target = np.array([targets[m][f] for m in names])
        lo, hi = np.full(K, -15.0), np.full(K, 15.0)
        for _ in range(60):  # bisection, all models at once
            mid = (lo + hi) / 2
            too_high = _sigmoid(mid + z[rows]).mean(axis=0) > target
            hi = np.where(too_high, mid, hi)
            lo = np.where(too_high, lo, mid)
        alpha[rows] = (lo + hi) / 2
    P = _sigmoid(alpha + z)
    Y = (rng.random((N, K)) < P).astype(float)

    price_in = np.array([skills["models"][m]["price_in_per_mtok"] for m in names])
    price_out = np.array([skills["models"][m]["price_out_per_mtok"] for m in names])
    t_img = np.array([[image_tokens(POOL[m]["img"], *s) if s else 0 for m in names] for s in sizes])
    t_in = 1.3 * words[:, None] + 20 + t_img
    out_mean = np.array([POOL[m]["out_tokens"] for m in names])
    Tok = np.maximum(1, np.round(out_mean * rng.lognormal(0, 0.4, size=(N, K)) * (1 + 0.5 * d_clutter[:, None])))
    C = (price_in * t_in + price_out * Tok) / 1e6
    Lat = np.round(
        np.array([POOL[m]["ttft"] for m in names]) + Tok * np.array([POOL[m]["ms_tok"] for m in names]) + 0.2 * t_img, 1
    )

    report = {
        "targets": targets,
        "imputed": imputed,
        "realised": {m: {f: float(Y[fam == f, k].mean()) for f in sorted(set(families))} for k, m in enumerate(names)},
        "beta_text": dict(zip(names, beta_t.round(3).tolist())),
        "beta_clutter": dict(zip(names, beta_c.round(3).tolist())),
        "P": P,
    }
    return names, Y, C, Tok, Lat, report


def pool_registry(skills: dict | None = None) -> list[dict]:
    """`models.json` entries for the pool: published prices and where they come from."""
    skills = skills or load_skills()
    out = []
    for m in POOL:
        s = skills["models"][m]
        out.append(
            {
                "name": m,
                "price_in_per_mtok": s["price_in_per_mtok"],
                "price_out_per_mtok": s["price_out_per_mtok"],
                "params_b": s.get("params_b"),
                "checkpoint": s.get("checkpoint"),
                "price_source": s.get("price_source"),
            }
        )
    return out
