"""Reading one webhook's fields from a request: size limit, content type, parsing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request

from schemas.records import FieldError
from schemas.webhook import InvalidWebhook

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: fields that are identifiers or numbers to dial, taken as text: sent as JSON numbers, their digits as written
ID_FIELDS = ("uniqueid", "attemptid", "cli", "to")


class BodyTooLarge(Exception):
    """A body over the limit; `head`: its first bytes, as many as `read_body` was asked to keep
    (the caller scrubs them, then cuts them to the limit)."""

    def __init__(self, head: bytes) -> None:
        super().__init__(f"body over the limit ({len(head)} bytes kept)")
        self.head = head


class UnsupportedMediaType(Exception):
    pass


class IncompleteBody(Exception):
    """The client went away, or stopped sending, before the body it declared had arrived."""


async def read_body(request: Request, limit: int, head: int = 0) -> bytes:
    """The whole body, or `BodyTooLarge` / `IncompleteBody`: a partial body is never returned as
    the body. Of a body over the limit (declared or sent), the first `max(limit, head)` bytes are
    read, and no more, to be kept with the refusal (a little past the limit: a token cut in two at
    the limit is still recognised, and scrubbed, before the head is cut to the limit)."""
    declared = request.headers.get("content-length")
    expected = int(declared) if declared is not None and declared.isdigit() else None
    keep = max(limit, head)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            chunks.append(chunk)
            if size > keep or (expected is not None and expected > limit and size >= keep):
                raise BodyTooLarge(b"".join(chunks)[:keep])
    except ClientDisconnect:
        if expected is not None and expected > limit:
            raise BodyTooLarge(b"".join(chunks)[:keep]) from None  # refused either way: keep what came
        raise IncompleteBody from None
    if size > limit or (expected is not None and expected > limit):
        raise BodyTooLarge(b"".join(chunks)[:keep])  # over the limit, within the head; or declared more than sent
    if expected is not None and size != expected:
        raise IncompleteBody
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_pairs(data: str, where: str) -> dict[str, Any]:
    """`a=1&b=2` -> dict; a field given twice is refused rather than guessed at."""
    try:
        pairs = parse_qsl(data, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidWebhook([FieldError(where, "not valid UTF-8 url-encoded data")]) from None
    fields: dict[str, Any] = {}
    dupes: list[FieldError] = []
    for key, value in pairs:
        if key in fields and fields[key] != value:
            dupes.append(FieldError(key, "given more than once with different values"))
        fields[key] = value
    if dupes:
        raise InvalidWebhook(dupes)
    return fields


def lenient_pairs(data: str) -> dict[str, list[str]]:
    """Every value of every field, bytes that are not UTF-8 replaced: what a query or form that
    `parse_pairs` refuses still says (its token, its app), never taken as the event's fields."""
    out: dict[str, list[str]] = {}
    for key, value in parse_qsl(data, keep_blank_values=True, errors="replace"):
        out.setdefault(key, []).append(value)
    return out


def parse_body(kind: str, body: bytes) -> dict[str, Any]:
    if kind == JSON:
        body = body.removeprefix(b"\xef\xbb\xbf")  # UTF-8 with a byte order mark: still UTF-8 JSON
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidWebhook([FieldError("body", "not valid JSON")]) from None
        if not isinstance(data, dict):
            raise InvalidWebhook([FieldError("body", "must be a JSON object with the event's fields")])
        as_written = _refuse_duplicate_keys(body)
        for name in ID_FIELDS:  # an id sent as a JSON number: its digits as written (1796000001.10 is not .1)
            if isinstance(data.get(name), int | float) and not isinstance(data[name], bool):
                data[name] = as_written[name]
        return data
    if kind == FORM:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhook([FieldError("body", "not valid UTF-8")]) from None
        return parse_pairs(text, "body")
    raise UnsupportedMediaType


def _refuse_duplicate_keys(body: bytes) -> dict[str, Any]:
    """orjson keeps the last of two equal keys; a key given twice is refused instead, at any depth.
    Returns the body's object with its numbers as written (text).

    Bodies are small (MAX_BODY_BYTES), so a second parse with the standard library, which shows
    every key, is cheap.
    """
    dupes: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and key not in dupes:
                dupes.append(key)
            seen.add(key)
        return dict(items)

    try:
        written: dict[str, Any] = json.loads(body, object_pairs_hook=pairs, parse_float=str, parse_int=str)
    except RecursionError:
        raise InvalidWebhook([FieldError("body", "nested too deeply")]) from None
    except ValueError:  # orjson accepted what the standard library does not: refuse, never guess
        raise InvalidWebhook([FieldError("body", "not valid JSON")]) from None
    if dupes:
        raise InvalidWebhook([FieldError(k, "given more than once in the JSON body") for k in dupes])
    return written


def merge(query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Fields may come in the query string of a POST as well; they must not contradict the body."""
    conflicts = [
        FieldError(k, "given in both the query string and the body with different values")
        for k in query.keys() & body.keys()
        if str(query[k]) != str(body[k])
    ]
    if conflicts:
        raise InvalidWebhook(conflicts)
    return {**query, **body}
