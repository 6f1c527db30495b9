"""route-batch's records, for both engines (local and Ray): a line made a checked record, records prepared one by
one (a bad image fails alone), then routed in one batch."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, LrOnnxError
from .validate import text

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .router import Router


FIELDS = ("id", "question", "images")  # what a record is read for; any other field is the user's own, kept out


def misspelt_field(names: Any) -> str | None:
    """The first of `names` that is a typo of 'question' or 'images' (a case variant, or at most two letters
    inserted, dropped or changed: 'image', 'imgs', 'Question', 'questoin'), said with what it should be; None if
    there is none. Other fields (the user's own metadata: 'question_id', 'question_type', '_id') are fine: they are
    not read, but a misspelt 'images' must not route the query as text only without a word."""
    for name in names:
        if isinstance(name, str) and name not in FIELDS:
            field = _typo_of(name)
            if field:
                return f"field {name!r} is not read: did you mean {field!r}? (fields: {', '.join(FIELDS)})"
    return None


@functools.lru_cache(maxsize=1024)
def _typo_of(name: str) -> str | None:
    """The field `name` is a typo of, or None; cached, since every record of a file repeats its field names."""
    low = name.strip().lower()
    for field in FIELDS[1:]:  # not 'id': '_id', 'uid' and 'idx' are everyday metadata
        if _edits(low, field) <= 2:
            return field
    return None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two short strings."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def parse_record(rec: dict[str, Any], lineno: int, base: Path, *, id_given: bool) -> dict[str, Any]:
    """One validated query; raises `InputError` naming the field."""
    typo = misspelt_field(rec)
    if typo:
        raise InputError(typo)
    question = text(rec.get("question"), "'question'")
    if not id_given:
        qid = f"line-{lineno}"
    else:
        raw = rec.get("id")
        if isinstance(raw, int) and not isinstance(raw, bool):
            qid = str(raw)
        elif isinstance(raw, str) and raw.strip():
            qid = text(raw, "'id'")
        else:
            raise InputError(f"'id' must be a non-empty string or an integer, got {json.dumps(raw)[:40]}")
    images = rec.get("images")
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise InputError("'images' must be a path or a list of paths")
    paths = []
    for p in images:
        p = text(p, "image path").strip()
        paths.append(p if os.path.isabs(p) or "://" in p else str(base / p))  # URIs: the ray engine reads them
    return {"id": qid, "question": question, "images": paths}


# ----------------------------------------------------------------------------- routing records (both engines)
def prepare_records(router: "Router", records: list[dict[str, Any]]) -> list[Any]:
    """Each record's images decoded on its own (`Router.prepare`): a record whose image cannot be read gets its
    error in its place, and its batch-mates are unaffected."""
    out: list[Any] = []
    for q in records:
        try:
            out.append(router.prepare(q["images"], q["question"]))
        except LrOnnxError as e:
            out.append(e)
    return out


def route_records(
    router: "Router", records: list[dict[str, Any]], prepared: list[Any], opts: Any
) -> list[tuple[dict[str, Any], Any, str]]:
    """(record, Decision or None, problem) per record, in order: the good ones encoded in one batch and decided
    with `Router.decide_each`, so a record whose budget no model fits fails alone."""
    good = [i for i, p in enumerate(prepared) if not isinstance(p, LrOnnxError)]
    results = list(prepared)  # a record whose images failed keeps its error
    if good:
        try:
            feats = router.encode([prepared[i] for i in good])
            decided = router.decide_each(feats, [opts] * len(good), meta=[prepared[i].meta for i in good])
        except LrOnnxError as e:  # the encoders themselves failed: every record of the batch says so
            decided = [e] * len(good)
        for i, d in zip(good, decided):
            results[i] = d
    return [(q, None, str(r)) if isinstance(r, LrOnnxError) else (q, r, "") for q, r in zip(records, results)]
