"""Image and text preprocessing in PIL + numpy: the ONE definition both sides use.

The training side encodes its data through these functions and writes their
constants into the bundle manifest; the runtime rebuilds them from the manifest.
So a served query is preprocessed exactly like the training queries were.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .decision import Prepared
from .errors import BundleError, InputError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # an image 'path' that is a URL (http://, s3://, ...)
DEFAULT_MAX_PIXELS = 80_000_000  # decompression-bomb limit, checked per image (global PIL state untouched)
# What one decoded image may hold in memory (width x height x bands x bytes per sample, from its header,
# before any pixel is decoded): 80 MP of RGBA. The gateway's default is lower (serve/config.py).
DEFAULT_MAX_IMAGE_BYTES = 320 << 20
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


# The decoders lr-onnx lets Pillow run, and nothing else: Pillow otherwise probes every plugin it has,
# and some hand the bytes to external programs (EPS to Ghostscript) whatever the file is called.
# MPO is how Pillow names a JPEG that carries extra preview pictures (most phone photos).
DECODERS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ALLOWED_FORMATS = DECODERS + ("MPO",)


def open_image(
    src: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    budget: list[int] | None = None,
) -> Image.Image:
    """Open a path, bytes, a binary file object, a PIL image or an HxW(x3/4) array as an upright RGB image in memory.

    Only the ALLOWED_FORMATS decoders run. Applies EXIF orientation, converts P/L/LA/RGBA/CMYK/I;16
    to RGB, keeps the first frame of animations, refuses empty images and images above `max_pixels`,
    and lets the JPEG decoder downscale photos (`draft`) when `draft_size` is given. What the decoded
    image will hold (`decoded_bytes`, read from the header after any draft scaling) must fit `max_bytes`
    and, when a one-element `budget` list is given (a request's images share it), what is left of it:
    an image is refused before a single pixel is decoded. Every file it opens is closed before it
    returns; anything unusable is an `InputError`.
    """
    if isinstance(src, Image.Image):
        if src.format is not None and src.format not in ALLOWED_FORMATS:
            raise InputError(f"image: {src.format} images are not accepted (allowed: {', '.join(ALLOWED_FORMATS)})")
        img = _first_frame(src, "image")
        name = "image"
    elif isinstance(src, np.ndarray):
        img, name = _from_array(src, max_pixels), "image array"
    elif isinstance(src, (bytes, bytearray, memoryview)) or callable(getattr(src, "read", None)):
        data = src if isinstance(src, (bytes, bytearray, memoryview)) else _read_file_object(src, max_bytes)
        if not len(data):
            raise InputError("image: empty bytes")
        return _decode(io.BytesIO(bytes(data)), "<bytes>", max_pixels, draft_size, max_bytes, budget)
    elif isinstance(src, (str, os.PathLike)):
        raw = os.fspath(src)
        if isinstance(src, str) and not src:
            raise InputError("image path is empty")
        if "\x00" in (raw if isinstance(raw, str) else raw.decode("latin-1")):
            raise InputError(f"image path {str(raw)[:80]!r} holds a NUL byte")
        path = Path(raw)
        try:
            st = path.stat()
        except OSError:
            text = str(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
            if _URL.match(text):  # never fetched: lr-onnx reads local files only
                raise InputError(
                    f"{text[:200]}: a URL; lr-onnx never downloads, so save the image and give its path"
                ) from None
            raise InputError(f"{path}: no such image file") from None
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not an image")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        if st.st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        try:
            fh = open(path, "rb")
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
        with fh:
            return _decode(fh, str(path), max_pixels, draft_size, max_bytes, budget)
    else:
        raise InputError(
            f"an image must be a path, bytes, a binary file object, a PIL image or a numpy array, got {type(src).__name__}"
        )
    return _finish(img, name, max_pixels, img.size)


def _read_file_object(fh: Any, max_bytes: int) -> bytes:
    """The bytes of a binary file object (an upload, `io.BytesIO`, `open(path, "rb")`), read from where it stands
    and never more than `max_bytes` + 1 of them: a larger image is refused, as a path's would be."""
    try:
        data = fh.read(max_bytes + 1)
    except Exception as e:  # whatever the object raises is the caller's input, said in one line
        raise InputError(f"image: the file object cannot be read ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(data, (bytes, bytearray)):
        raise InputError(f"image: the file object gave {type(data).__name__}, not bytes (open it in binary mode)")
    if len(data) > max_bytes:
        raise InputError(f"image: the file object holds more than {max_bytes:,} bytes")
    return bytes(data)


def decoded_bytes(img: Image.Image) -> int:
    """What `img` holds once decoded, from its header: width x height x bytes per pixel of its mode."""
    w, h = img.size
    return w * h * _BYTES_PER_PIXEL.get(img.mode, 8)


def declared_bytes(data: bytes) -> int:
    """What encoded image bytes say they will decode to (header only, no pixel decoded; 0 when the header
    cannot be read: the real decode reports that). Lets a server send costly images down a lane of their own."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=DECODERS) as img:
                return decoded_bytes(img)
    except Exception:  # any unreadable header: the decode that follows gives the one-line error
        return 0


def _decode(
    fh: Any,
    name: str,
    max_pixels: int,
    draft_size: int | None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    budget: list[int] | None = None,
) -> Image.Image:
    """Decode one image from an open binary file with the allowed decoders only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks below
            img = Image.open(fh, formats=DECODERS)
    except Image.DecompressionBombError:
        raise InputError(f"{name}: exceeds the {max_pixels:,}-pixel limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image in an accepted format ({', '.join(DECODERS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
        raise InputError(f"{name}: not a readable image ({type(e).__name__})") from None
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise InputError(f"{name}: {w}x{h} pixels exceeds the {max_pixels:,}-pixel limit (decompression bomb?)")
        original = (w, h)
        if draft_size and img.format in ("JPEG", "MPO") and min(w, h) >= 2 * draft_size:
            # the DCT-domain downscale (1/2, 1/4, 1/8) that keeps the short side >= draft_size: a 640x480
            # photo decodes as 320x240 in a third of the time, and letterboxing only needs the long side
            img.draft("RGB", (draft_size, draft_size))
        cost = decoded_bytes(img)
        if cost > max_bytes:
            raise InputError(
                f"{name}: {w}x{h} {img.mode} pixels decode to {cost / 2**20:,.0f} MiB, over the "
                f"{max_bytes / 2**20:,.0f} MiB per image"
            )
        if budget is not None:
            if cost > budget[0]:
                raise InputError(
                    f"{name}: {w}x{h} {img.mode} pixels decode to {cost / 2**20:,.0f} MiB, over what is "
                    f"left of the request's image budget ({budget[0] / 2**20:,.0f} MiB)"
                )
            budget[0] -= cost
        try:
            img.load()
        except (
            OSError,
            SyntaxError,
            ValueError,
            EOFError,
            struct.error,
            IndexError,
            TypeError,
            ZeroDivisionError,
            MemoryError,
        ) as e:
            raise InputError(f"{name}: truncated or corrupt image data ({type(e).__name__})") from None
        return _finish(img, name, max_pixels, original, decoded=True)
    finally:
        img.close()


def _first_frame(img: Image.Image, name: str) -> Image.Image:
    """Frame 0 of an animation; never asks Pillow how many frames there are (that parses every frame)."""
    try:
        if img.tell() != 0:
            img.seek(0)
    except (OSError, EOFError, ValueError, struct.error, IndexError) as e:
        raise InputError(f"{name}: cannot read the first frame ({type(e).__name__})") from None
    return img


ORIGINAL_SIZE = "lr_onnx_original_size"


def _finish(
    img: Image.Image, name: str, max_pixels: int, original: tuple[int, int], decoded: bool = False
) -> Image.Image:
    """Size checks, EXIF orientation and RGB conversion; the result owns its pixels (no file behind it) and
    carries the image's original size (before any draft decoding) in `info[ORIGINAL_SIZE]`: what a vendor
    counts image tokens on."""
    w, h = img.size
    if w == 0 or h == 0:
        raise InputError(f"{name}: empty image ({w}x{h} pixels)")
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} pixels exceeds the {max_pixels:,}-pixel limit")
    try:  # a decoded image is ours to turn in place (exif_transpose otherwise copies even an upright one)
        if decoded:
            ImageOps.exif_transpose(img, in_place=True)
            upright = img
        else:
            upright = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error, ZeroDivisionError):
        upright = img  # a broken EXIF block is not worth refusing the picture for
    try:
        rgb = _to_rgb(upright if upright is not None else img)
    except (OSError, ValueError, SyntaxError, struct.error, IndexError) as e:
        raise InputError(f"{name}: cannot be converted to RGB ({type(e).__name__})") from None
    if rgb is not img:
        out = rgb
    elif decoded:  # a new owner of the same decoded pixels (`img` is closed right after): no copy of them
        out = img._new(img.im)
    else:  # the caller's own image: copied, never shared
        out = img.copy()
    out.info[ORIGINAL_SIZE] = tuple(original)
    return out


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image array is empty (shape {a.shape})")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise InputError(f"image array of {a.shape[1]}x{a.shape[0]} pixels exceeds the {max_pixels:,}-pixel limit")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise InputError(f"image array must hold integers or floats, got dtype {a.dtype}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:  # a caller's broken pipeline, not a picture: never routed as a black or white image
            raise InputError(f"image array holds {bad:,} non-finite values (NaN or infinity)")
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img)
        top = float(a.max()) if a.size and a.max() > 0 else 1.0
        out = np.empty(a.shape, np.uint8)  # scaled in row blocks: never a float copy of the whole image
        for r in range(0, a.shape[0], 256):
            out[r : r + 256] = (a[r : r + 256].astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)
        return Image.fromarray(out).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _on_white(img if img.mode == "RGBA" else img.convert("RGBA"))
    return img.convert("RGB")


