"""`lr-onnx serve`: load the bundle and the config, reduce the pool to the models with an upstream, run uvicorn.

SIGTERM / SIGINT: uvicorn stops accepting, every admitted request is answered (streams included, up to
`[server] grace_s`; a stream still running then is ended with an error event), then the process exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket

from ..runtime.bundle import Bundle
from ..runtime.errors import InputError
from ..runtime.router import Router
from .config import ServeConfig, load_config

log = logging.getLogger("lr_onnx.serve")


def served_router(router: Router, config: ServeConfig) -> tuple[Router, list[str]]:
    """The router restricted to the models that have an upstream (all of them when no [models] is configured),
    and the names that left. A config naming a model outside the pool is refused."""
    unknown = sorted(set(config.models) - set(router.names))
    if unknown:
        raise InputError(
            f"config names model(s) {', '.join(unknown)} that are not in the bundle's pool ({', '.join(router.names)})"
        )
    if not config.models:
        return router, []
    gone = [n for n in router.names if n not in config.models]
    m = router.bundle.manifest
    bundle = Bundle(router.bundle.path, m.with_pool(p for p in m.pool if p.name in config.models), router.bundle.verify)
    return Router(bundle, provider=router.provider, threads=router.threads, spinning=router.spinning), gone


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    *,
    bundle: str | None,
    host: str,
    port: int,
    config_path: str | None,
    api_key_env: str | None,
    provider: str = "auto",
    echo=None,
    strict: bool = False,
) -> None:
    import click
    import uvicorn

    from .app import create_app

    echo = echo or click.echo
    config = load_config(config_path)
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise InputError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    unset = [f"{n} ({u.api_key_env})" for n, u in config.models.items() if u.api_key_env and not u.api_key()]
    if unset and strict:
        raise InputError(f"upstream key variable(s) unset or empty: {', '.join(unset)} (--strict)")
    for entry in unset:
        echo(
            f"warning: the upstream key variable of {entry} is unset or empty: calls go out without "
            f"credentials (--strict refuses to start)",
            err=True,
        )
    router, gone = served_router(Router.load(bundle, provider=provider), config)
    router.bound_providers()  # every graph loaded and checked against the manifest now: a broken bundle is one line
    if gone:
        echo(f"warning: no upstream configured for {', '.join(gone)}: left out of the served pool", err=True)
    if not is_loopback(host) and key is None:
        echo(f"warning: listening on {host}, beyond this machine, without a gateway key (--api-key-env)", err=True)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    app = create_app(router, config, api_key=key)
    _Server = _server_class(app.state.upstreams, config.server.grace_s)
    shown = f"[{host}]" if ":" in host else host
    echo(
        f"lr-onnx serve: http://{shown}:{port}/v1 ({_count(len(router.names), 'model')}"
        f"{', ' + _count(len(config.models), 'upstream') if config.models else ', route only'}"
        f"{', gateway key required' if key else ''}); Ctrl-C stops"
    )
    _log_to_stderr()
    _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=config.server.grace_s,
        )
    ).run()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _log_to_stderr() -> None:
    """The gateway's own warnings (failed upstreams) on stderr, beside uvicorn's; set up by `serve` only, never
    by `create_app`, so an app that embeds the gateway keeps its own logging."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("lr-onnx serve: %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _server_class(upstreams, grace_s: float):
    import time

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (exit status -15 / 130); a finished
        shutdown is a success here, so the signal is handled and not re-raised: exit 0. At the signal, streams
        still relaying are told to end with an error event shortly before the grace period runs out (uvicorn
        would cancel them mid-chunk)."""

        def handle_exit(self, sig, frame):
            if upstreams.stop_by is None:
                upstreams.stop_by = time.monotonic() + max(0.0, grace_s - min(1.0, grace_s / 2))
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    return Server
