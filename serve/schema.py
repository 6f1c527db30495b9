"""The HTTP boundary: request bodies in, one validated shape out; errors in OpenAI's shape.

`/v1/route` answers with `Decision.to_dict()`, the very JSON `lr-onnx route --json` prints, so the CLI
and the server share one response schema. Every refusal here is an `HTTPError` with one line.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from ..runtime.errors import InputError
from ..runtime.validate import loads_json, text
from .config import Limits

AUTO = "lr-onnx/auto"
PREFIX = "lr-onnx/"


class HTTPError(Exception):
    """An answer other than 200: status, one-line message, OpenAI error type and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


@dataclass
class RouteRequest:
    """One routing question: the images (bytes, or http(s) URLs to fetch when allowed), the options."""

    question: str
    images: list = field(default_factory=list)
    lam: object = None  # these four as sent: Router.options validates them
    models: object = None
    exclude: object = None
    max_cost: object = None
    explain: bool = False


def parse_json(body: bytes, limits: Limits):
    try:
        return loads_json(body, "request body", max_depth=limits.max_json_depth, strict=True)
    except InputError as e:
        raise HTTPError(400, str(e), code="invalid_json") from None


def _bad(message: str, code: str = "invalid_value") -> HTTPError:
    return HTTPError(400, message, code=code)


def decode_image(value, limits: Limits, where: str):
    """A `data:` URL or bare base64 -> bytes; an http(s) URL -> the URL itself (fetched later, if allowed)."""
    if not isinstance(value, str) or not value:
        raise _bad(f"{where} must be a data: URL or base64 string")
    if value.startswith(("http://", "https://")):
        if not limits.allow_image_urls:
            raise _bad(
                f"{where}: http(s) image URLs are not fetched by this server (send the image as a data: URL, "
                f"or set limits.allow_image_urls in the config)",
                "image_url_not_allowed",
            )
        if any(ord(c) < 0x21 or c == "\x7f" for c in value) or len(value) > 8192:
            raise _bad(f"{where}: not a valid URL (control characters, spaces or over 8192 characters)")
        return value
    payload = value
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep or ";base64" not in head:
            raise _bad(f"{where}: only base64 data: URLs are accepted (data:image/png;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: not valid base64") from None
    if not data:
        raise _bad(f"{where}: empty image")
    return data


def _question(value, limits: Limits) -> str:
    try:
        q = text(value, "question")
    except InputError as e:
        raise _bad(str(e)) from None
    if len(q) > limits.max_question_chars:
        raise HTTPError(
            413,
            f"question of {len(q):,} characters exceeds the limit of {limits.max_question_chars:,}",
            code="question_too_long",
        )
    return q


def _images(values, limits: Limits) -> list:
    if len(values) > limits.max_images:
        raise HTTPError(
            413, f"{len(values)} images exceed the limit of {limits.max_images} per request", code="too_many_images"
        )
    return [decode_image(v, limits, f"images[{i}]") for i, v in enumerate(values)]


def route_request(doc, limits: Limits) -> RouteRequest:
    """The body of `POST /v1/route`."""
    if not isinstance(doc, dict):
        raise _bad("the body must be a JSON object", "invalid_body")
    unknown = set(doc) - {"question", "images", "lambda", "models", "exclude", "max_cost", "explain"}
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(sorted(unknown))}", "unknown_field")
    images = doc.get("images") or []
    if not isinstance(images, list):
        raise _bad("images must be a list of data: URLs or base64 strings")
    explain = doc.get("explain", False)
    if not isinstance(explain, bool):
        raise _bad("explain must be true or false")
    # lambda, models, exclude and max_cost are checked by Router.options, the one place for routing options
    return RouteRequest(
        _question(doc.get("question"), limits),
        _images(images, limits),
        doc.get("lambda"),
        doc.get("models"),
        doc.get("exclude"),
        doc.get("max_cost"),
        explain,
    )


@dataclass
class ChatRequest:
    """An OpenAI Chat Completions request: routed (`lr-onnx/auto`, `lr-onnx/<preset>`) or passed through."""

    body: dict
    stream: bool
    route: RouteRequest | None  # None: a real upstream model name, passed through unrouted
    passthrough: str | None = None


def chat_request(doc, limits: Limits, presets: list[str], upstream_names: dict[str, str]) -> ChatRequest:
    """`upstream_names`: upstream model name -> pool model, for requests that name a real model."""
    if not isinstance(doc, dict):
        raise _bad("the body must be a JSON object", "invalid_body")
    model = doc.get("model")
    if not isinstance(model, str):
        raise _bad("model is required: lr-onnx/auto, lr-onnx/<preset> or an upstream model name")
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages must be a non-empty list of message objects")
    if model in upstream_names:
        return ChatRequest(doc, stream, None, upstream_names[model])
    if model == AUTO:
        lam = None
    elif model.startswith(PREFIX) and model[len(PREFIX) :] in presets:
        lam = model[len(PREFIX) :]
    else:
        known = ", ".join([AUTO] + [PREFIX + p for p in presets] + sorted(upstream_names))
        raise HTTPError(400, f"unknown model {model!r}; use one of {known}", code="model_not_found")
    user = [m for m in messages if m.get("role") == "user"]
    if not user:
        raise _bad("no user message to route on")
    content = user[-1].get("content")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                images.append(url)
            else:
                raise _bad(f"content part {i} of the last user message must be a text or image_url part")
    else:
        raise _bad("the last user message needs content (a string or a list of parts)")
    if not "".join(texts).strip():  # an image alone: the router reads the question, so say where it goes
        raise _bad("the last user message has no text: lr-onnx routes on the question, so add a text part")
    route = RouteRequest(_question("\n".join(texts), limits), _images(images, limits), lam)
    return ChatRequest(doc, stream, route)