def _on_white(rgba: Image.Image, strip_pixels: int = 1 << 20) -> Image.Image:
    """Transparency flattened onto white, strip by strip: the same per-pixel `alpha_composite`, but the only
    full-size copy made is the RGB result (a whole-image composite made three more RGBA copies)."""
    w, h = rgba.size
    out = Image.new("RGB", (w, h))
    step = max(1, strip_pixels // w)
    for y in range(0, h, step):
        strip = rgba.crop((0, y, w, min(h, y + step)))
        white = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, strip).convert("RGB"), (0, y))
    return out


def image_tensor(img: Image.Image, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Letterbox to `spec.size` and normalise: RGB PIL image -> float32 `[3, size, size]`.

    One resize straight to the target, then one pass per channel through a 256-entry table of
    `(v / 255 - mean) / std` (float32, the same arithmetic as normalising the whole canvas, so the
    result is bit-identical to it) into `out` (allocated when not given) with the padding pre-filled.
    """
    w, h = img.size
    size = spec.size
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    resized = img if (nw, nh) == (w, h) else img.resize((nw, nh), _RESAMPLE[spec.resample])
    a = np.asarray(resized if resized.mode == "RGB" else resized.convert("RGB"))
    lut, pad = _normaliser(spec)
    x = np.empty((3, size, size), np.float32) if out is None else out
    x[...] = pad[:, None, None]
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    for c in range(3):
        np.take(lut[c], a[:, :, c], out=x[c, y0 : y0 + nh, x0 : x0 + nw], mode="clip")  # uint8: never clips
    return x


@functools.lru_cache(maxsize=8)
def _normaliser(spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel lookup tables `[3, 256]` of normalised values, and the normalised padding `[3]`."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    v = np.arange(256, dtype=np.float32) / 255.0
    lut = (v[None, :] - mean[:, None]) / std[:, None]
    pad = lut[np.arange(3), np.asarray(spec.pad, np.intp)]
    lut.flags.writeable = pad.flags.writeable = False
    return lut, pad


def preprocess_image(src: Any, spec: ImageSpec) -> np.ndarray:
    """Any supported image input -> the encoder's input tensor."""
    return image_tensor(open_image(src, max_pixels=spec.max_pixels, draft_size=spec.size), spec)


def load_tokenizer(src: bytes | str | os.PathLike[str], spec: TextSpec) -> Any:
    """A `tokenizers.Tokenizer` (from tokenizer.json's bytes or path) set to pad to the longest question and
    truncate at `max_tokens`."""
    from tokenizers import Tokenizer

    if isinstance(src, (bytes, bytearray)):
        try:
            tok = Tokenizer.from_buffer(bytes(src))
        except Exception as e:  # the Rust side raises a plain Exception for a malformed file
            raise BundleError(f"tokenizer.json cannot be loaded ({str(e).splitlines()[0][:160]})") from None
    else:
        tok = Tokenizer.from_file(str(src))
    tok.no_padding()
    tok.enable_truncation(spec.max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok: Any, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Questions -> (input_ids, attention_mask), int64 `[B, T]`, padded to the longest."""
    enc = tok.encode_batch(list(questions))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def prepare_query(
    images: list[Any],
    question: str,
    spec: ImageSpec,
    *,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_request_bytes: int | None = None,
    tensors: bool = True,
) -> "Prepared":
    """A checked question and its images, each decoded (allow-listed decoders, pixel limit, decoded-byte budgets per
    image and, when given, for the request's images together) and turned into its tensor (`tensors=False`: only
    checked and measured, for a router that reads no images)."""
    budget = None if max_request_bytes is None else [int(max_request_bytes)]
    made, sizes = [], []
    for img in images:
        pil = open_image(
            img, max_pixels=spec.max_pixels, draft_size=spec.size, max_bytes=max_image_bytes, budget=budget
        )
        sizes.append(pil.info.get(ORIGINAL_SIZE, pil.size))
        if tensors:
            made.append(image_tensor(pil, spec))
        del pil  # one decoded image at a time: a request's peak memory is its largest image, not their sum
    return Prepared(question, tuple(made), tuple(sizes))
