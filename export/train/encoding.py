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

from ...runtime.features import encode_raw_queries, n_words, query_features
from ...runtime.preprocess import ImageSpec, TextSpec, load_tokenizer, preprocess_image, tokenize
from ..data.format import RoutingData

ENCODER_VERSION = "effnet-lite0+minilm-l6-v2/1"
IMAGE_SPEC = ImageSpec()
TEXT_SPEC = TextSpec()


def cache_dir() -> Path:
    from ...runtime.sessions import cache_root

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


def encode_dataset(
    data: RoutingData, *, batch_size: int = 32, progress: bool = True, use_cache: bool = True
) -> np.ndarray:
    """`[N, D_q]` query features for every row of `data` (computed once, then read from the cache)."""
    qkeys, ikeys = content_keys(data)
    spec = json.dumps([ENCODER_VERSION, IMAGE_SPEC.to_dict(), TEXT_SPEC.to_dict()], sort_keys=True)
    digest = hashlib.sha256(
        (spec + "|" + "|".join(q + ":" + ",".join(i) for q, i in zip(qkeys, ikeys))).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{digest}.npz"
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["features"]
    text, image = encode_raw(data, batch_size=batch_size, progress=progress, image_keys=ikeys if use_cache else None)
    feats = query_features(text, image, [len(p) for p in data.images], [n_words(q) for q in data.question])
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, features=feats)
        os.replace(tmp, path)
    return feats


def encode_raw(
    data: RoutingData, *, batch_size: int = 32, progress: bool = True, image_keys: list[list[str]] | None = None
):
    """Raw text vectors `[N, 384]` and pooled image vectors `[N, 1280]` from the torch encoders. With `image_keys`
    (each image file's sha256, from `content_keys`) every distinct image is encoded once, and images another
    dataset already encoded (a merge, a grown dataset) come from the image store of the cache."""
    import torch

    with torch.no_grad():
        return _encode(data, batch_size, progress, image_keys)


def _image_store_path() -> Path:
    spec = json.dumps([ENCODER_VERSION, IMAGE_SPEC.to_dict()], sort_keys=True)
    return cache_dir() / f"images-{hashlib.sha256(spec.encode()).hexdigest()[:16]}.npz"


def _read_image_store() -> dict[str, np.ndarray]:
    path = _image_store_path()
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["keys"].tolist(), z["vectors"]))
    except (OSError, ValueError, KeyError):  # a damaged store is a cache miss, never an error
        return {}


def _write_image_store(new: dict[str, np.ndarray]) -> None:
    """Add image vectors to the store (merged with what another process may have written meanwhile)."""
    store = {**_read_image_store(), **new}
    path = _image_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, keys=np.array(list(store), dtype="<U64"), vectors=np.stack(list(store.values())).astype(np.float32))
    os.replace(tmp, path)


def _encode(data: RoutingData, batch_size: int, progress: bool, image_keys):
    import torch
    from tqdm import tqdm

    from .encoders import load_image_encoder, load_text_encoder, minilm_dir

    text_enc, img_enc = load_text_encoder(), load_image_encoder()
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", TEXT_SPEC)
    flat = [p for paths in data.images for p in paths]
    keys = [k for row in image_keys for k in row] if image_keys is not None else [str(p) for p in flat]
    store = _read_image_store() if image_keys is not None else {}
    todo: dict[str, Path] = {}
    for k, p in zip(keys, flat):
        if k not in store and k not in todo:
            todo[k] = p  # each distinct image once
    items = list(todo.items())
    fresh: dict[str, np.ndarray] = {}
    for s in tqdm(range(0, len(items), batch_size), desc="encoding images", disable=not progress, leave=False):
        chunk = items[s : s + batch_size]
        batch = np.stack([preprocess_image(p, IMAGE_SPEC) for _, p in chunk])
        for (k, _), v in zip(chunk, img_enc(torch.from_numpy(batch)).numpy()):
            fresh[k] = v
    if fresh and image_keys is not None:
        _write_image_store(fresh)
    store.update(fresh)
    bar = tqdm(total=data.n, desc="encoding text", disable=not progress, leave=False)

    def text(questions):
        ids, mask = tokenize(tok, questions)
        bar.update(len(questions))
        return text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    per_query, start = [], 0  # each query's image keys, in the pipeline's order
    for paths in data.images:
        per_query.append(keys[start : start + len(paths)])
        start += len(paths)
    with bar:
        return encode_raw_queries(
            list(data.question), per_query, text, lambda ks: np.stack([store[k] for k in ks]), text_batch=128
        )
