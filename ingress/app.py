"""The Starlette ingress: `uvicorn ingress.app:app`, or `python -m ingress` (ingress.server) with the HTTP limits.

POST/GET /webhooks/ivr -> validate -> ivr.events (or ivr.events.invalid) with acks=all -> 202.
Status codes and bodies follow section 2 of the contract.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from config import settings as settings_module
from config import topics
from config.logs import install_filters, redact_handlers, unredact_handlers
from config.redact import Scrubber, drop_token_params, redact_token_fields
from config.settings import Settings
from ingress import body as bodies
from ingress.auth import TokenCheck
from ingress.metrics import DEAD_LETTERED, IN_FLIGHT, INCOMPLETE, REGISTRY, REQUESTS, UNAVAILABLE, WRITABLE, event_label
from ingress.stall import patient_timeout
from ingress.writer import KafkaWriter, NotDurable, Writer
from schemas.codec import dumps
from schemas.records import FieldError, InvalidEvent
from schemas.timefmt import format_ts
from schemas.webhook import InvalidWebhook, normalise

log = logging.getLogger("ingress")
TOKEN_HEADER = "x-webhook-token"
RETRY_AFTER_S = "5"
# A body must arrive within this many seconds of the request's headers: a client trickling bytes
# cannot hold a connection (and a handler) for longer. Provider bodies are a few hundred bytes.
BODY_TIMEOUT_S = 10.0
WRITABLE_CHECK_S = 5.0  # how often `ivr_ingress_kafka_writable` is checked
# Request headers larger than this are refused with 431. The project launcher (`python -m ingress`)
# makes the HTTP parser itself enforce it; under another server the app checks it on arrival.
MAX_HEADER_BYTES = 16384


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers=headers, media_type="application/json")


def _errors(errors: list[FieldError]) -> list[dict[str, str]]:
    return [{"field": e.field, "reason": e.reason} for e in errors]


# A value sent in a field named token that is not a configured token is scrubbed from the
# dead letter too (it may be an old or mistyped secret), when long enough to be one.
MIN_SECRET_CHARS = 8


def _presented_secrets(request: Request, query_string: str, body: bytes) -> set[str]:
    """Values sent as a token in this request (header, or a `token` field anywhere), read leniently."""
    found = {request.headers.get(TOKEN_HEADER, "")}
    text = body.decode("utf-8", errors="replace")
    for source in (query_string, text):
        for key, values in bodies.lenient_pairs(source).items():
            if key.strip().lower() == "token":
                found.update(values)
    try:
        data = orjson.loads(body) if body.lstrip().startswith(b"{") else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        found.update(v for k, v in data.items() if k.strip().lower() == "token" and isinstance(v, str))
    return {v for v in found if len(v) >= MIN_SECRET_CHARS}


class Ingress:
    """The handlers, holding the settings, the token check and the writer."""

    def __init__(self, settings: Settings, writer: Writer) -> None:
        self.settings = settings
        self.tokens = TokenCheck(settings.webhook_tokens)
        self.scrubber = Scrubber(settings.webhook_tokens)  # no copy of a token is stored, in any encoding
        # read past the size limit of a refused body, so that a token the limit cuts in two is seen
        # whole (and scrubbed) before the body is cut: its longest encoding (a character percent-encoded
        # as four UTF-8 bytes)
        self._token_margin = 12 * max(map(len, settings.webhook_tokens), default=0)
        self.writer = writer
        self.events_topic = settings.topic(topics.EVENTS)
        self.invalid_topic = settings.topic(topics.EVENTS_INVALID)
        self.tz = settings.tz
        self._warned_no_tokens = 0.0

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        install_filters(self.settings.webhook_tokens, self.settings.log_caller_numbers)
        # the root's handlers (`python -m ingress` logs every logger through one): any other
        # logger's line (aiokafka's, config.kafka's) is cleaned too. (Under plain uvicorn the root
        # has none, and uvicorn's access formatter reads its arguments by position: left alone.)
        redact_handlers(self.settings.webhook_tokens, self.settings.log_caller_numbers)
        if not self.tokens.configured:
            log.error("WEBHOOK_TOKENS is empty: every webhook will be refused with 401 until it is set")
        await self.writer.start()
        watch = asyncio.create_task(self._watch_writable())
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await self.writer.stop()
            unredact_handlers()

    async def _watch_writable(self) -> None:
        """`ivr_ingress_kafka_writable`, kept current whoever asks /readyz: an ingress that cannot
        write answers 503 and, under Kubernetes, leaves its Service, so no request may come to
        show it (IvrIngressCannotWrite reads this)."""
        while True:
            try:
                WRITABLE.set(1 if await self.writer.ready() else 0)
            except Exception:  # (ready() says False for the broker's errors; anything else: not known)
                WRITABLE.set(0)
            await asyncio.sleep(WRITABLE_CHECK_S)

    async def webhook(self, request: Request) -> Response:
        IN_FLIGHT.inc()
        label = "unknown"
        try:
            response, label = await self._webhook(request)
        finally:
            IN_FLIGHT.dec()
        REQUESTS.labels(label, str(response.status_code)).inc()
        return response

    async def _webhook(self, request: Request) -> tuple[Response, str]:
        received_at = time.time()
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        query_errors: list[FieldError] = []
        try:
            query = bodies.parse_pairs(query_string, "query")
        except InvalidWebhook as e:  # refused below, once authenticated: its token still counts
            query, query_errors = {}, e.errors
        # the header wins; in the query, every `token` given must be accepted (one, or the same twice)
        header = request.headers.get(TOKEN_HEADER)
        given = [header] if header else (bodies.lenient_pairs(query_string).get("token", []) if query_errors
                                         else [query["token"]] if isinstance(query.get("token"), str) else [])
        if not given or not all(self.tokens.accepts(t) for t in given):
            if not self.tokens.configured and received_at - self._warned_no_tokens > 60:
                self._warned_no_tokens = received_at
                log.error("refused a webhook: WEBHOOK_TOKENS is not set, so no token is accepted")
            reason = "missing token" if not any(given) else "invalid token"
            return _json(401, {"error": "unauthorized", "detail": reason}), "unknown"
        query.pop("token", None)

        body = b""
        kind = ""
        fields: dict[str, Any] = {}
        try:
            if request.method == "POST":
                async with patient_timeout(BODY_TIMEOUT_S):  # a stall of the process does not count
                    body = await bodies.read_body(request, self.settings.max_body_bytes,
                                                  self.settings.max_body_bytes + self._token_margin)
                kind = bodies.media_type(request)
                if kind not in (bodies.FORM, bodies.JSON):
                    raise bodies.UnsupportedMediaType
            if query_errors:  # a field given twice with different values, or not UTF-8
                raise InvalidWebhook(query_errors)
            fields = bodies.merge(query, bodies.parse_body(kind, body)) if request.method == "POST" else query
            fields = self.scrubber.fields(fields)
            event = normalise(fields, received_at, self.tz)
        except bodies.IncompleteBody:
            # The provider delivers the whole event again: a partial one is never written.
            INCOMPLETE.labels("disconnected").inc()
            log.info("request body incomplete (client went away); nothing written")
            return _json(400, {"error": "incomplete_body", "detail": "the body did not fully arrive"}), "unknown"
        except TimeoutError:
            INCOMPLETE.labels("timeout").inc()
            log.info("request body not received within %.0fs; nothing written", BODY_TIMEOUT_S)
            detail = f"the body did not arrive within {BODY_TIMEOUT_S:.0f}s"
            return _json(408, {"error": "request_timeout", "detail": detail}, {"Connection": "close"}), "unknown"
        except bodies.BodyTooLarge as e:  # kept too, as far as the limit
            limit = self.settings.max_body_bytes
            reason = f"over the limit of {limit} bytes: only its first {limit} bytes are kept"
            # closed: a client that sent `Expect: 100-continue` would otherwise upload the rest,
            # read and discarded by the server to keep the connection
            return await self._dead_letter(request, received_at, query_string, e.head, [FieldError("body", reason)],
                                           413, "body_too_large", cut=limit, headers={"Connection": "close"}), "unknown"
        except bodies.UnsupportedMediaType:
            reason = f"use {bodies.FORM} or {bodies.JSON} (got {kind or 'none'!r})"
            refused = [FieldError("content-type", reason)]
            return await self._dead_letter(request, received_at, query_string, body, refused,
                                           415, "unsupported_media_type"), "unknown"
        except InvalidWebhook as e:
            label = event_label(fields.get("event") or query.get("event")
                                or next(iter(bodies.lenient_pairs(query_string).get("event", [])), None))
            return await self._dead_letter(request, received_at, query_string, body, e.errors), label

        try:
            await self.writer.write(self.events_topic, event.uniqueid.encode(), dumps(event))
        except NotDurable as e:
            UNAVAILABLE.inc()
            log.warning("webhook not made durable: %s", e)
            return _unavailable(), event.event
        return _json(202, {"status": "accepted", "id": event.id}), event.event

    async def _dead_letter(
        self, request: Request, received_at: float, query_string: str, body: bytes, errors: list[FieldError],
        status: int = 422, error: str = "invalid_event", cut: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Keep an authenticated request refused as invalid on `ivr.events.invalid`, as received
        (tokens scrubbed; the body cut to `cut` bytes after that), and answer `status` once it is
        durable (503 if it cannot be made so)."""
        scrub = Scrubber((*self.settings.webhook_tokens, *_presented_secrets(request, query_string, body)))
        query_string = scrub.text(drop_token_params(query_string))
        # a body that may not parse (cut short, multipart) hides its token fields from
        # `_presented_secrets`: every `token` field's value is masked, read leniently
        body = redact_token_fields(scrub.bytes(body))[:cut]
        text = body.decode("utf-8", errors="replace")
        errors = [FieldError(scrub.text(e.field), scrub.text(e.reason)) for e in errors]
        record = InvalidEvent(
            app=_guess_app(query_string, text),
            received_at=format_ts(received_at),
            method=request.method,
            content_type=scrub.text(request.headers.get("content-type", "")),
            query=query_string,
            body=text,
            body_base64=None if text.encode("utf-8") == body else base64.b64encode(body).decode(),
            errors=errors,
        )
        try:
            await self.writer.write(self.invalid_topic, None, dumps(record))
        except NotDurable as e:
            UNAVAILABLE.inc()
            log.warning("invalid webhook could not be dead-lettered: %s", e)
            return _unavailable()
        DEAD_LETTERED.inc()
        detail = "; ".join(f"{e.field}: {e.reason}" for e in errors)
        return _json(status, {"error": error, "detail": detail, "errors": _errors(errors)}, headers)

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        ready = await self.writer.ready()
        WRITABLE.set(1 if ready else 0)
        if ready:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "detail": "cannot reach Kafka"}, {"Retry-After": RETRY_AFTER_S})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _unavailable() -> Response:
    return _json(
        503,
        {"error": "unavailable", "detail": "the event could not be made durable; retry later"},
        {"Retry-After": RETRY_AFTER_S},
    )


