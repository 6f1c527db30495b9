"""`lr-onnx route-batch --engine ray`: the same routing over a Ray Data pipeline, for logs that outgrow a machine.

    read (JSONL as text lines, CSV, Parquet; in parallel) -> map_batches over an actor pool, one `Router`
    per actor (the bundle is loaded once per actor, not per batch) -> rows stream back to the driver,
    which writes OUT: JSONL (appended, resumable exactly like the local engine) or Parquet (written
    whole, through a temporary file and a rename).

Every record is validated by the local engine's own `parse_record`, so a record means the same thing on
both engines and the decisions are identical. A bad record becomes a reported row, never a failed
job. Ids are required here (no line numbers across a cluster); duplicates are reported and skipped.
Image paths must be readable where the actors run: absolute paths on a shared file system, or URIs
that pyarrow's file systems open (s3://, gs://, hdfs://), read as bytes by the actor.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

import numpy as np

from .batch import append_lines, claim_out, input_label, open_out, repair_and_read_ids
from .records import parse_record, prepare_records, route_records
from .errors import InputError
from .files import atomic_write_bytes
from .validate import loads_json

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .decision import RouteOptions
    from .router import Router

_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "file://")


class RouterActor:
    """One Router per Ray actor; `__call__` routes one batch of rows and returns (id, decision JSON, problem)."""

    def __init__(
        self,
        bundle: str | None,
        opts: "RouteOptions | None",
        base: str,
        done: frozenset[str],
        log: tuple[str, bool] | None = None,
    ) -> None:
        from .router import Router

        self.router = Router.load(bundle, provider="cpu")
        self.opts, self.base, self.done = opts, Path(base), done
        if log is not None:  # each actor appends its own files to the (shared) log folder
            self.router.start_log(log[0], content=log[1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        ids, decisions, problems, todo = [], [], [], []
        for row in rows:
            try:
                from_jsonl = "text" in row and "question" not in row
                if from_jsonl:  # a JSONL line read as text
                    row = loads_json(row["text"], "line")
                    if not isinstance(row, dict):
                        raise InputError("expected a JSON object with a 'question' string")
                if row.get("id") is None or (isinstance(row.get("id"), float) and np.isnan(row["id"])):
                    raise InputError("an 'id' is required with --engine ray")
                imgs = row.get("images")
                if isinstance(imgs, float) and np.isnan(imgs):  # an empty CSV cell
                    row["images"] = None
                elif isinstance(imgs, str) and not from_jsonl:  # a CSV cell, split as the local engine does
                    row["images"] = [p for p in imgs.replace("|", ";").split(";") if p.strip()]
                q = parse_record(row, 0, self.base, id_given=True)
                if q["id"] in self.done:
                    continue
                q["images"] = [_read_uri(p) if p.startswith(_SCHEMES) else p for p in q["images"]]
            except InputError as e:
                ids.append(str(row.get("id", "?")) if isinstance(row, dict) else "?")
                decisions.append("")
                problems.append(str(e).removeprefix("line: "))
                continue
            todo.append(q)
        for q, d, err in route_records(self.router, todo, prepare_records(self.router, todo), self.opts):
            ids.append(q["id"])
            decisions.append(json.dumps(d.to_dict(), allow_nan=False) if d is not None else "")
            problems.append(err)
        if self.router.log is not None:  # an actor may be stopped without notice once the last batch is out
            self.router.log.flush()
        return {
            "id": np.array(ids, dtype=object),
            "decision": np.array(decisions, dtype=object),
            "problem": np.array(problems, dtype=object),
        }


def _read_uri(uri: str) -> bytes:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as fh:
            return bytes(fh.read())
    except Exception as e:  # pyarrow raises its own OSError / ArrowInvalid family
        raise InputError(f"{uri}: cannot be read ({str(e).splitlines()[0][:160]})") from None


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    out = []
    for i in range(n):
        row = {}
        for c in cols:
            v = batch[c][i]
            row[c] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
        out.append(row)
    return out


def read_dataset(inp: str) -> Any:
    """A Ray Dataset of the input: JSONL as text lines (a bad line is a bad record, not a failed read)."""
    import ray.data

    low = inp.lower()
    if low.endswith(".parquet") or os.path.isdir(inp):
        return ray.data.read_parquet(inp)
    if low.endswith(".csv"):
        return ray.data.read_csv(inp)
    return ray.data.read_text(inp, drop_empty_lines=True)


def route_batch_ray(
    router: "Router",
    inp: str,
    out: str | os.PathLike[str],
    *,
    bundle: str | None,
    address: str | None = None,
    opts: "RouteOptions | None" = None,
    batch_size: int = 64,
    actors: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    log: tuple[str, bool] | None = None,
) -> dict[str, Any]:
    """Route `inp` with Ray Data; `opts` (`RouteOptions`, resolved once by the caller with `router`; None = the
    bundle's defaults) travel to every actor as they are. `log`: (folder, content): each actor logs its decisions
    there (`runtime.decisionlog`; the folder must be reachable by the actors)."""
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--engine ray needs the ray extra: pip install '.[cpu,ray]'") from None
    opts = router.options() if opts is None else opts
    if not (inp.startswith(_SCHEMES) or Path(inp).exists()):
        raise InputError(f"{inp}: no such input")
    out = Path(out)
    parquet = out.suffix.lower() == ".parquet"
    fd = None if parquet else open_out(out, Path(inp) if Path(inp).is_file() else None)
    try:
        if fd is not None:
            claim_out(
                fd, out, bundle=router.bundle.digest, input_name=inp if inp.startswith(_SCHEMES) else input_label(inp)
            )
        done = frozenset() if fd is None else frozenset(repair_and_read_ids(fd, out))
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        base = str(Path(inp).resolve().parent) if not inp.startswith(_SCHEMES) else "/"
        # one CPU per actor, and one left for the read tasks (all CPUs held by actors would starve the reads)
        cpus = ray.cluster_resources().get("CPU", 2)  # type: ignore[no-untyped-call]
        n_actors = actors or max(1, int(cpus) - 1)
        ds = read_dataset(inp).map_batches(
            RouterActor,
            fn_constructor_kwargs={"bundle": bundle, "opts": opts, "base": base, "done": done, "log": log},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=1,
            batch_format="numpy",
        )
        return _write(ds, out, fd, parquet, done, on_progress)
    finally:
        if fd is not None:
            os.close(fd)


def _write(ds: Any, out: Path, fd: Any, parquet: bool, done: frozenset[Any], on_progress: Any) -> dict[str, Any]:
    counts = {"routed": 0, "skipped_done": 0, "failed": 0, "duplicates": 0, "out_of_coverage": 0}
    problems: list[str] = []
    seen: set[str] = set(done)
    rows_out: list[dict[str, Any]] = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
        lines = []
        for qid, decision, problem in zip(batch["id"], batch["decision"], batch["problem"]):
            if problem:
                problems.append(f"id {qid}: {problem}")
                counts["failed"] += 1
                continue
            if qid in seen:
                problems.append(f"id {qid}: duplicate id; give every record its own id")
                counts["duplicates"] += 1
                continue
            seen.add(qid)
            rec = {"id": qid, **json.loads(decision)}
            counts["out_of_coverage"] += bool(rec.get("coverage") and rec["coverage"]["out_of_coverage"])
            if parquet:
                rows_out.append(rec)
            else:
                lines.append(json.dumps(rec, allow_nan=False) + "\n")
        if lines:
            append_lines(fd, out, "".join(lines).encode("utf-8"), counts["routed"])
        counts["routed"] += len(lines) if not parquet else 0
        if on_progress:
            on_progress(len(batch["id"]))
    if parquet:
        _write_parquet(out, rows_out)
        counts["routed"] = len(rows_out)
    return {**counts, "problems": problems}


def _write_parquet(out: Path, rows: list[dict[str, Any]]) -> None:
    """id, model, lambda, the best candidate's utility, and the whole decision as JSON; atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "model": [r["model"] for r in rows],
            "lambda": [r["lambda"] for r in rows],
            "utility": [r["candidates"][0]["utility"] if r["candidates"] else None for r in rows],
            "decision": [json.dumps(r, allow_nan=False) for r in rows],
        }
    )
    if not out.parent.is_dir():
        raise InputError(f"{out}: the folder {out.parent} does not exist")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(out, buf.getvalue().to_pybytes())  # the one atomic writer (runtime.files)
