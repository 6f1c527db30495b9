"""`lr-onnx serve --config FILE`: one TOML file, validated once at start-up with one-line errors.

    [limits]                       # every limit answers 4xx with one line when exceeded
    max_body_mb = 20
    max_images = 8
    max_question_chars = 20000
    max_json_depth = 32
    queue_size = 64                # requests waiting for the router; beyond it: 503 + Retry-After
    allow_image_urls = false       # http(s) image_url parts are refused unless true
    image_url_max_mb = 10
    image_url_timeout_s = 5
    body_timeout_s = 10            # a request body must arrive whole within this, before it may queue
    allow_private_image_hosts = false  # image URLs resolving to loopback/private/link-local are refused unless true
    max_image_mb = 64              # decoded bytes per image (width x height x channels x bytes per sample)
    max_request_image_mb = 192     # decoded bytes of all the images of one request

    [batching]
    max_batch = 32                 # requests encoded together
    max_wait_ms = 5                # how long the first request of a batch waits for company
    threads = 2                    # inference threads: one batch's Python work overlaps another's encoders
    decode_threads = 1             # image-decoding threads: requests are decoded as they arrive

    [upstream]
    timeout_s = 60                 # a whole non-streamed call; a stream's first chunk
    stream_idle_s = 30             # the longest silence inside a stream before it is ended with an error event
    retries = 2                    # on a connection error, 5xx, 401/403 or timeout: the next candidate by utility

    [server]
    grace_s = 30                   # at SIGTERM: how long admitted requests (streams included) may still run

    [logging]                      # the decision log and POST /v1/feedback: off unless dir is set
    dir = "/var/log/lr-onnx"       # one JSON line per decision (no user content unless content = true)
    content = false                # also store each question (never the image bytes)
    max_file_mb = 64               # a new log file past this size
    keep_files = 0                 # 0: keep every decision file; N: only the newest N
    feedback_window_h = 168        # feedback accepted for decisions at most this old

    [routing]
    explore = "off"                # off | thompson[:S] | epsilon:P: occasionally route to another candidate

    [models."GPT4o"]               # one table per model of the bundle's pool that may be called
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY" # the NAME of an environment variable; the key itself never goes here
    upstream_model = "gpt-4o"

Models of the pool without a `[models.NAME]` table leave the pool at start-up (logged once).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields

from ..runtime.bounds import MAX_QUESTION_CHARS
from ..runtime.errors import InputError, OptionError
from ..runtime.policy import parse_explore
from ..runtime.validate import integer, number, read_regular_file, text


@dataclass(frozen=True)
class Limits:
    max_body_mb: float = 20.0
    max_images: int = 8
    max_question_chars: int = MAX_QUESTION_CHARS
    max_json_depth: int = 32
    queue_size: int = 64
    allow_image_urls: bool = False
    image_url_max_mb: float = 10.0
    image_url_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    allow_private_image_hosts: bool = False
    max_image_mb: float = 64.0  # the server's default is below the CLI's (runtime.preprocess.DEFAULT_MAX_IMAGE_BYTES)
    max_request_image_mb: float = 192.0


@dataclass(frozen=True)
class Batching:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    threads: int = 2
    decode_threads: int = 1


@dataclass(frozen=True)
class UpstreamPolicy:
    timeout_s: float = 60.0
    stream_idle_s: float = 30.0
    retries: int = 2


@dataclass(frozen=True)
class ServerPolicy:
    grace_s: float = 30.0


@dataclass(frozen=True)
class Logging:
    """The decision log (runtime.decisionlog) and feedback: off unless `dir` is set."""

    dir: str = ""
    content: bool = False  # also store each question (user content); never the image bytes
    max_file_mb: float = 64.0  # a new log file past this size
    keep_files: int = 0  # 0: keep every decision file; N: only the newest N (older ones are deleted)
    feedback_window_h: float = 168.0  # feedback accepted for decisions at most this old


@dataclass(frozen=True)
class Routing:
    explore: str = "off"  # off | thompson[:S] | epsilon:P (runtime.policy.parse_explore)


@dataclass(frozen=True)
class Upstream:
    """Where one pool model is answered: an OpenAI-compatible base URL, the model name there, the key's env var."""

    name: str
    base_url: str
    upstream_model: str
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class ServeConfig:
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    upstream: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    server: ServerPolicy = field(default_factory=ServerPolicy)
    models: dict[str, Upstream] = field(default_factory=dict)
    logging: Logging = field(default_factory=Logging)
    routing: Routing = field(default_factory=Routing)


_BOUNDS = {  # field -> (kind, lo, hi)
    "max_body_mb": (float, 0.001, 1024),
    "max_images": (int, 0, 64),
    "max_question_chars": (int, 1, 1_000_000),
    "max_json_depth": (int, 2, 64),
    "queue_size": (int, 1, 100_000),
    "allow_image_urls": (bool, 0, 1),
    "image_url_max_mb": (float, 0.001, 1024),
    "image_url_timeout_s": (float, 0.01, 600),
    "max_batch": (int, 1, 1024),
    "max_wait_ms": (float, 0, 10_000),
    "threads": (int, 1, 256),
    "decode_threads": (int, 1, 256),
    "timeout_s": (float, 0.01, 3600),
    "retries": (int, 0, 16),
    "body_timeout_s": (float, 0.01, 3600),
    "allow_private_image_hosts": (bool, 0, 1),
    "max_image_mb": (float, 0.01, 4096),
    "max_request_image_mb": (float, 0.01, 65536),
    "stream_idle_s": (float, 0.01, 3600),
    "grace_s": (float, 0, 86400),
    "dir": (str, 0, 4096),
    "content": (bool, 0, 1),
    "max_file_mb": (float, 0.001, 1 << 20),
    "feedback_window_h": (float, 0.001, 24 * 3650),
    "explore": (str, 0, 64),
    "keep_files": (int, 0, 1_000_000),
}
MAX_CONFIG_BYTES = 1 << 20


def _section(raw: dict, name: str, cls, where: str):
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise InputError(f"{where}: [{name}] must be a table")
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} in [{name}]; known: {', '.join(sorted(known))}"
        )
    values = {}
    for key, v in table.items():
        kind, lo, hi = _BOUNDS[key]
        label = f"{where}: {name}.{key}"
        if kind is bool:
            if not isinstance(v, bool):
                raise InputError(f"{label} must be true or false")
            values[key] = v
        elif kind is str:
            values[key] = text(v, label, empty_ok=True)
            if len(values[key]) > hi:
                raise InputError(f"{label} is longer than {hi} characters")
        elif kind is int:
            values[key] = integer(v, label, lo=lo, hi=hi)
        else:
            values[key] = number(v, label, lo=lo, hi=hi)
    return cls(**values)


def load_config(path: str | os.PathLike | None) -> ServeConfig:
    """The validated configuration (None: every default, no upstreams: `/v1/route` only)."""
    if path is None:
        return ServeConfig()
    where = str(path)
    try:
        raw = tomllib.loads(read_regular_file(path, MAX_CONFIG_BYTES, "config file").decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise InputError(f"{where}: TOML nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{where}: malformed TOML ({e})") from None
    unknown = set(raw) - {"limits", "batching", "upstream", "server", "models", "logging", "routing"}
    if unknown:
        raise InputError(
            f"{where}: unknown section(s) {', '.join(sorted(unknown))}; known: limits, batching, "
            f"upstream, server, models, logging, routing"
        )
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise InputError(f"{where}: [models] must hold one table per model")
    ups = {}
    for name, spec in models.items():
        label = f"{where}: models.{name}"
        if not isinstance(spec, dict):
            raise InputError(f"{label} must be a table with base_url, upstream_model and api_key_env")
        unknown = set(spec) - {"base_url", "upstream_model", "api_key_env"}
        if unknown:
            hint = (
                "; put the key in an environment variable and name it with api_key_env"
                if any("key" in k for k in unknown)
                else ""
            )
            raise InputError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}{hint}")
        base = text(spec.get("base_url"), f"{label}.base_url").rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InputError(f"{label}.base_url must start with http:// or https://")
        env = spec.get("api_key_env")
        if env is not None:
            env = text(env, f"{label}.api_key_env")
            if not env.replace("_", "").isalnum():
                raise InputError(f"{label}.api_key_env must be the NAME of an environment variable")
        ups[name] = Upstream(name, base, text(spec.get("upstream_model", name), f"{label}.upstream_model"), env)
    routing = _section(raw, "routing", Routing, where)
    try:
        parse_explore(routing.explore)
    except OptionError as e:
        raise InputError(f"{where}: routing.{e}") from None
    return ServeConfig(
        _section(raw, "limits", Limits, where),
        _section(raw, "batching", Batching, where),
        _section(raw, "upstream", UpstreamPolicy, where),
        _section(raw, "server", ServerPolicy, where),
        ups,
        _section(raw, "logging", Logging, where),
        routing,
    )
