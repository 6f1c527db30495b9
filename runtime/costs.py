"""Per-query expected cost, before any model answers (numpy and the standard library only).

What a query costs a model depends on the query: an image's token count follows the model family's own
preprocessing of the image's ORIGINAL size, and a text-only question costs almost nothing. So:

    cost_k(query) = (price_in_k * (text_tokens + sum of image_tokens_k(w, h)) + price_out_k * out_tokens_k) / 1e6
    text_tokens   = ceil(1.3 x whitespace words)           (the words-to-tokens rule of the project's data)
    out_tokens_k  = the model's mean output tokens on the calibration rows (never per dataset label)

A model's image-token rule is data in the bundle manifest (`"image_tokens": {"rule": NAME, ...params}`);
a new vendor needs only a new entry in RULES. A model without prices or without a rule (for a query
with images) falls back to its per-model constant `expected_cost_usd`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

TOKENS_PER_WORD = 1.3


def text_tokens(question: str) -> int:
    return math.ceil(TOKENS_PER_WORD * len(question.split()))


# ----------------------------------------------------------------------------- image-token rules
def openai_high_detail(w: float, h: float, *, base: int = 85, per_tile: int = 170) -> float:
    """GPT-4o high detail: fit in 2048x2048, shortest side down to 768, 512-px tiles: 85 + 170 per tile."""
    s = min(1.0, 2048 / max(w, h))
    w, h = w * s, h * s
    s = min(1.0, 768 / min(w, h))
    w, h = w * s, h * s
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


def claude_pixels(
    w: float, h: float, *, long_edge: int = 1568, max_pixels: float = 1_150_000, per_token: float = 750
) -> float:
    """Claude 3 / 3.5: long edge capped at 1568, then at ~1.15 megapixels (aspect kept); tokens = w*h/750."""
    s = min(1.0, long_edge / max(w, h))
    w, h = w * s, h * s
    if max_pixels and w * h > max_pixels:
        s = math.sqrt(max_pixels / (w * h))
        w, h = w * s, h * s
    return math.ceil(w * h / per_token)


def fixed(w: float, h: float, *, tokens: int) -> float:
    """A fixed number of tokens per image, whatever its size (Gemini 1.5: 258; LLaVA-1.5, DeepSeek-VL: 576)."""
    return tokens


def qwen2_vl(
    w: float, h: float, *, factor: int = 28, min_pixels: int = 4 * 28 * 28, max_pixels: int = 16384 * 28 * 28
) -> float:
    """Qwen2-VL smart_resize: sides rounded to multiples of 28, pixels clamped; one token per 28x28 cell."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return (hb // factor) * (wb // factor)


def internvl2_tiles(
    w: float, h: float, *, tile: int = 448, max_num: int = 12, per_tile: int = 256, thumbnail: bool = True
) -> float:
    """InternVL2 dynamic_preprocess: the tile grid (<= 12) closest to the image's aspect ratio, plus a
    thumbnail tile when there is more than one; 256 tokens per tile."""
    aspect = w / h
    best, best_diff = (1, 1), float("inf")
    for r in _grids(max_num):
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and w * h > 0.5 * tile * tile * r[0] * r[1]:
            best = r
    blocks = best[0] * best[1]
    return per_tile * (blocks + (1 if thumbnail and blocks != 1 else 0))


@functools.lru_cache(maxsize=8)
def _grids(max_num: int) -> tuple[tuple[int, int], ...]:
    """InternVL2's candidate tile grids (i x j <= max_num), smallest first, as its code orders them."""
    return tuple(
        sorted(
            {
                (i, j)
                for n in range(1, max_num + 1)
                for i in range(1, n + 1)
                for j in range(1, n + 1)
                if i * j <= max_num
            },
            key=lambda r: r[0] * r[1],
        )
    )


LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def llava_next_anyres(w: float, h: float, *, cell: int = 336, per_cell: int = 576) -> float:
    """LLaVA-1.6 anyres: the pinpoint resolution keeping the most effective resolution (then wasting the least);
    576 tokens for the base image plus 576 per 336-px cell."""
    best, key = LLAVA_NEXT_PINPOINTS[0], None
    for bw, bh in LLAVA_NEXT_PINPOINTS:
        s = min(bw / w, bh / h)
        effective = min(int(w * s) * int(h * s), w * h)
        k = (effective, -(bw * bh - effective))
        if key is None or k > key:
            best, key = (bw, bh), k
    return per_cell * (1 + (best[0] // cell) * (best[1] // cell))


def mllama_tiles(w: float, h: float, *, tile: int = 560, max_tiles: int = 4, per_tile: int = 1601) -> float:
    """Llama-3.2-Vision: the tile canvas (<= 4 tiles of 560 px) needing the least upscaling, or if every one
    downscales, the least downscaling (smallest area on ties); 1,601 tokens per tile."""
    canvases = [
        (c * tile, r * tile, r * c)
        for r in range(1, max_tiles + 1)
        for c in range(1, max_tiles + 1)
        if r * c <= max_tiles
    ]
    scales = [(min(cw / w, ch / h), cw * ch, n) for cw, ch, n in canvases]
    up = [s for s in scales if s[0] >= 1]
    pick = min(up, key=lambda s: (s[0], s[1])) if up else max(scales, key=lambda s: (s[0], -s[1]))
    return per_tile * pick[2]


RULES: dict[str, tuple[Callable[..., float], dict[str, Any]]] = {  # name -> (function, default parameters)
    "openai-high-detail": (openai_high_detail, {}),
    "claude-pixels-div-750": (claude_pixels, {}),
    "gemini-258": (fixed, {"tokens": 258}),
    "fixed-576": (fixed, {"tokens": 576}),
    "fixed": (fixed, {}),
    "qwen2-vl-28px": (qwen2_vl, {}),
    "internvl2-448-tiles": (internvl2_tiles, {}),
    "llava-next-anyres": (llava_next_anyres, {}),
    "mllama-560-tiles": (mllama_tiles, {}),
}


def rule_spec(value: Any) -> dict[str, Any] | None:
    """A manifest / models.json `image_tokens` value ("NAME" or {"rule": NAME, ...params}) as a dict, or None.
    Raises ValueError naming the rule when it is unknown or its parameters do not fit."""
    if value is None:
        return None
    spec = {"rule": value} if isinstance(value, str) else dict(value)
    name = spec.get("rule")
    if name not in RULES:
        raise ValueError(f"unknown image-token rule {name!r}; known: {', '.join(sorted(RULES))}")
    fn, defaults = RULES[name]
    params = {**defaults, **{k: v for k, v in spec.items() if k != "rule"}}
    try:
        tokens = fn(640.0, 480.0, **params)
    except TypeError as e:
        raise ValueError(f"image-token rule {name!r}: {e}") from None
    if not (isinstance(tokens, (int, float)) and math.isfinite(tokens) and tokens >= 0):
        raise ValueError(f"image-token rule {name!r} gives {tokens!r} tokens for a 640x480 image")
    return spec


def image_tokens(spec: dict[str, Any], w: float, h: float) -> float:
    fn, defaults = RULES[spec["rule"]]
    return fn(float(max(w, 1)), float(max(h, 1)), **{**defaults, **{k: v for k, v in spec.items() if k != "rule"}})


def query_cost(entry: dict[str, Any], question: str, sizes: list[tuple[int, int]]) -> float | None:
    """One pool entry's expected USD for a query, or None when the entry cannot price it (the caller falls back
    to `expected_cost_usd`). `entry`: price_in_per_mtok, price_out_per_mtok, image_tokens, output_tokens."""
    pin, pout = entry.get("price_in_per_mtok"), entry.get("price_out_per_mtok")
    spec = entry.get("image_tokens")
    if pin is None or (sizes and spec is None):
        return None
    if isinstance(spec, str):
        spec = {"rule": spec}
    assert spec is not None or not sizes
    tokens_in = text_tokens(question) + sum((image_tokens(spec, w, h) for w, h in sizes), 0.0)  # type: ignore[arg-type]
    return float(pin * tokens_in + (pout or 0.0) * float(entry.get("output_tokens") or 0.0)) / 1e6


def query_costs(
    pricing: list[dict[str, Any]] | None, expected_cost: np.ndarray, meta: list[Any] | None, n: int
) -> np.ndarray:
    """`[B, K]` expected USD per query and model: each model's image-token rule on each image's original size, its
    prices and its mean output tokens (`query_cost`); the per-model constant `expected_cost` where a model has no
    rule, or when `meta` ((question, image sizes) per query) or `pricing` (each model's `PoolEntry.pricing()`) is
    not given."""
    out = np.broadcast_to(expected_cost, (n, len(expected_cost))).copy()
    if pricing is not None and meta is not None:
        for i, (question, sizes) in enumerate(meta):
            for k, entry in enumerate(pricing):
                if entry["output_tokens"] is not None:
                    c = query_cost(entry, question, sizes)
                    if c is not None:
                        out[i, k] = c
    return out


def mean_output_tokens(entry: dict[str, Any], queries: list[tuple[str, list[Any]]], cost: Any, tokens: Any) -> float:
    """A model's mean output tokens on labelled queries ((question, image sizes) each): the recorded tokens
    where there are any, else recovered from the recorded costs minus what its rule says the input cost."""
    tokens, cost = np.asarray(tokens, float), np.asarray(cost, float)
    if np.isfinite(tokens).any():
        return round(float(np.nanmean(tokens)), 2)
    if not entry.get("price_out_per_mtok") or not len(queries):
        return 0.0
    tin = np.array([query_cost({**entry, "output_tokens": 0.0}, q, sizes) for q, sizes in queries])
    return round(float(np.clip((cost - tin) * 1e6 / entry["price_out_per_mtok"], 0, None).mean()), 2)
