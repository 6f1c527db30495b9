"""Image and text preprocessing in PIL + numpy: the ONE definition both sides use.

The training side encodes its data through these functions and writes their
constants into the bundle manifest; the runtime rebuilds them from the manifest.
So a served query is preprocessed exactly like the training queries were.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_PIXELS = 80_000_000  # decompression-bomb limit, checked per image (global PIL state untouched)


@dataclass(frozen=True)
class ImageSpec:
    """How pixels become the image encoder's input tensor `[3, size, size]`.

    The image is letterboxed (aspect kept, padded with `pad`) rather than cropped, so
    receipts and wide charts keep all their content.
    """

    size: int = 224
    resample: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pad: tuple[int, int, int] = (128, 128, 128)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageSpec":
        d = dict(d)
        for k in ("mean", "std", "pad"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class TextSpec:
    """How a question becomes token ids: the tokenizer file and the maximum length."""

    tokenizer_file: str = "tokenizer.json"
    max_tokens: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def open_image(src, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Open a path, bytes, PIL image or HxW(x3/4) uint8 array as an upright RGB image.

    Applies EXIF orientation, converts P/L/LA/RGBA/CMYK/I;16 to RGB, keeps the first frame
    of animations, refuses images above `max_pixels`, and lets the JPEG decoder downscale
    large photos (`draft`) when `draft_size` is given.
    """
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = _from_array(src)
    else:
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise InputError("image: empty bytes")
            fh, name = io.BytesIO(src), "<bytes>"
        else:
            path = Path(os.fspath(src))
            if path.is_dir():
                raise InputError(f"{path}: is a directory, not an image")
            if not path.is_file():
                raise InputError(f"{path}: no such image file")
            if path.stat().st_size == 0:
                raise InputError(f"{path}: empty file (0 bytes)")
            fh, name = open(path, "rb"), str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks below
                img = Image.open(fh)
        except Image.DecompressionBombError:
            raise InputError(f"{name}: exceeds the {max_pixels:,}-pixel limit (decompression bomb?)") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{name}: not a readable image ({type(e).__name__})") from None
        w, h = img.size
        if w * h > max_pixels:
            raise InputError(f"{name}: {w}x{h} pixels exceeds the {max_pixels:,}-pixel limit (decompression bomb?)")
        if draft_size and img.format == "JPEG" and min(w, h) > 2 * draft_size:
            img.draft("RGB", (draft_size * 2, draft_size * 2))
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{name}: truncated or corrupt image data ({e})") from None
    if getattr(img, "is_animated", False):
        img.seek(0)
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"image: {w}x{h} pixels exceeds the {max_pixels:,}-pixel limit")
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block is not worth refusing the picture for
    return _to_rgb(img)


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size and a.max() > 0 else 1.0
        return Image.fromarray((a / top * 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def image_tensor(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Letterbox to `spec.size` and normalise: RGB PIL image -> float32 `[3, size, size]`."""
    w, h = img.size
    s = spec.size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    resized = img.resize((nw, nh), _RESAMPLE[spec.resample])
    canvas = Image.new("RGB", (spec.size, spec.size), tuple(spec.pad))
    canvas.paste(resized, ((spec.size - nw) // 2, (spec.size - nh) // 2))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(src, spec: ImageSpec) -> np.ndarray:
    """Any supported image input -> the encoder's input tensor."""
    return image_tensor(open_image(src, max_pixels=spec.max_pixels, draft_size=spec.size), spec)


def load_tokenizer(path: str | os.PathLike, spec: TextSpec):
    """A `tokenizers.Tokenizer` set to pad to the longest question and truncate at `max_tokens`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(spec.max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Questions -> (input_ids, attention_mask), int64 `[B, T]`, padded to the longest."""
    enc = tok.encode_batch(list(questions))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask
