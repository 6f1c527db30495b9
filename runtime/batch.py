"""`lr-onnx route-batch`: route a JSONL or CSV file of queries, resumably.

Guarantees (the README repeats them):
- one bad record (malformed JSON, invalid UTF-8, wrong types, an oversized CSV field, an
  unreadable image) is reported with its line number and skipped; it never stops the run
  or costs the good records of its batch;
- a duplicate id is reported and skipped, never silently taken for "already done";
- OUT is locked while a run writes it (a second run on the same OUT is refused), and OUT
  may not be the input (a file given as `-` on standard input included);
- OUT records what made it in a sidecar, OUT.lr-onnx.json (lr-onnx, the bundle's digest, the
  input), written before the first decision: a non-empty OUT without one, or made with another
  bundle or from another input, is refused, so no file is ever taken for "already done" by accident;
- OUT is always valid JSONL: each batch is appended as whole lines; a write that fails
  (disk full, file size limit) is rolled back to the last whole line, and a torn last line
  left by a crash (kill -9) is cut off when the next run opens OUT. A rerun skips the
  ids already in OUT, so it resumes exactly where the last whole line ended.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import select
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TYPE_CHECKING

from .errors import InputError, LrOnnxError
from .files import atomic_write_bytes
from .prefetch import prefetched
from .validate import loads_json, read_regular_file
from .records import misspelt_field, parse_record, prepare_records, route_records

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .decision import RouteOptions
    from .router import Router

FIFO_WAIT_S = 30.0
MAX_CSV_FIELD = 131_072  # characters: the csv module's default limit, enforced per record here
STDIN = "-"


# ----------------------------------------------------------------------------- input
def open_input(inp: str | os.PathLike[str], *, fifo_wait_s: float = FIFO_WAIT_S) -> tuple[BinaryIO, Path, bool]:
    """(binary stream, folder that relative image paths start from, whether it is a regular file).

    `-` is standard input (refused when it is a terminal); a FIFO waits up to `fifo_wait_s` for a writer.
    """
    if str(inp) == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input on standard input: pipe JSONL into `-` or give a file")
        return sys.stdin.buffer, Path.cwd(), False
    path = Path(inp)
    try:
        st = path.stat()
    except OSError:
        raise InputError(f"{path}: no such input file") from None
    if stat.S_ISFIFO(st.st_mode):
        return _open_fifo(path, fifo_wait_s), path.parent, False
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file, FIFO or '-'")
    try:
        return open(path, "rb"), path.parent, True
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None


def _open_fifo(path: Path, wait_s: float) -> BinaryIO:
    """Open a FIFO without hanging forever when nobody writes to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if not poller.poll(int(wait_s * 1000)):
        os.close(fd)
        raise InputError(f"{path}: no writer opened this FIFO within {wait_s:g} s")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def count_records(path: Path) -> int:
    """Non-blank lines of a regular file (the progress bar's length; a CSV's header is not a record)."""
    with open(path, "rb") as fh:
        n = sum(1 for line in fh if line.strip())
    return max(0, n - 1) if path.suffix.lower() == ".csv" else n


def read_queries(
    fh: BinaryIO, base: Path, *, csv_format: bool = False, name: str = "input"
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, {"id", "question", "images"} or None, problem or None) per record; never raises on a record."""
    if csv_format:
        yield from _read_csv(fh, base, name)
        return
    for lineno, raw in enumerate(fh, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            rec = loads_json(raw, "line")
            if not isinstance(rec, dict):
                raise InputError("expected a JSON object with a 'question' string")
            yield lineno, parse_record(rec, lineno, base, id_given="id" in rec), None
        except InputError as e:
            yield lineno, None, str(e).removeprefix("line: ")


def read_query_file(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A whole JSONL or CSV file of queries, as route-batch reads them: the good records, and a line per bad one."""
    path = Path(path)
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, "rb") as fh:
        for lineno, rec, err in read_queries(fh, path.parent, csv_format=path.suffix.lower() == ".csv", name=str(path)):
            if err or rec is None:
                problems.append(f"{path}:{lineno}: {err}")
            else:
                records.append(rec)
    return records, problems


