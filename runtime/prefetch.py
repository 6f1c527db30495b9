"""Decode the next batch while the current one is in the encoders.

Image decoding (Pillow) and the encoders (ONNX Runtime) both release the GIL, so preparing batch
i+1 in one background thread while batch i runs overlaps them: +12-15% routing throughput on 2
cores (`Router.route_many`, 256 queries in batches of 32). The server does the same per request
(`serve/batcher.py`); `route_many` and `route-batch` do it per batch with this helper.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
U = TypeVar("U")


def prefetched(items: Iterable[T], prepare: Callable[[T], U]) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) in order, `prepare` of the next item already running while the caller works on
    this one. `items` is consumed one ahead, in the caller's thread; only `prepare` runs in the background,
    and its exception surfaces when its item's turn comes. A single item runs inline (no thread)."""
    it = iter(items)
    first = next(it, _END)
    if first is _END:
        return
    second = next(it, _END)
    if second is _END:
        yield first, prepare(first)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lr-onnx-prepare") as pool:
        cur, fut = first, pool.submit(prepare, first)
        for nxt in chain([second], it):
            ahead = pool.submit(prepare, nxt)
            yield cur, fut.result()
            cur, fut = nxt, ahead
        yield cur, fut.result()


_END = object()
