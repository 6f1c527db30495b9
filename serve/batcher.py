"""Micro-batching: concurrent requests are encoded together, off the event loop, in a two-stage pipeline.

Stage 1, on arrival: a request's images are decoded and turned into tensors (`Router.prepare`) in a
small pool of `decode_threads`, while the previous batch is still in the encoders (Pillow and ONNX
Runtime both release the GIL, so the stages really overlap). A request whose images declare more than
HEAVY_BYTES of decoded pixels (read from their headers) is decoded in a lane of its own, so an
expensive image never holds up the cheap requests behind it; every image is bounded by the per-image
and per-request decoded-byte budgets. A request whose own input is bad fails here, alone. Stage 2: prepared requests wait in a bounded queue (full: `QueueFull`, answered 503 with
Retry-After, so the backlog and the memory it holds stay bounded under any load). A dispatcher takes
the first waiting request, waits up to `max_wait_ms` for more (at most `max_batch`; only while others are
being decoded or a batch is running: an idle server answers a lone request at once), and runs the batch
in a pool of `threads` inference threads: the encoders once for all of them, then ONE router call in
which each row keeps its own options (`Router.decide`).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..runtime.preprocess import DEFAULT_MAX_IMAGE_BYTES, declared_bytes
from ..runtime.router import Decision, Prepared, RouteOptions, Router
from .metrics import Metrics

HEAVY_BYTES = 16 << 20  # a request whose images decode to more than this goes to the heavy decode lane


class QueueFull(Exception):
    """The backlog is at its limit: answer 503 with Retry-After."""


@dataclass
class _Job:
    prepared: Prepared
    opts: RouteOptions
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait_ms: float,
        threads: int,
        queue_size: int,
        decode_threads: int = 1,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_request_bytes: int | None = None,
    ):
        self.router, self.metrics = router, metrics
        self.max_image_bytes, self.max_request_bytes = max_image_bytes, max_request_bytes
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lr-onnx-infer")
        self.decoders = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="lr-onnx-decode")
        self.heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lr-onnx-decode-heavy")
        self.slots = asyncio.Semaphore(threads)
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._decoding = 0  # requests whose images are being decoded: they will be queued shortly

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self) -> None:
        """Finish every admitted request, then stop."""
        while not self.queue.empty() or self._running:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self.pool.shutdown(wait=True)
        self.decoders.shutdown(wait=True)
        self.heavy.shutdown(wait=True)

    async def route(self, images: list, question: str, opts: RouteOptions) -> Decision:
        if self.queue.full():  # refuse before decoding: no work spent on a request that cannot be queued
            raise QueueFull()
        loop = asyncio.get_running_loop()
        if images:
            self._decoding += 1
            try:
                heavy = sum(declared_bytes(i) for i in images if isinstance(i, (bytes, bytearray))) > HEAVY_BYTES
                prepared = await loop.run_in_executor(
                    self.heavy if heavy else self.decoders, self._prepare, images, question
                )
            finally:
                self._decoding -= 1
        else:
            prepared = self.router.prepare([], question)  # nothing to decode: no thread hop
        job = _Job(prepared, opts, loop.create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull() from None
        self.metrics.queue.set(self.queue.qsize())
        return await job.future

    async def _dispatch(self) -> None:
        while True:
            await self.slots.acquire()
            first = await self.queue.get()
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not (self._decoding or self._running):
                    break  # nothing is on its way (an idle server): waiting would only add latency
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self.metrics.queue.set(self.queue.qsize())
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job]) -> None:
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.pool, self._infer, batch)
            for job, res in zip(batch, results):
                if job.future.done():
                    continue  # the client went away
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)
        finally:
            self.slots.release()

    def _prepare(self, images: list, question: str) -> Prepared:
        """Runs in a decode thread (stage 1)."""
        t0 = time.perf_counter()
        prepared = self.router.prepare(
            images, question, max_image_bytes=self.max_image_bytes, max_request_bytes=self.max_request_bytes
        )
        self.metrics.stage.labels("decode").observe(time.perf_counter() - t0)
        return prepared

    def _infer(self, batch: list[_Job]) -> list:
        """Runs in an inference thread (stage 2): the encoders once for the batch, then the decisions, in which
        a request whose own options fail (a per-query budget no model fits, say) gets the error alone."""
        self.metrics.batch.observe(len(batch))
        timings: dict = {}
        try:
            t0 = time.perf_counter()
            q = self.router.encode([j.prepared for j in batch])
            timings["encoders"] = time.perf_counter() - t0
            out = self.router.decide_each(q, [j.opts for j in batch], timings, [j.prepared.meta for j in batch])
        except Exception as e:  # never leave a waiting request without an answer
            out = [e] * len(batch)
        for stage, secs in timings.items():
            self.metrics.stage.labels(stage).observe(secs)
        return out