def _read_csv(fh: BinaryIO, base: Path, name: str) -> Iterator[Any]:
    textio = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(textio)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as e:
        raise InputError(f"{name}: malformed CSV header ({e})") from None
    typo = misspelt_field(header)
    if typo:
        raise InputError(f"{name}: CSV header: {typo}")
    if "question" not in header:
        raise InputError(f"{name}: a CSV input needs a 'question' column (optional: id, images)")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, None, f"malformed CSV record ({e})"
            continue
        if not any(cell.strip() for cell in row):
            continue
        if any(len(cell) > MAX_CSV_FIELD for cell in row):  # the csv module's limit is global state: ours is not
            yield reader.line_num, None, f"malformed CSV record (field larger than field limit ({MAX_CSV_FIELD}))"
            continue
        if len(row) != len(header):
            yield reader.line_num, None, f"expected {len(header)} fields, got {len(row)}"
            continue
        rec = dict(zip(header, row))
        images = [p for p in rec.get("images", "").replace("|", ";").split(";") if p.strip()]
        try:
            yield (
                reader.line_num,
                parse_record({**rec, "images": images}, reader.line_num, base, id_given="id" in header),
                None,
            )
        except InputError as e:
            yield reader.line_num, None, str(e)


# ----------------------------------------------------------------------------- output
def open_out(out: Path, inp_path: Path | None, inp_stream: BinaryIO | None = None) -> int:
    """OUT opened for appending, exclusively locked; refused when it is the input (a path, or a stream such as
    standard input that is the very file) or not a regular file."""
    if not str(out).strip():
        raise InputError("--out is empty")
    if not out.parent.is_dir():
        raise InputError(f"{out}: the folder {out.parent} does not exist")
    if inp_path is not None and out.exists() and os.path.samefile(out, inp_path):
        raise InputError(f"{out}: OUT is the input file; write the decisions somewhere else")
    if out.exists() and not out.is_file():
        raise InputError(f"{out}: OUT must be a regular file")
    try:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise InputError(f"{out}: cannot be written ({e.strerror})") from None
    if inp_stream is not None and _same_file(inp_stream, fd):
        os.close(fd)
        raise InputError(f"{out}: OUT is the input file (given on standard input); write the decisions somewhere else")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise InputError(
            f"{out}: another route-batch is writing this file; wait for it or choose another OUT"
        ) from None
    return fd


def _same_file(stream: BinaryIO, fd: int) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


SIDECAR = ".lr-onnx.json"
TOOL = "lr-onnx route-batch"


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR)


def input_label(inp: Any) -> str:
    """How a run's input is named in OUT's sidecar: `-`, or the input file's absolute path."""
    return STDIN if str(inp) == STDIN else str(Path(inp).resolve())


def claim_out(fd: int, out: Path, *, bundle: str, input_name: str) -> None:
    """OUT is empty (its sidecar is written now, before any decision) or the output of an earlier route-batch
    with this bundle and this input (resumed); anything else is refused with one line."""
    want = {"tool": TOOL, "bundle_sha256": bundle, "input": input_name}
    side = sidecar(out)
    if os.fstat(fd).st_size == 0:
        try:
            atomic_write_bytes(side, (json.dumps(want, indent=2) + "\n").encode("utf-8"))
        except OSError as e:
            raise InputError(f"{side}: cannot be written ({e.strerror})") from None
        return
    try:
        got = loads_json(read_regular_file(side, 1 << 16, "route-batch sidecar"), str(side))
    except InputError:
        raise InputError(
            f"{out}: holds data but is not the output of an lr-onnx route-batch run (no readable "
            f"{side.name} beside it); choose a new OUT, nothing was written"
        ) from None
    if not isinstance(got, dict) or got.get("tool") != TOOL:
        raise InputError(f"{side}: not an lr-onnx route-batch sidecar; choose a new OUT, nothing was written")
    if got.get("bundle_sha256") != bundle:
        raise InputError(
            f"{out}: was written with another bundle (digest {str(got.get('bundle_sha256'))[:12]}, this "
            f"one {bundle[:12]}); choose a new OUT to route with this bundle"
        )
    if got.get("input") != input_name:
        raise InputError(
            f"{out}: was written from the input {got.get('input')!r}, not {input_name!r}; choose a new "
            f"OUT for this input"
        )


def repair_and_read_ids(fd: int, out: Path) -> set[str]:
    """Cut a torn last line (a crash mid-write) and return the ids of the whole lines."""
    size = os.fstat(fd).st_size
    with os.fdopen(os.dup(fd), "rb") as fh:
        fh.seek(0)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    if end != size:
        try:
            os.ftruncate(fd, end)
        except OSError as e:
            raise InputError(f"{out}: cannot cut its torn last line ({e.strerror})") from None
    ids: set[str] = set()
    for line in data[:end].splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return ids


def append_lines(fd: int, out: Path, payload: bytes, written: int) -> None:
    """Append whole lines; on failure roll OUT back to its last whole line and stop with one line."""
    start = os.fstat(fd).st_size
    view = memoryview(payload)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise LrOnnxError(
            f"{out}: write failed ({e.strerror}); {written} decisions were written before it and "
            f"OUT ends on a whole line: rerun to resume"
        ) from None


