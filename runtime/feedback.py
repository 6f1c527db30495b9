"""Feedback: observed outcomes attached to logged decisions (issue 26).

    {"id": "<decision id>", "score": 0.0..1.0, "cost": USD (optional), "model": NAME (optional: the chosen one)}

One `FeedbackStore` per log folder and process. It knows the decisions of the folder (read from the decision
files at start, then told of each new one by the `DecisionLog` it listens to), refuses what it cannot attach
(`UnknownDecision`: no such id, or its time is past the window; `FeedbackConflict`: another score for the same
(id, model)), and appends each accepted outcome as one line of `feedback-<time>-<pid>.jsonl`. It is idempotent
per (id, model): the same outcome twice is recorded once. A lock orders concurrent callers in a process, and a
`flock` on `.feedback.lock` orders processes (a server and `lr-onnx feedback` on one folder), each re-reading
the lines the others appended before it checks.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .bounds import MAX_COST_USD
from .decisionlog import DECISIONS, FEEDBACK, SUFFIX, log_files, log_folder, read_records
from .errors import InputError, LrOnnxError
from .validate import loads_json, number, read_regular_file, text

DEFAULT_WINDOW_H = 24.0 * 7
FIELDS = ("id", "score", "cost", "model")
LOCK = ".feedback.lock"


class UnknownDecision(LrOnnxError):
    """No logged decision has this id (or it is older than the feedback window)."""


class FeedbackConflict(LrOnnxError):
    """This (id, model) already has a different outcome."""


class FeedbackUnavailable(LrOnnxError):
    """The feedback could not be written (a full or failing disk); nothing was recorded."""


def parse_feedback(obj: Any, where: str = "feedback") -> dict[str, Any]:
    """One feedback item checked: an object with `id` (text), `score` (a finite number in [0, 1]), optional `cost`
    (a finite number >= 0, USD) and `model` (text); any other key, a bool or a NaN is an `InputError`."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected an object with id and score, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(FIELDS)}")
    if "id" not in obj or "score" not in obj:
        raise InputError(f"{where}: 'id' and 'score' are required")
    fid = text(obj["id"], f"{where}: id").strip()
    if not fid or len(fid) > 128:
        raise InputError(f"{where}: id must be a decision id (1 to 128 characters)")
    out = {"id": fid, "score": number(obj["score"], f"{where}: score", hi=1.0)}
    if obj.get("cost") is not None:
        out["cost"] = number(obj["cost"], f"{where}: cost", hi=MAX_COST_USD)
    if obj.get("model") is not None:
        out["model"] = text(obj["model"], f"{where}: model").strip()
    return out


