"""The forms in which a webhook token has been seen inside requests, and a check for any copy of it.

Shared by the in-process tests (TestClient) and the real-broker tests (httpx): each form is the
keyword arguments of one `request(method, url, ...)`, authenticated and invalid, so it is
dead-lettered.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

OLD_SECRET = "an-old-rotated-secret"


def pct(text: str, upper: bool = False) -> str:
    return "".join(f"%{ord(c):02X}" if upper else f"%{ord(c):02x}" for c in text)


def token_forms(url: str, token: str, other: str, bad: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`other` is a second configured token; `bad` an invalid event's fields."""
    form = "application/x-www-form-urlencoded"
    return {
        "percent-encoded name": {"method": "GET", "url": f"{url}?%74oken={token}&{urlencode(bad)}"},
        "percent-encoded name and value": {"method": "GET", "url": f"{url}?{pct('tok')}en={pct(token, True)}"
                                                                   f"&{urlencode(bad)}"},
        "percent-encoded value, upper hex": {"url": f"{url}?token={pct(token, True)}", "data": bad},
        "percent-encoded value, lower hex": {"url": f"{url}?token={pct(token)}", "data": bad},
        "token field in a JSON body": {"url": url, "json": {**bad, "token": token},
                                       "headers": {"X-Webhook-Token": token}},
        "token field in a form body": {"url": url, "data": {**bad, "token": token},
                                       "headers": {"X-Webhook-Token": token}},
        "header, and the value in another field": {"url": url, "data": {**bad, "note": f"see {token}"},
                                                   "headers": {"X-Webhook-Token": token}},
        "JSON unicode escapes": {
            "url": url, "content": ('{"event":"XX","app":"a","x":"' + "".join(f"\\u{ord(c):04x}" for c in other)
                                    + '"}').encode(),
            "headers": {"X-Webhook-Token": token, "content-type": "application/json"}},
        "percent-encoded inside a form body, mixed case": {
            "url": url, "content": f"event=XX&app=a&x={pct(other[:5], True)}{pct(other[5:])}".encode(),
            "headers": {"X-Webhook-Token": token, "content-type": form}},
        "undecodable body": {"url": url, "content": b"\xff\xfe event=XX&x=" + token.upper().encode(),
                             "headers": {"X-Webhook-Token": token, "content-type": form}},
        "unconfigured value in a token field": {"url": url, "json": {**bad, "token": OLD_SECRET},
                                                "headers": {"X-Webhook-Token": token}},
    }


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def forms_of(secret: str) -> set[str]:
    """Lower-cased: raw, percent-encoded, JSON-escaped."""
    return {secret.lower(), pct(secret), "".join(f"\\u{ord(c):04x}" for c in secret)}


def leaks(record: dict[str, Any], *secrets: str) -> list[str]:
    """Every form of a secret found in any string of the record (a base64 body decoded too)."""
    texts = _strings(record)
    if record.get("body_base64"):
        texts.append(base64.b64decode(record["body_base64"]).decode("latin-1"))
    return [f for secret in secrets for f in forms_of(secret) for t in texts if f in t.lower()]


def leaks_in_text(text: str, *secrets: str) -> list[str]:
    low = text.lower()
    return [f for secret in secrets for f in forms_of(secret) if f in low]
