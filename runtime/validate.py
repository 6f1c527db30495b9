"""The boundary checks every entrance shares: numbers, text, names and JSON documents.

CLI options, API arguments, manifests, datasets and batch files all meet user data
through these few functions, so "finite, in range, valid UTF-8, not nested past
reason" is decided once, and every refusal is one line naming the field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
import warnings
from typing import Any, Iterable, NoReturn, cast

from .bounds import MAX_QUESTION_CHARS
from .errors import InputError, LrOnnxError, LrOnnxWarning

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 30  # longer integer literals in JSON are read as floats (inf past 1e308), never as bignums


def number(value: Any, field: str, *, lo: float = 0.0, hi: float = 1e12, err: type[LrOnnxError] = InputError) -> float:
    """`value` as a finite float in [lo, hi]; ints, floats and numpy scalars pass, bools and strings do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise err(f"{field} must be a number, got {_show(value)}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        raise err(f"{field} must be a finite number, got an integer of {len(str(int(value)))} digits") from None  # type: ignore[call-overload]
    if not math.isfinite(v):
        raise err(f"{field} must be a finite number, got {v}")
    if not lo <= v <= hi:
        raise err(f"{field} must be between {lo:g} and {hi:g}, got {v:g}")
    return v


def integer(value: Any, field: str, *, lo: int, hi: int, err: type[LrOnnxError] = InputError) -> int:
    """`value` as an int in [lo, hi] (numpy integers pass, bools and floats do not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise err(f"{field} must be an integer, got {_show(value)}")
    v = int(value)
    if not lo <= v <= hi:
        raise err(f"{field} must be between {lo} and {hi}, got {_show(v)}")
    return v


def text(value: Any, field: str, *, empty_ok: bool = False, err: type[LrOnnxError] = InputError) -> str:
    """`value` as a str that is valid Unicode (no lone surrogates: argv and files with invalid UTF-8 give those)."""
    if not isinstance(value, str):
        raise err(f"{field} must be a string, got {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"{field} is not valid UTF-8 text (invalid bytes or a lone surrogate)") from None
    if not empty_ok and not value.strip():
        raise err(f"{field} is empty")
    return value


MAX_MODEL_NAME = 200


def model_name(value: Any, field: str = "model name", *, err: type[LrOnnxError] = InputError) -> str:
    """A name for a new pool model: text as it will be matched everywhere (outcome keys, --models, logs, metrics),
    so no leading or trailing space, no control character (a newline breaks every table and log line) and no
    comma (--models and --exclude take comma-separated names)."""
    name = text(value, field, err=err)
    if name != name.strip():
        raise err(f"{field} {name!r} has leading or trailing spaces")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise err(f"{field} {name!r} holds a control character")
    if "," in name:
        raise err(f"{field} {name!r} holds a comma (--models and --exclude take comma-separated names)")
    if len(name) > MAX_MODEL_NAME:
        raise err(f"{field} is {len(name)} characters long (at most {MAX_MODEL_NAME})")
    return name


def names(value: Any, field: str, *, err: type[LrOnnxError] = InputError) -> list[str] | None:
    """None, or a non-empty list of model names (a bare string is one name)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise err(f"{field} must be a list of model names, got {_show(value)}")
    out = [text(v, f"{field} entry", err=err).strip() for v in value]
    if not out:
        raise err(f"{field} is an empty list; leave it out to allow every model")
    return out


def loads_json(
    data: str | bytes,
    where: str,
    *,
    err: type[LrOnnxError] = InputError,
    max_depth: int = MAX_JSON_DEPTH,
    strict: bool = False,
) -> Any:
    """Parse one JSON document; every way it can be malformed is one `err` line naming `where`.

    Integers longer than MAX_INT_DIGITS become floats (so a 400-digit number is inf and the field's
    own check refuses it), and documents nested deeper than MAX_JSON_DEPTH are refused. `strict`
    (documents that will be written out again, such as an HTTP body forwarded upstream) also refuses
    what strict JSON cannot carry anywhere in the document: NaN, Infinity, numbers that overflow to
    infinity and strings with lone surrogates.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise err(f"{where}: not UTF-8 text") from None
    try:
        doc = json.loads(data, parse_int=_parse_int, parse_constant=_no_constant if strict else None)
    except RecursionError:
        raise err(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, the interpreter's digit limit, a NaN or Infinity in strict mode
        raise err(f"{where}: malformed JSON ({str(e).splitlines()[0][:120]})") from None
    if _depth(doc, max_depth, where if strict else None, err) > max_depth:
        raise err(f"{where}: JSON nested deeper than {max_depth} levels")
    return doc


def _parse_int(s: str) -> int | float:
    return int(s) if len(s) <= MAX_INT_DIGITS else float(s)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _depth(doc: Any, limit: int, strict_where: str | None = None, err: type[LrOnnxError] = InputError) -> int:
    """The nesting depth (stops counting past `limit`); with `strict_where`, every leaf is checked as well."""
    depth, level = 0, [doc]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
                if strict_where is not None:
                    nxt.extend(v.keys())
            elif isinstance(v, list):
                nxt.extend(v)
            elif strict_where is None:
                continue
            elif isinstance(v, float) and not math.isfinite(v):
                raise err(f"{strict_where}: a number too large to be carried as JSON")
            elif isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise err(f"{strict_where}: a string with a lone surrogate (not valid Unicode)") from None
        level = nxt
    return depth - 1


def read_regular_file(path: Any, cap: int, what: str, *, err: type[LrOnnxError] = InputError) -> bytes:
    """The bytes of a regular file of at most `cap` bytes. A FIFO, a device (/dev/zero), a directory or a
    larger file is one `err` line: opened without blocking and checked on the open descriptor, so nothing
    can hang on a FIFO or read forever from a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise err(f"{path}: no such {what}") from None
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        raise err(f"{path}: {what} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise err(f"{path}: the {what} must be a regular file")
        if st.st_size > cap:
            raise err(f"{path}: the {what} is larger than {cap:,} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(cap + 1)
    except OSError as e:
        raise err(f"{path}: {what} cannot be read ({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise err(f"{path}: the {what} is larger than {cap:,} bytes")
    return data


def _show(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


# ----------------------------------------------------------------------------- a routing query's shape
def as_list(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def as_iterable(queries: Any) -> Iterable[Any]:
    if isinstance(queries, (str, bytes)) or not hasattr(queries, "__iter__"):
        raise InputError(f"queries must be a list of (images, question) pairs, got {type(queries).__name__}")
    return cast(Iterable[Any], queries)


def as_query(x: Any) -> tuple[list[Any], str]:
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise InputError("each query must be an (images, question) pair")
    return as_list(x[0]), x[1]


def clean_question(value: Any) -> str:
    q = text(value, "question")
    if len(q) > MAX_QUESTION_CHARS:
        warnings.warn(
            f"question of {len(q):,} characters truncated to {MAX_QUESTION_CHARS:,} "
            f"(the text encoder reads at most its first tokens anyway)",
            LrOnnxWarning,
            stacklevel=3,
        )
        q = q[:MAX_QUESTION_CHARS]
    return q
