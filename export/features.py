"""Encode a routing dataset into query features with the frozen encoders, cached on disk.

The cache is keyed by the content of every image file and question (sha256) and by
the encoder version, so renaming files or relabelling datasets reuses it, and
changing the encoders or preprocessing invalidates it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..runtime.features import IMAGE_DIM, TEXT_DIM, n_words, pool_images, query_features
from ..runtime.preprocess import ImageSpec, TextSpec, load_tokenizer, preprocess_image, tokenize
from .data import RoutingData

ENCODER_VERSION = "effnet-lite0+minilm-l6-v2/1"
IMAGE_SPEC = ImageSpec()
TEXT_SPEC = TextSpec()


def cache_dir() -> Path:
    from ..runtime.sessions import cache_root

    return cache_root() / "features"


def content_keys(data: RoutingData) -> tuple[list[str], list[list[str]]]:
    """sha256 of each question and of each image file's bytes."""
    q = [hashlib.sha256(s.encode("utf-8")).hexdigest() for s in data.question]
    memo: dict[Path, str] = {}
    imgs = []
    for paths in data.images:
        row = []
        for p in paths:
            if p not in memo:
                memo[p] = hashlib.sha256(p.read_bytes()).hexdigest()
            row.append(memo[p])
        imgs.append(row)
    return q, imgs


def encode_dataset(data: RoutingData, *, batch_size: int = 32, progress: bool = True,
                   use_cache: bool = True) -> np.ndarray:
    """`[N, D_q]` query features for every row of `data` (computed once, then read from the cache)."""
    qkeys, ikeys = content_keys(data)
    spec = json.dumps([ENCODER_VERSION, IMAGE_SPEC.to_dict(), TEXT_SPEC.to_dict()], sort_keys=True)
    digest = hashlib.sha256((spec + "|" + "|".join(q + ":" + ",".join(i) for q, i in zip(qkeys, ikeys)))
                            .encode()).hexdigest()[:24]
    path = cache_dir() / f"{digest}.npz"
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["features"]
    text, image = encode_raw(data, batch_size=batch_size, progress=progress)
    feats = query_features(text, image, [len(p) for p in data.images], [n_words(q) for q in data.question])
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, features=feats)
        os.replace(tmp, path)
    return feats


def encode_raw(data: RoutingData, *, batch_size: int = 32, progress: bool = True):
    """Raw text vectors `[N, 384]` and pooled image vectors `[N, 1280]` from the torch encoders."""
    import torch

    with torch.no_grad():
        return _encode(data, batch_size, progress)


def _encode(data: RoutingData, batch_size: int, progress: bool):
    import torch
    from tqdm import tqdm

    from .encoders import load_image_encoder, load_text_encoder, minilm_dir

    text_enc, img_enc = load_text_encoder(), load_image_encoder()
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", TEXT_SPEC)
    text = np.zeros((data.n, TEXT_DIM), np.float32)
    for s in tqdm(range(0, data.n, 128), desc="encoding text", disable=not progress, leave=False):
        ids, mask = tokenize(tok, data.question[s:s + 128])
        text[s:s + 128] = text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    flat = [(i, p) for i, paths in enumerate(data.images) for p in paths]
    per_image = np.zeros((len(flat), IMAGE_DIM), np.float32)
    for s in tqdm(range(0, len(flat), batch_size), desc="encoding images", disable=not progress, leave=False):
        batch = np.stack([preprocess_image(p, IMAGE_SPEC) for _, p in flat[s:s + batch_size]])
        per_image[s:s + batch_size] = img_enc(torch.from_numpy(batch)).numpy()
    image = np.zeros((data.n, IMAGE_DIM), np.float32)
    rows: dict[int, list[int]] = {}
    for j, (i, _) in enumerate(flat):
        rows.setdefault(i, []).append(j)
    for i, js in rows.items():
        image[i] = pool_images(per_image[js])
    return text, image
