"""Read and decode the next batch while the current one is in the encoders.

Image decoding (Pillow) and the encoders (ONNX Runtime) both release the GIL, so preparing batch
i+1 in a background thread while batch i runs overlaps them: +12-15% routing throughput on 2
cores (`Router.route_many`, 256 queries in batches of 32). The server does the same per request
(`serve/batcher.py`); `route_many` and `route-batch` do it per batch with this helper.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
U = TypeVar("U")
_END = object()
JOIN_S = 60.0  # at most one item's read and preparation


def prefetched(items: Iterable[T], prepare: Callable[[T], U]) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) in order, exactly one item ahead: while the caller works on one, a background
    thread takes the next from `items` and prepares it; an exception from `items` or `prepare` surfaces when
    its turn comes. `items` must not block for long (a list, a regular file): it is read in that thread, and
    a caller that stops early (an error, Ctrl-C) waits for the thread's current step to end, so that no
    thread is left inside a file read when the interpreter shuts down. A stream that may block (a pipe,
    standard input) is read without this helper. A sequence of fewer than two runs inline."""
    if isinstance(items, Sequence) and len(items) < 2:
        for x in items:
            yield x, prepare(x)
        return
    it = iter(items)
    asks: queue.SimpleQueue[Any] = queue.SimpleQueue()
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def work() -> None:
        while asks.get():
            try:
                x = next(it, _END)
                answers.put((x, None if x is _END else prepare(x), None))  # type: ignore[arg-type]
            except BaseException as e:  # handed to the caller, raised there
                answers.put((None, None, e))
                return

    worker = threading.Thread(target=work, name="lr-onnx-prepare", daemon=True)
    worker.start()
    asks.put(True)
    try:
        while True:
            x, prepared, err = answers.get()
            if err is not None:
                raise err
            if x is _END:
                return
            asks.put(True)  # the next one, while the caller works on this one
            yield x, prepared
    finally:
        asks.put(False)
        worker.join(timeout=JOIN_S)
