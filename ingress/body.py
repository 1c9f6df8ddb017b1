"""Reading one webhook's fields from a request: size limit, content type, parsing."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request

from schemas.records import FieldError
from schemas.webhook import InvalidWebhook

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class BodyTooLarge(Exception):
    pass


class UnsupportedMediaType(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    except ClientDisconnect:
        pass
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


def parse_body(kind: str, body: bytes) -> dict[str, Any]:
    if kind == JSON:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidWebhook([FieldError("body", "not valid JSON")]) from None
        if not isinstance(data, dict):
            raise InvalidWebhook([FieldError("body", "must be a JSON object with the event's fields")])
        return data
    if kind == FORM:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhook([FieldError("body", "not valid UTF-8")]) from None
        return parse_pairs(text, "body")
    raise UnsupportedMediaType


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
