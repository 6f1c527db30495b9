"""The query feature vector `q` (method.md §2.1), defined once for training and serving.

    q = [ text (384, L2-normalised) | image (1280, per-image L2, averaged, re-normalised; 0 if none)
          | has_image, log1p(n_images), log1p(n_words) ]            -> D_q = 1667

Only query content goes in: never dataset labels, file names or paths.
"""

from __future__ import annotations

import numpy as np
from typing import Any

TEXT_DIM = 384
IMAGE_DIM = 1280
SIDE_DIM = 3
QUERY_DIM = TEXT_DIM + IMAGE_DIM + SIDE_DIM
HAS_IMAGE_COL = TEXT_DIM + IMAGE_DIM  # index of the has_image flag in q
TEXT_ONLY = "text"  # a manifest's `query_features` when its router reads no images (`without_images`)


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.asarray(x / np.maximum(n, 1e-12))


def pool_images(vectors: np.ndarray) -> np.ndarray:
    """Per-image pooled encoder outputs `[n, 1280]` -> one query image vector (zeros if n == 0)."""
    if len(vectors) == 0:
        return np.zeros(IMAGE_DIM, dtype=np.float32)
    return l2_normalise(l2_normalise(np.asarray(vectors, np.float64)).mean(axis=0)).astype(np.float32)


def n_words(question: str) -> int:
    return len(question.split())


def query_features(text_vecs: np.ndarray, image_vecs: np.ndarray, n_images: Any, words: Any) -> np.ndarray:
    """Assemble `[B, D_q]` float32 from raw text vectors `[B, 384]` and pooled image vectors `[B, 1280]`."""
    n_images = np.asarray(n_images, np.float32)
    side = np.stack(
        [(n_images > 0).astype(np.float32), np.log1p(n_images), np.log1p(np.asarray(words, np.float32))], axis=1
    )
    return np.concatenate(
        [l2_normalise(np.asarray(text_vecs, np.float32)), np.asarray(image_vecs, np.float32), side], axis=1
    ).astype(np.float32)


def without_images(q: np.ndarray) -> np.ndarray:
    """Features `q [B, D_q]` as a router that reads no images sees them: those of the same questions asked without
    their images (image block, has_image and log1p(n_images) zeroed; text and log1p(n_words) kept). Text-only runs
    (`train --text-only`, or validation chose text: `export.train.modality`) are trained and served on these."""
    out = np.array(q, copy=True)
    out[:, TEXT_DIM:-1] = 0.0
    return out


def encode_raw_queries(
    questions: list[str],
    images: list[list[Any]],
    text: Any,
    image: Any,
    *,
    text_batch: int | None = None,
    image_batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one query pipeline, for any encoders: (text `[B, 384]`, pooled image `[B, 1280]`) of B queries.

    `text(questions) -> [n, 384]` tokenises and encodes; `image(items) -> [n, 1280]` encodes images (items are
    whatever it takes: prepared tensors, paths, cache keys), one row each. Each runs on at most `*_batch` items at
    a time (None: all at once). A query's images are pooled by `pool_images`; a query without any gets zeros.
    ONNX Runtime at serving (`Router.encode`), PyTorch at training (`export.train.encoding`)."""
    B = len(questions)
    tb = text_batch or max(B, 1)
    text_vecs = (
        np.concatenate([np.asarray(text(questions[s : s + tb]), np.float32) for s in range(0, B, tb)])
        if B
        else np.zeros((0, TEXT_DIM), np.float32)
    )
    flat = [x for row in images for x in row]
    ib = image_batch or max(len(flat), 1)
    per = (
        np.concatenate([np.asarray(image(flat[s : s + ib]), np.float32) for s in range(0, len(flat), ib)])
        if flat
        else np.zeros((0, IMAGE_DIM), np.float32)
    )
    pooled = np.zeros((B, IMAGE_DIM), np.float32)
    start = 0
    for i, row in enumerate(images):
        if row:
            pooled[i] = pool_images(per[start : start + len(row)])
            start += len(row)
    return text_vecs, pooled
