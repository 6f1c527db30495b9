"""Decision log: one JSON line per routing decision, written off the request path (issue 26).

A router that never sees what happened after it routed goes stale. The log is the first half of the loop:
each decision's id, time, bundle, lambda, available pool, chosen model and its propensity, every candidate's
mu, sigma, mu_tilde and expected cost, and the query's compact embedding as the router saw it (its key in the
capability memory's retrieval space, fp16, base64). `feedback` attaches observed outcomes to those ids, and
`refresh` turns them into a new bundle. By default no user content is stored: the question is written only
with `content=True` (`--log-content`); image bytes are never written, only their sizes.

Files are `decisions-<time>-<pid>-<n>.jsonl` in the log folder, one writer per process (so processes never
interleave), a new file past `max_file_bytes`; with `keep_files` N, only the newest N decision files are kept. Records go through a bounded queue to one writer thread: a
request never waits for the disk. A full queue or a failing disk (ENOSPC) drops records, counts them in
`dropped`, and routing goes on. Whole lines only: a record is serialised first and written in one call.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .decision import Decision
    from .router import Router

DECISIONS = "decisions-"
FEEDBACK = "feedback-"
SUFFIX = ".jsonl"
DEFAULT_MAX_FILE_MB = 64.0
DEFAULT_QUEUE = 10_000
ROUND = 6  # decimals kept of each number in a record


def new_id() -> str:
    return uuid.uuid4().hex


def encode_key(key: np.ndarray) -> str:
    return base64.b64encode(np.asarray(key, "<f2").tobytes()).decode("ascii")


def decode_key(s: str, dim: int) -> np.ndarray | None:
    """A record's key back as fp32 `[dim]`; None when it is absent or not `dim` fp16 numbers (another bundle's)."""
    try:
        a = np.frombuffer(base64.b64decode(s, validate=True), "<f2")
    except (ValueError, TypeError):
        return None
    return a.astype(np.float32) if a.shape == (dim,) and np.isfinite(a).all() else None


def log_folder(folder: str | os.PathLike[str]) -> Path:
    """The log folder, created if missing; a clear error when it cannot be."""
    path = Path(folder)
    if not str(folder).strip():
        raise InputError("the log folder is empty")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot be used as a log folder ({e.strerror or type(e).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the log folder is not writable")
    return path


def log_files(folder: str | os.PathLike[str], prefix: str) -> list[Path]:
    """The folder's files of one kind (decisions or feedback), oldest first (the names start with the time)."""
    return sorted(p for p in Path(folder).glob(f"{prefix}*{SUFFIX}") if p.is_file())


def read_records(files: list[Path]) -> Iterator[dict[str, Any]]:
    """Every whole JSON object line of `files`, in order; a torn last line (a crash mid-write) or a foreign line is
    skipped, never an error: a log is evidence, not input to trust."""
    for path in files:
        try:
            fh = open(path, "rb")
        except OSError:
            continue
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                    yield rec


