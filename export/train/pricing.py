"""The per-query cost model of a training run: what `runtime.costs` needs per model, fitted on R_cal.

For each model with prices and an image-token rule (`image_tokens` in models.json), the expected output
tokens are its mean on the calibration rows: recorded `tokens` where the data has them, else recovered
from the recorded cost (cost x 1e6 - price_in x input tokens) / price_out. Never per dataset label.
Then every row gets each such model's predicted cost from its question and its images' original sizes
(`meta.image_size` where the data records it, the file's own size otherwise). Models without a rule keep
the per-model constant (the calibration mean), as before.
"""

from __future__ import annotations

import numpy as np

from ...runtime.costs import mean_output_tokens, query_cost, rule_spec, text_tokens
from ...runtime.errors import DataError
from ..data.format import RoutingData


def image_sizes(data: RoutingData) -> list[list[tuple[int, int]]]:
    """Original (w, h) of every image of every row."""
    from PIL import Image

    out = []
    for i, paths in enumerate(data.images):
        meta = data.meta[i] or {}
        size = meta.get("image_size")
        if len(paths) == 1 and isinstance(size, list) and len(size) == 2:
            out.append([(int(size[0]), int(size[1]))])
            continue
        row = []
        for p in paths:
            with Image.open(p) as im:
                row.append(im.size)
        out.append(row)
    return out


def cost_entries(data: RoutingData, cal: np.ndarray, sizes: list | None) -> list[dict]:
    """Per model: prices, the image-token rule and the mean output tokens on R_cal (None where not priceable)."""
    entries = []
    for k, m in enumerate(data.models):
        try:
            spec = rule_spec(m.get("image_tokens"))
        except ValueError as e:
            raise DataError(f"{data.root}/models.json: model '{m['name']}': {e}") from None
        pin, pout = m.get("price_in_per_mtok"), m.get("price_out_per_mtok")
        entry = {"price_in_per_mtok": pin, "price_out_per_mtok": pout, "image_tokens": spec, "output_tokens": None}
        if spec is not None and pin is not None and sizes is not None:
            rows = cal[data.A[cal, k]]
            entry["output_tokens"] = mean_output_tokens(
                entry, [(data.question[i], sizes[i]) for i in rows], data.C[rows, k], data.Tok[rows, k]
            )
        entries.append(entry)
    return entries


def row_costs(data: RoutingData, entries: list[dict], sizes: list | None, e_bar: np.ndarray) -> np.ndarray | None:
    """`[N, K]` predicted USD per row and model (the constant `e_bar` for models without a rule);
    None when no model has a rule (the run then uses per-model constants everywhere, as before)."""
    priced = [k for k, e in enumerate(entries) if e["output_tokens"] is not None]
    if not priced or sizes is None:
        return None
    out = np.broadcast_to(np.asarray(e_bar, float), (data.n, data.k)).copy()
    for k in priced:
        out[:, k] = [query_cost(entries[k], q, s) for q, s in zip(data.question, sizes)]
    return out


def needs_sizes(data: RoutingData) -> bool:
    return any(m.get("image_tokens") is not None and m.get("price_in_per_mtok") is not None for m in data.models)


def cost_error(pred: np.ndarray, realised: np.ndarray, avail: np.ndarray, names: list[str]) -> dict:
    """Mean absolute percentage error of predicted vs recorded per-query cost, per model (rows with a cost > 0)."""
    out = {}
    for k, n in enumerate(names):
        ok = avail[:, k] & np.isfinite(realised[:, k]) & (realised[:, k] > 0)
        if ok.any():
            out[n] = round(float(np.mean(np.abs(pred[ok, k] - realised[ok, k]) / realised[ok, k])), 4)
    return out


__all__ = ["image_sizes", "cost_entries", "row_costs", "needs_sizes", "cost_error", "text_tokens"]
