"""The query feature vector `q` (method.md §2.1), defined once for training and serving.

    q = [ text (384, L2-normalised) | image (1280, per-image L2, averaged, re-normalised; 0 if none)
          | has_image, log1p(n_images), log1p(n_words) ]            -> D_q = 1667

Only query content goes in: never dataset labels, file names or paths.
"""
from __future__ import annotations

import numpy as np

TEXT_DIM = 384
IMAGE_DIM = 1280
SIDE_DIM = 3
QUERY_DIM = TEXT_DIM + IMAGE_DIM + SIDE_DIM
HAS_IMAGE_COL = TEXT_DIM + IMAGE_DIM  # index of the has_image flag in q


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def pool_images(vectors: np.ndarray) -> np.ndarray:
    """Per-image pooled encoder outputs `[n, 1280]` -> one query image vector (zeros if n == 0)."""
    if len(vectors) == 0:
        return np.zeros(IMAGE_DIM, dtype=np.float32)
    return l2_normalise(l2_normalise(np.asarray(vectors, np.float64)).mean(axis=0)).astype(np.float32)


def n_words(question: str) -> int:
    return len(question.split())


def query_features(text_vecs: np.ndarray, image_vecs: np.ndarray, n_images: np.ndarray,
                   words: np.ndarray) -> np.ndarray:
    """Assemble `[B, D_q]` float32 from raw text vectors `[B, 384]` and pooled image vectors `[B, 1280]`."""
    n_images = np.asarray(n_images, np.float32)
    side = np.stack([(n_images > 0).astype(np.float32), np.log1p(n_images),
                     np.log1p(np.asarray(words, np.float32))], axis=1)
    return np.concatenate([l2_normalise(np.asarray(text_vecs, np.float32)), np.asarray(image_vecs, np.float32),
                           side], axis=1).astype(np.float32)