class FeedbackStore:
    def __init__(self, folder: str | os.PathLike[str], *, window_h: float = DEFAULT_WINDOW_H, log: Any = None):
        self.folder = log_folder(folder)
        self.window_s = float(window_h) * 3600.0
        self._lock = threading.Lock()
        self._decisions: OrderedDict[str, tuple[float, str | None, frozenset[Any]]] = OrderedDict()  # by time
        self._seen: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._offsets: dict[Path, int] = {}
        self._file: Path | None = None
        for rec in read_records(self._recent(DECISIONS)):  # a long-running log: only files the window can reach
            self.remember(rec)
        self._catch_up()
        if log is not None:
            log.listeners.append(self.remember)

    # ------------------------------------------------------------------ what it knows
    def remember(self, rec: dict[str, Any]) -> None:
        """A logged decision feedback may name (the decision log calls this for each new record)."""
        t = rec.get("time")
        if not isinstance(t, (int, float)):
            return
        with self._lock:
            self._decisions[rec["id"]] = (float(t), rec.get("chosen"), frozenset(rec.get("pool") or ()))
            self._prune()

    def _prune(self) -> None:
        cutoff = time.time() - self.window_s
        while self._decisions:
            first = next(iter(self._decisions.values()))
            if first[0] >= cutoff:
                break
            self._decisions.popitem(last=False)

    def _recent(self, prefix: str) -> list[Path]:
        """The folder's files of one kind last written within the feedback window (older ones hold only decisions
        feedback can no longer name, and outcomes for them)."""
        cutoff = time.time() - self.window_s
        out = []
        for p in log_files(self.folder, prefix):
            try:
                if p.stat().st_mtime >= cutoff:
                    out.append(p)
            except OSError:
                continue
        return out

    def _catch_up(self) -> None:
        """Read the feedback lines appended (by this or another process) since the last look."""
        for path in self._recent(FEEDBACK):
            start = self._offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size <= start:
                    continue
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(size - start)
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line being written by another process is read next time
            for line in data[:end].splitlines():
                try:
                    rec = json.loads(line)
                    self._seen.setdefault((rec["id"], rec["model"]), (rec["score"], rec.get("cost")))
                except (ValueError, KeyError, TypeError):
                    continue
            self._offsets[path] = start + end

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            try:
                fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise FeedbackUnavailable(f"{self.folder}: cannot lock the feedback ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._catch_up()
                yield
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ adding
    def check(self, item: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """The record `item` (parsed) would be written as, or the reason it is refused."""
        now = time.time() if now is None else now
        d = self._decisions.get(item["id"])
        if d is None or d[0] < now - self.window_s:
            raise UnknownDecision(
                f"no logged decision with id {item['id']!r}" + (" within the feedback window" if d is not None else "")
            )
        t, chosen, pool = d
        model = item.get("model") or chosen
        if model is None:
            raise InputError(f"decision {item['id']!r} routed to no model: name the model the outcome is for")
        if model not in pool:
            raise InputError(f"model {model!r} was not a candidate of decision {item['id']!r}")
        return {
            "id": item["id"],
            "model": model,
            "score": item["score"],
            "cost": item.get("cost"),
            "decision_time": t,
            "time": round(now, 3),
        }

    def add(self, items: list[dict[str, Any]]) -> list[str]:
        """Record parsed items, all or none: each checked first (any refusal raises and nothing is written), then
        appended in one write. Returns per item "recorded" or "duplicate" (the same outcome was recorded before)."""
        with self._exclusive():
            status: list[str] = []
            lines: list[str] = []
            batch: dict[tuple[str, str], tuple[Any, ...]] = {}
            for it in items:
                rec = self.check(it)
                key = (rec["id"], rec["model"])
                prev = self._seen.get(key, batch.get(key))
                if prev is not None:
                    if prev != (rec["score"], rec["cost"]):
                        raise FeedbackConflict(
                            f"decision {rec['id']!r} already has a different outcome for model "
                            f"{rec['model']!r} (score {prev[0]:g}); feedback is recorded once"
                        )
                    status.append("duplicate")
                    continue
                batch[key] = (rec["score"], rec["cost"])
                lines.append(json.dumps(rec, separators=(",", ":"), allow_nan=False))
                status.append("recorded")
            if lines:
                self._append(("\n".join(lines) + "\n").encode("utf-8"))
                self._seen.update(batch)
            return status

    def _append(self, payload: bytes) -> None:
        if self._file is None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self._file = self.folder / f"{FEEDBACK}{stamp}-{os.getpid()}-{id(self) & 0xFFFF:04x}{SUFFIX}"
        try:
            fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise FeedbackUnavailable(f"{self._file}: cannot be written ({e.strerror})") from None
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                n = os.write(fd, payload)
                if n != len(payload):
                    raise OSError(28, "short write")
            except OSError as e:  # a full disk: cut the partial line away so the file stays whole lines
                os.ftruncate(fd, start)
                raise FeedbackUnavailable(f"{self._file}: feedback not recorded ({e.strerror or e})") from None
        finally:
            os.close(fd)
        self._offsets.setdefault(self._file, 0)
        self._offsets[self._file] += len(payload)


def read_feedback_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """`lr-onnx feedback`'s input: a JSONL file of feedback items, every line checked (the first bad one is an
    `InputError` naming its line; nothing is recorded then)."""
    raw = read_regular_file(path, 256 << 20, "feedback file")
    items = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        obj = loads_json(line, f"{path}:{n}", strict=True)
        items.append(parse_feedback(obj, f"{path}:{n}"))
    if not items:
        raise InputError(f"{path}: no feedback in the file")
    return items


def labelled(folder: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(decisions by id, feedback records) of a log folder, for `refresh`; the first outcome per (id, model)."""
    folder = Path(folder)
    decisions = {r["id"]: r for r in read_records(log_files(folder, DECISIONS))}
    seen, fb = set(), []
    for r in read_records(log_files(folder, FEEDBACK)):
        key = (r["id"], r.get("model"))
        if key not in seen and isinstance(r.get("score"), (int, float)):
            seen.add(key)
            fb.append(r)
    return decisions, fb
