"""`lr-onnx route-batch`: route a JSONL or CSV file of queries, resumably.

Each finished decision is appended to OUT as one JSON line and flushed at once, so
a crash or Ctrl-C loses nothing already routed; a rerun skips the ids already in
OUT. Malformed input lines are reported with their line numbers and skipped; the
rest of the file is still processed.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError, LrOnnxError


def read_queries(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, {"id", "question", "images"} or None, error or None) per input line."""
    base = path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "question" not in reader.fieldnames:
                raise InputError(f"{path}: a CSV input needs a 'question' column (optional: id, images)")
            for row in reader:
                imgs = [p for p in (row.get("images") or "").replace("|", ";").split(";") if p.strip()]
                yield reader.line_num, _query(row, imgs, base, reader.line_num), None
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"malformed JSON ({str(e).splitlines()[0]})"
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
                yield lineno, None, "expected an object with a 'question' string"
                continue
            imgs = rec.get("images") or []
            if isinstance(imgs, str):
                imgs = [imgs]
            yield lineno, _query(rec, imgs, base, lineno), None


def _query(rec: dict, images: list, base: Path, lineno: int) -> dict:
    paths = [p if os.path.isabs(str(p)) else str(base / str(p).strip()) for p in images]
    return {"id": str(rec.get("id") or f"line-{lineno}"), "question": rec.get("question") or "", "images": paths}


def done_ids(out: Path) -> set[str]:
    """Ids already routed in OUT (a torn last line from a crash is ignored and redone)."""
    ids: set[str] = set()
    if out.is_file():
        with open(out, encoding="utf-8") as fh:
            for line in fh:
                try:
                    ids.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return ids


def route_batch(router, inp: str | os.PathLike, out: str | os.PathLike, *, batch_size: int = 64,
                on_progress: Callable[[int], None] | None = None, **route_kw) -> dict:
    """Route every query of `inp` not yet in `out`; returns counts and the per-line problems."""
    inp, out = Path(inp), Path(out)
    if not inp.is_file():
        raise InputError(f"{inp}: no such input file")
    skip = done_ids(out)
    if out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with open(out, "ab") as fh:  # close a line torn by a crash so the next record starts cleanly
            fh.write(b"\n")
    problems: list[str] = []
    counts = {"routed": 0, "skipped_done": 0, "failed": 0}
    pending: list[dict] = []

    def flush(fh):
        if not pending:
            return
        try:
            decisions = router.route_many([(q["images"], q["question"]) for q in pending],
                                          batch_size=len(pending), **route_kw)
            results = list(zip(pending, decisions))
        except LrOnnxError:  # one bad query in the batch: route them one by one to find it
            results = []
            for q in pending:
                try:
                    results.append((q, router.route(q["images"], q["question"], **route_kw)))
                except LrOnnxError as e:
                    problems.append(f"{inp}:{q['_line']}: {e}")
                    counts["failed"] += 1
        for q, d in results:
            fh.write(json.dumps({"id": q["id"], **d.to_dict()}) + "\n")
            fh.flush()
            counts["routed"] += 1
        if on_progress:
            on_progress(len(pending))
        pending.clear()

    with open(out, "a", encoding="utf-8") as fh:
        for lineno, q, err in read_queries(inp):
            if err:
                problems.append(f"{inp}:{lineno}: {err}")
                counts["failed"] += 1
                continue
            if q["id"] in skip:
                counts["skipped_done"] += 1
                continue
            skip.add(q["id"])
            q["_line"] = lineno
            pending.append(q)
            if len(pending) >= batch_size:
                flush(fh)
        flush(fh)
    return {**counts, "problems": problems}