class DecisionLog:
    """Append decisions to `folder` from a background thread; `submit` never blocks and never raises on the disk."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        content: bool = False,
        max_file_mb: float = DEFAULT_MAX_FILE_MB,
        keep_files: int = 0,
        queue_size: int = DEFAULT_QUEUE,
    ):
        self.folder = log_folder(folder)
        self.content = bool(content)
        self.max_file_bytes = max(1, int(max_file_mb * 2**20))
        self.keep_files = max(0, int(keep_files))  # 0: keep every file; else the newest N decision files stay
        self.written = 0
        self.dropped = 0
        self.listeners: list[Any] = []  # called with each record as it is submitted (feedback's id index)
        self._q: queue.Queue[Any] = queue.Queue(queue_size)
        self._fh = None
        self._size = 0
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lr-onnx-decision-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def submit(self, record: dict[str, Any]) -> None:
        for fn in self.listeners:
            fn(record)
        try:
            self._q.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted record is written or dropped; False on timeout."""
        end = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.005)
        return not self._q.unfinished_tasks

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush()
            self._q.put(None)
            self._thread.join(timeout=10)

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writer thread
    def _open(self) -> Any:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.folder / f"{DECISIONS}{stamp}-{os.getpid()}-{self._seq:04d}{SUFFIX}"
        fh = open(path, "ab", buffering=0)
        if self.keep_files:  # retention: the oldest decision files go (names start with the time: oldest first)
            for old in log_files(self.folder, DECISIONS)[: -self.keep_files]:
                try:
                    old.unlink()
                except OSError:
                    pass
        return fh

    def _write(self, payload: bytes, n: int) -> None:
        try:
            if self._fh is None or self._size >= self.max_file_bytes:
                if self._fh is not None:
                    self._fh.close()
                self._fh, self._size = None, 0
                self._fh = self._open()
            assert self._fh is not None
            self._fh.write(payload)  # unbuffered: one write call per batch of whole lines
            self._size += len(payload)
            self.written += n
        except OSError:  # disk full, folder gone, ...: drop, count, carry on with a fresh file
            self.dropped += n
            try:
                if self._fh is not None:
                    self._fh.close()
            except OSError:
                pass
            self._fh = None

    def _run(self) -> None:
        while True:
            rec = self._q.get()
            batch = [rec]
            while len(batch) < 256:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            lines = [json.dumps(r, separators=(",", ":"), allow_nan=False) for r in batch if r is not None]
            if lines:
                self._write(("\n".join(lines) + "\n").encode("utf-8"), len(lines))
            for _ in batch:
                self._q.task_done()
            if stop:
                if self._fh is not None:
                    self._fh.close()
                return


def decision_record(
    decision: "Decision",
    *,
    time_s: float,
    bundle: str,
    space: str | None,
    key: np.ndarray | None,
    slice_: int,
    question: str | None = None,
    sizes: Any = None,
    explore: str | None = None,
) -> dict[str, Any]:
    """The log line of one `Decision` (its `id` set), with what `refresh` needs to learn from it later."""
    cands = {
        c.name: [round(c.mu, ROUND), round(c.sigma, ROUND), round(c.mu_tilde, ROUND), float(f"{c.expected_cost:.6g}")]
        for c in decision.candidates
    }
    rec = {
        "id": decision.id,
        "time": round(time_s, 3),
        "bundle": bundle,
        "space": space,
        "lambda": decision.lam,
        "pool": list(cands),
        "chosen": decision.model,
        "propensity": round(decision.propensity, ROUND),
        "explore": explore,
        "candidates": cands,
        "slice": int(slice_),
        "out_of_coverage": None if decision.coverage is None else decision.coverage["out_of_coverage"],
        "key": None if key is None else encode_key(key),
    }
    if question is not None:
        rec["content"] = {"question": question, "image_sizes": [list(s) for s in (sizes or ())]}
    return rec


def log_decisions(
    router: "Router", decisions: list[Any], q: np.ndarray, sims: np.ndarray, opts: list[Any], meta: list[Any] | None
) -> list[Any]:
    """Give each of `router`'s decisions an id and hand its record to the router's log (which never blocks): the
    query's memory key and slice (`sims`, its similarity to the slices) go with it."""
    from dataclasses import replace

    log = router.log
    assert log is not None, "start_log() first"
    bundle, space = router.log_ids()
    mem = router.memory()
    keys = mem.embed(q) if mem is not None else None
    slices = np.argmax(sims, axis=1)
    now = time.time()
    out = []
    for i, d in enumerate(decisions):
        d = replace(d, id=new_id())
        question, sizes = meta[i] if (meta is not None and log.content) else (None, None)
        log.submit(
            decision_record(
                d,
                time_s=now,
                bundle=bundle,
                space=space,
                key=None if keys is None else keys[i],
                slice_=int(slices[i]),
                question=question,
                sizes=sizes,
                explore=None if opts[i].explore is None else str(opts[i].explore),
            )
        )
        out.append(d)
    return out
