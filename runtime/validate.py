"""The boundary checks every entrance shares: numbers, text, names and JSON documents.

CLI options, API arguments, manifests, datasets and batch files all meet user data
through these few functions, so "finite, in range, valid UTF-8, not nested past
reason" is decided once, and every refusal is one line naming the field.
"""
from __future__ import annotations

import json
import math
import numbers

from .errors import InputError, LrOnnxError

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 30  # longer integer literals in JSON are read as floats (inf past 1e308), never as bignums


def number(value, field: str, *, lo: float = 0.0, hi: float = 1e12, err: type[LrOnnxError] = InputError) -> float:
    """`value` as a finite float in [lo, hi]; ints, floats and numpy scalars pass, bools and strings do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise err(f"{field} must be a number, got {_show(value)}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        raise err(f"{field} must be a finite number, got an integer of {len(str(int(value)))} digits") from None
    if not math.isfinite(v):
        raise err(f"{field} must be a finite number, got {v}")
    if not lo <= v <= hi:
        raise err(f"{field} must be between {lo:g} and {hi:g}, got {v:g}")
    return v


def integer(value, field: str, *, lo: int, hi: int, err: type[LrOnnxError] = InputError) -> int:
    """`value` as an int in [lo, hi] (numpy integers pass, bools and floats do not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise err(f"{field} must be an integer, got {_show(value)}")
    v = int(value)
    if not lo <= v <= hi:
        raise err(f"{field} must be between {lo} and {hi}, got {_show(v)}")
    return v


def text(value, field: str, *, empty_ok: bool = False, err: type[LrOnnxError] = InputError) -> str:
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


def names(value, field: str, *, err: type[LrOnnxError] = InputError) -> list[str] | None:
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


def loads_json(data: str | bytes, where: str, *, err: type[LrOnnxError] = InputError,
               max_depth: int = MAX_JSON_DEPTH):
    """Parse one JSON document; every way it can be malformed is one `err` line naming `where`.

    Integers longer than MAX_INT_DIGITS become floats (so a 400-digit number is inf and the field's
    own check refuses it), and documents nested deeper than MAX_JSON_DEPTH are refused.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise err(f"{where}: not UTF-8 text") from None
    try:
        doc = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise err(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and the interpreter's digit limit
        raise err(f"{where}: malformed JSON ({str(e).splitlines()[0][:120]})") from None
    if _depth(doc, max_depth) > max_depth:
        raise err(f"{where}: JSON nested deeper than {max_depth} levels")
    return doc


def _parse_int(s: str):
    return int(s) if len(s) <= MAX_INT_DIGITS else float(s)


def _depth(doc, limit: int) -> int:
    depth, level = 0, [doc]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
    return depth - 1


def _show(value) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."
