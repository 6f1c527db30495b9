"""What every converter shares: safe archive extraction, a pickle reader that refuses every class, array and
correctness-value readers, and the manifest a converted folder carries."""

from __future__ import annotations

import csv
import gzip
import json
import math
import pickle
import shutil
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ....runtime.errors import DataError
from ....runtime.validate import loads_json
from ....version import __version__
from ..format import safe_relative_path


FORMAT_VERSION = 1
MAX_MEMBERS = 2_000_000
MAX_TOTAL_BYTES = 200 * 1024**3


# ----------------------------------------------------------------------------- shared helpers
@contextmanager
def source_errors(src: Path):
    """How a published source's files can be broken, each as one `DataError` line: text that is not UTF-8,
    a truncated or corrupt archive, a broken zip (.npz), an array file that holds a pickle, a broken CSV."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{src}: a file is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{src}: archive truncated or corrupt ({type(e).__name__}: {str(e)[:120]})") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{src}: a .npz/.zip file is corrupt ({str(e)[:120]})") from None
    except csv.Error as e:
        raise DataError(f"{src}: malformed CSV ({str(e)[:120]})") from None


def load_array(path: Path, key: str | None = None) -> np.ndarray:
    """A numeric array from .npy / .npz, never unpickling: object arrays are refused with one line."""
    try:
        with open(path, "rb") as fh:
            z = np.load(fh, allow_pickle=False)
            if isinstance(z, np.lib.npyio.NpzFile):
                with z:
                    if not z.files:
                        raise DataError(f"{path}: an empty .npz")
                    a = z[key] if key in z.files else z[z.files[0]]
            else:
                a = z
            return np.asarray(a, dtype=float)
    except (ValueError, TypeError, OSError, EOFError) as e:
        raise DataError(
            f"{path}: not a numeric array file ({str(e).splitlines()[0][:120]}); "
            f"pickled or object arrays are never loaded"
        ) from None


def safe_extract(
    archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES
) -> None:
    """Extract a tar archive into an empty `dest`, refusing anything that could escape it.

    Rejected: absolute names, '..' components, symbolic and hard links, device and
    FIFO members; capped: member count and total uncompressed size.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise DataError(f"{dest}: extraction target is not empty")
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None
    with tf:
        members = []
        total = 0
        for m in tf:
            if len(members) >= max_members:
                raise DataError(f"{archive}: more than {max_members} members; refusing to extract")
            if safe_relative_path(m.name) is None or m.name.startswith("/"):
                raise DataError(f"{archive}: member '{m.name}' has an absolute or '..' path; refusing to extract")
            if m.issym() or m.islnk():
                raise DataError(f"{archive}: member '{m.name}' is a link; refusing to extract")
            if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir()):
                raise DataError(f"{archive}: member '{m.name}' is a device or special file; refusing to extract")
            total += max(m.size, 0)
            if total > max_bytes:
                raise DataError(f"{archive}: more than {max_bytes} bytes uncompressed; refusing to extract")
            members.append(m)
        for m in members:
            tf.extract(m, dest, filter="data")


class _RefusingUnpickler(pickle.Unpickler):
    """Loads only plain containers of str/int/float: any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_plain_pickle(path: Path):
    """Read a pickle of plain lists/dicts/str/int, or fail asking for a text sidecar."""
    try:
        with open(path, "rb") as fh:
            return _RefusingUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not a plain pickle of lists/dicts ({e}); provide a text sidecar "
            f"({path.stem.replace('_index', '')}s.txt or .json) instead"
        ) from None


def coerce_correct(value, *, where: str, column: str) -> tuple[float | None, bool]:
    """A correctness cell as (0/1 score or None if unavailable, was-non-binary).

    bool, "true"/"false", "yes"/"no", "1"/"0" map to 1/0; a number in [0, 1] is
    rounded (>= 0.5 is 1); empty and NaN mean unavailable; anything else is an error.
    """
    if value is None:
        return None, False
    if isinstance(value, bool):
        return float(value), False
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("", "nan", "none", "null"):
            return None, False
        if s in ("true", "yes", "y", "t"):
            return 1.0, False
        if s in ("false", "no", "n", "f"):
            return 0.0, False
        try:
            value = float(s)
        except ValueError:
            raise DataError(f"{where}: {column} value '{value}' is not a boolean or a number") from None
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None, False
        if not 0.0 <= v <= 1.0:
            raise DataError(f"{where}: {column} value {v} is outside [0, 1]")
        return (1.0 if v >= 0.5 else 0.0), v not in (0.0, 1.0)
    raise DataError(f"{where}: {column} value {value!r} is not a boolean or a number")


def float_or_none(value, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} value {value!r} is not a number") from None
    if math.isnan(v):
        return None
    if v < 0 or math.isinf(v):
        raise DataError(f"{where}: {column} value {v} must be a finite number >= 0")
    return v


def write_conversion_manifest(out: Path, **fields) -> None:
    manifest = {"format_version": FORMAT_VERSION, "lr_onnx_version": __version__, **fields}
    (out / "dataset_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def models_spec(src: Path) -> list:
    """Entries of an optional `models.json` in SRC (a list, or {"models": [...]}); [] if absent."""
    path = src / "models.json"
    if not path.is_file():
        return []
    spec = loads_json(path.read_bytes(), str(path), err=DataError)
    if isinstance(spec, dict):
        spec = spec.get("models", [])
    if not isinstance(spec, list):
        raise DataError(f'{path}: expected a list of models or {{"models": [...]}}')
    return spec


def model_order(src: Path, found: list[str]) -> list[str]:
    """Registry order: a `models.json` in SRC fixes it (names first, others appended sorted)."""
    names = [m["name"] if isinstance(m, dict) else str(m) for m in models_spec(src)]
    return [n for n in names if n in found] + sorted(set(found) - set(names))


def model_prices(src: Path) -> dict[str, dict]:
    return {m["name"]: m for m in models_spec(src) if isinstance(m, dict) and "name" in m}


def copy_image(root: Path, rel: str, out: Path) -> str | None:
    """Copy `root/rel` to `out/images/rel`; return the new relative path, or None if absent or unsafe."""
    safe = safe_relative_path(rel)
    if safe is None:
        return None
    srcp = root.joinpath(*safe.parts)
    if not srcp.is_file():
        return None
    dst = out / "images" / Path(*safe.parts)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(srcp, dst)
    return "images/" + "/".join(safe.parts)
