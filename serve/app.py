"""The ASGI app of `lr-onnx serve` (Starlette): routes, limits, auth, errors, metrics.

    POST /v1/route             {question, images, lambda, models, exclude, max_cost, explain} -> route --json
    POST /v1/chat/completions  OpenAI Chat Completions; model lr-onnx/auto | lr-onnx/<preset> | an upstream name
    POST /v1/feedback          {id, score, cost?, model?}: an observed outcome for a logged decision ([logging])
    GET  /v1/models            routable names and presets
    GET  /healthz /readyz /metrics

Every refusal is OpenAI's error shape `{"error": {"message", "type", "code"}}` with one line.
/healthz, /readyz and /metrics answer without the gateway key (load-balancer probes, scrapers).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..runtime.errors import BundleError, InputError, LrOnnxError
from ..runtime.feedback import FeedbackConflict, FeedbackStore, FeedbackUnavailable, UnknownDecision, parse_feedback
from ..runtime.manage import _golden_image
from ..runtime.router import Router
from .batcher import MicroBatcher, QueueFull
from .config import ServeConfig
from .metrics import Metrics
from .schema import AUTO, PREFIX, HTTPError, RouteRequest, chat_request, parse_json, route_request
from .upstream import Throttled, Upstreams, read_capped

log = logging.getLogger("lr_onnx.serve")


def create_app(router: Router, config: ServeConfig, *, api_key: str | None = None) -> Starlette:
    """An app serving `router` (its pool already reduced to the models with an upstream, if any)."""
    metrics = Metrics()
    state = {"ready": False}
    batcher = MicroBatcher(
        router,
        metrics,
        max_batch=config.batching.max_batch,
        max_wait_ms=config.batching.max_wait_ms,
        threads=config.batching.threads,
        queue_size=config.limits.queue_size,
        decode_threads=config.batching.decode_threads,
        max_image_bytes=int(config.limits.max_image_mb * 2**20),
        max_request_bytes=int(config.limits.max_request_image_mb * 2**20),
    )
    upstreams = Upstreams(config, metrics)
    feedback = _start_logging(router, config, metrics)
    explore = config.routing.explore
    upstream_names = {u.upstream_model: name for name, u in config.models.items() if name in router.names}
    max_body = int(config.limits.max_body_mb * 1024 * 1024)
    # requests between arrival and decision (reading, decoding, queued, in a batch): bounded, so a flood is
    # answered 503 at once instead of piling up in front of the queue; the upstream phase is not counted.
    # One batch beyond the queue, whatever the number of inference threads: a second thread still finds
    # work in the queue, and an admitted request never has more than queue + one batch ahead of it.
    routing = {"now": 0, "max": config.limits.queue_size + config.batching.max_batch}

    throttled = Throttled(log)

    def endpoint(name: str, *, auth: bool = True):
        def wrap(fn):
            async def handler(request: Request) -> Response:
                t0 = time.perf_counter()
                try:
                    if auth and api_key is not None:
                        _check_key(request, api_key)
                    resp = await fn(request)
                except HTTPError as e:
                    resp = JSONResponse(e.body(), status_code=e.status, headers=e.headers)
                except QueueFull:
                    metrics.rejected.inc()
                    resp = JSONResponse(
                        HTTPError(
                            503, "the router's queue is full; retry shortly", type="overloaded", code="queue_full"
                        ).body(),
                        status_code=503,
                        headers={"retry-after": "1"},
                    )
                except ClientDisconnect:  # the client went away mid-body: nobody to answer, one throttled line
                    metrics.client_disconnects.labels(name).inc()
                    throttled.warning(
                        ("client_disconnect", name), "a client disconnected before its %s request body arrived", name
                    )
                    resp = Response(status_code=499)
                except BundleError as e:
                    resp = JSONResponse(
                        HTTPError(500, str(e), type="server_error", code="bundle").body(), status_code=500
                    )
                except InputError as e:
                    resp = JSONResponse(HTTPError(400, str(e), code="invalid_value").body(), status_code=400)
                except LrOnnxError as e:
                    resp = JSONResponse(HTTPError(500, str(e), type="server_error").body(), status_code=500)
                except Exception as e:  # a bug: still an answer in the OpenAI shape, counted, one log line
                    throttled.warning(
                        ("internal", name, type(e).__name__), "internal error in %s: %s", name, type(e).__name__
                    )
                    resp = JSONResponse(
                        HTTPError(
                            500, f"internal error ({type(e).__name__})", type="server_error", code="internal"
                        ).body(),
                        status_code=500,
                    )
                metrics.requests.labels(name, str(resp.status_code)).inc()
                metrics.latency.labels(name).observe(time.perf_counter() - t0)
                return resp

            return handler

        return wrap

    async def body_json(request: Request):
        """The whole body within `limits.body_timeout_s` and `max_body_mb`, read BEFORE the request takes a
        routing slot: a slow or stalled body costs its sender a connection, never the other clients a 503."""
        too_large = HTTPError(413, f"request body larger than {config.limits.max_body_mb:g} MB", code="body_too_large")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise too_large
        try:
            async with asyncio.timeout(config.limits.body_timeout_s):
                body = await read_capped(request.stream(), max_body, too_large)
        except TimeoutError:
            raise HTTPError(
                408,
                f"request body not received within {config.limits.body_timeout_s:g} s",
                code="body_timeout",
                headers={"connection": "close"},
            ) from None
        return parse_json(body, config.limits)

    def admit() -> None:
        if routing["now"] >= routing["max"]:
            raise QueueFull()
        routing["now"] += 1

    async def decide(req: RouteRequest):
        opts = router.options(
            models=req.models,
            exclude=req.exclude,
            lam=req.lam,
            max_cost=req.max_cost,
            explain=req.explain,
            explore=explore,
        )
        images = [await upstreams.fetch_image(i) if isinstance(i, str) else i for i in req.images]
        d = await batcher.route(images, req.question, opts)
        if d.model:
            metrics.chosen.labels(d.model).inc()
        return d

    @endpoint("route")
    async def route(request: Request) -> Response:
        req = route_request(await body_json(request), config.limits)
        admit()
        try:
            d = await decide(req)
        finally:
            routing["now"] -= 1
        return JSONResponse(d.to_dict(), headers=_id_header(d))

    @endpoint("chat_completions")
    async def chat(request: Request) -> Response:
        req = chat_request(await body_json(request), config.limits, list(router.presets), upstream_names)
        if not config.models:  # after the body is checked: a malformed request is the client's 4xx, not a 503
            raise HTTPError(
                503,
                "no upstream is configured (serve --config FILE with [models.NAME] tables); /v1/route still answers",
                type="server_error",
                code="no_upstream",
            )
        if req.route is None:  # a real upstream model name: no routing, no routing slot
            return await upstreams.forward(
                req.body, [(req.passthrough, None)], stream=req.stream, headers={"x-lr-onnx-routed": "false"}
            )
        admit()
        try:
            d = await decide(req.route)
        finally:
            routing["now"] -= 1
        ranked = [(c.name, c.utility) for c in d.candidates]
        return await upstreams.forward(
            req.body,
            ranked,
            stream=req.stream,
            headers={"x-lr-onnx-lambda": f"{d.lam:g}", "x-lr-onnx-routed": "true", **_id_header(d)},
        )

    @endpoint("feedback")
    async def feedback_endpoint(request: Request) -> Response:
        if feedback is None:
            raise HTTPError(
                404,
                "feedback is off: serve with a [logging] dir in --config to log decisions",
                code="feedback_disabled",
            )
        item = parse_feedback(await body_json(request), "feedback")
        try:
            status = (await asyncio.to_thread(feedback.add, [item]))[0]
        except UnknownDecision as e:
            raise HTTPError(404, str(e), code="unknown_decision") from None
        except FeedbackConflict as e:
            raise HTTPError(409, str(e), code="feedback_conflict") from None
        except FeedbackUnavailable as e:
            raise HTTPError(503, str(e), type="server_error", code="feedback_unavailable") from None
        metrics.feedback.labels(status).inc()
        return JSONResponse({"id": item["id"], "status": status})

    @endpoint("models")
    async def models(request: Request) -> Response:
        ids = [AUTO] + [PREFIX + p for p in router.presets] + sorted(upstream_names)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": i, "object": "model", "owned_by": "lr-onnx"} for i in ids],
                "pool": router.names,
                "presets": dict(router.presets),
            }
        )

    @endpoint("healthz", auth=False)
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @endpoint("readyz", auth=False)
    async def readyz(request: Request) -> Response:
        if not state["ready"]:
            raise HTTPError(
                503, "warming up: the bundle's sessions are not ready yet", type="server_error", code="not_ready"
            )
        return JSONResponse({"status": "ready", "models": router.names})

    @endpoint("metrics", auth=False)
    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        # readiness = every session warmed by one real inference (text, image and router graphs)
        await asyncio.get_running_loop().run_in_executor(
            batcher.pool, lambda: router.route([_golden_image()], "What does this picture show?")
        )
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            await upstreams.close()
            if router.log is not None:
                await asyncio.to_thread(router.log.close)

    routes = [
        Route("/v1/route", route, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/feedback", feedback_endpoint, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(
            HTTPError(
                exc.status_code,
                f"{request.method} {request.url.path}: {exc.detail}",
                code="not_found" if exc.status_code == 404 else "method_not_allowed",
            ).body(),
            status_code=exc.status_code,
        )

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={StarletteHTTPException: not_found})
    app.state.metrics, app.state.batcher, app.state.upstreams = metrics, batcher, upstreams
    return app


def _start_logging(router: Router, config: ServeConfig, metrics: Metrics):
    """With `[logging] dir`: every decision logged, its drops counted in /metrics, and the feedback store; else None."""
    if not config.logging.dir:
        return None
    log = router.start_log(
        config.logging.dir,
        content=config.logging.content,
        max_file_mb=config.logging.max_file_mb,
        keep_files=config.logging.keep_files,
    )
    metrics.watch_log(log)
    return FeedbackStore(log.folder, window_h=config.logging.feedback_window_h, log=log)


def _id_header(d) -> dict:
    return {"x-lr-onnx-request-id": d.id} if d.id else {}


def _check_key(request: Request, key: str) -> None:
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(token.encode("utf-8", "replace"), key.encode("utf-8")):
        raise HTTPError(
            401,
            "missing or wrong gateway key (Authorization: Bearer ...)",
            type="authentication_error",
            code="invalid_api_key",
        )