def _guess_app(query_string: str, body: str) -> str:
    """The `app` of a refused request, for the dead-letter record's key field; empty if unreadable."""
    for source in (body, query_string):
        try:  # leniently: a field given twice or a byte that is not UTF-8 is why many were refused
            data = orjson.loads(source) if source.lstrip().startswith("{") else {
                k: v[0] for k, v in bodies.lenient_pairs(source).items()}
        except orjson.JSONDecodeError:
            continue
        value = data.get("app") if isinstance(data, dict) else None
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return ""


class HeaderLimit:
    """431 for request headers over MAX_HEADER_BYTES, whatever server runs the app.

    Under the project launcher the HTTP parser already refuses them before they are buffered;
    this catches the rest (e.g. plain `uvicorn` with httptools, which sets no header limit).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.limit:
            detail = f"request headers over {self.limit} bytes"
            response = _json(431, {"error": "headers_too_large", "detail": detail}, {"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, writer: Writer | None = None) -> Starlette:
    """The ASGI app; `writer` defaults to the real Kafka writer (tests pass a fake)."""
    settings = settings or settings_module.load_or_exit()  # `uvicorn ingress.app:app`: one line, exit 2
    install_filters(settings.webhook_tokens, settings.log_caller_numbers)
    ingress = Ingress(settings, writer or KafkaWriter(settings))
    webhooks = Route("/webhooks/ivr", ingress.webhook, methods=["GET", "POST"])
    assert webhooks.methods is not None
    webhooks.methods.discard("HEAD")  # Starlette adds it to a GET route: a HEAD would write an event
    return Starlette(
        routes=[
            webhooks,
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
            Route("/metrics", ingress.metrics, methods=["GET"]),
        ],
        lifespan=ingress.lifespan,
        middleware=[Middleware(HeaderLimit)],
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404 unknown path, 405 other methods) in JSON, like every answer."""
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json(exc.status_code, {"error": error, "detail": exc.detail}, dict(exc.headers or {}))


app = create_app()