def route_batch(
    router: "Router",
    inp: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opts: "RouteOptions | None" = None,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
    fifo_wait_s: float = FIFO_WAIT_S,
    on_problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Route every query of `inp` (a path, a FIFO or `-`) not yet in `out`; returns counts and per-line problems.

    `opts`: the `RouteOptions` every record is routed with, resolved once by the caller (`Router.options`, before
    any record is read); None = the bundle's defaults.
    """
    opts = router.options() if opts is None else opts
    out = Path(out)
    fh, base, regular = open_input(inp, fifo_wait_s=fifo_wait_s)
    name = str(inp)
    try:
        fd = open_out(out, Path(inp) if regular else None, None if regular else fh)
        try:
            claim_out(fd, out, bundle=router.bundle.digest, input_name=input_label(inp))
            skip = repair_and_read_ids(fd, out)
            return _run(router, fh, base, name, fd, out, skip, batch_size, on_progress, opts, regular, on_problem)
        finally:
            os.close(fd)
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _run(
    router: "Router",
    fh: Any,
    base: Any,
    name: Any,
    fd: Any,
    out: Any,
    skip: Any,
    batch_size: Any,
    on_progress: Any,
    opts: Any,
    regular: bool,
    on_problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    # reading (in the prefetch thread, for a regular file) and routing (here) keep their own counts and problems
    read = {"failed": 0, "duplicates": 0, "skipped_done": 0}
    routed = {"routed": 0, "failed": 0, "out_of_coverage": 0}
    chosen: dict[str, int] = {}
    spent = 0.0  # the chosen models' expected cost, summed
    told: set[str] = set()
    read_problems: list[tuple[int, str]] = []
    route_problems: list[tuple[int, str]] = []

    def tell() -> None:
        """Say the problems not said yet (a killed run has already reported what it skipped)."""
        if on_problem:
            for _, msg in sorted(p for p in read_problems + route_problems if p[1] not in told):
                told.add(msg)
                on_problem(msg)

    def batches() -> Iterator[list[dict[str, Any]]]:
        """The records still to route, batch_size at a time; bad, duplicate and done records counted here."""
        first_line: dict[str, int] = {}
        pending: list[dict[str, Any]] = []
        for lineno, q, err in read_queries(fh, base, csv_format=name.lower().endswith(".csv"), name=name):
            if err or q is None:
                read_problems.append((lineno, f"{name}:{lineno}: {err}"))
                read["failed"] += 1
                continue
            if q["id"] in first_line:
                read_problems.append(
                    (
                        lineno,
                        f"{name}:{lineno}: duplicate id '{q['id']}' (first on line "
                        f"{first_line[q['id']]}); give every record its own id",
                    )
                )
                read["duplicates"] += 1
                continue
            first_line[q["id"]] = lineno
            if q["id"] in skip:
                read["skipped_done"] += 1
                continue
            q["_line"] = lineno
            pending.append(q)
            if len(pending) >= batch_size:
                yield pending
                pending = []
        if pending:
            yield pending

    def prepare(records: list[dict[str, Any]]) -> list[Any]:
        return prepare_records(router, records)

    # a regular file: the next batch is read and decoded while this one is routed; a stream (stdin, a FIFO):
    # each batch is routed and written as soon as it is complete, never held back waiting for the next
    ahead = prefetched(batches(), prepare) if regular else ((b, prepare(b)) for b in batches())
    for batch, prepared in ahead:
        results = []
        for q, d, problem in route_records(router, batch, prepared, opts):
            if d is None:
                route_problems.append((q["_line"], f"{name}:{q['_line']}: {problem}"))
                routed["failed"] += 1
            else:
                results.append((q, d))
                if d.model is not None:
                    chosen[d.model] = chosen.get(d.model, 0) + 1
                    spent += next(c.expected_cost for c in d.candidates if c.name == d.model)
        payload = "".join(json.dumps({"id": q["id"], **d.to_dict()}, allow_nan=False) + "\n" for q, d in results)
        append_lines(fd, out, payload.encode("utf-8"), routed["routed"])
        tell()  # what this batch skipped, said as soon as its good records are safely in OUT
        routed["routed"] += len(results)
        routed["out_of_coverage"] += sum(bool(d.coverage and d.coverage["out_of_coverage"]) for _, d in results)
        if on_progress:
            on_progress(len(batch))
    counts = {
        "routed": routed["routed"],
        "skipped_done": read["skipped_done"],
        "failed": read["failed"] + routed["failed"],
        "duplicates": read["duplicates"],
        "out_of_coverage": routed["out_of_coverage"],
    }
    tell()
    return {
        **counts,
        "chosen": chosen,
        "expected_cost_usd": spent,
        "problems": [m for _, m in sorted(read_problems + route_problems, key=lambda p: p[0])],
    }
