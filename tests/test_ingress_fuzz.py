"""Arbitrary requests never get a 5xx and never take the ingress down."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOKEN

pytestmark = pytest.mark.kafka

ints = st.integers(-(2**63), 2**63 - 1)
FIELDS = ["app", "event", "uniqueid", "cli", "time", "attemptid", "to", "duration", "result", "token", "x"]
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["IN", "TA", "tc", "TE", "H", "answered", "BUSY", "2017-06-22 11:17:18", "1498110438000",
                     "2017-06-22T11:17:18+05:30", "-1", "nan", "1e309", "", " ", "\x00", "9" * 300]),
    ints, st.floats(), st.booleans(), st.none(),
    st.lists(ints, max_size=2), st.dictionaries(st.text(max_size=3), ints, max_size=2),
)
field_maps = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), values, max_size=10)
content_types = st.sampled_from([
    "application/json", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
    "text/plain", "multipart/form-data; boundary=x", "", "application/x-www-form-urlencoded; charset=utf-8",
]) | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
tokens = st.sampled_from([TOKEN, TOKEN, TOKEN, "wrong", "", None])


def _form(fields: dict[str, Any]) -> bytes:
    return urlencode({k: str(v) for k, v in fields.items()}).encode()


bodies = st.one_of(
    field_maps.map(lambda f: orjson.dumps(f, option=orjson.OPT_NON_STR_KEYS, default=str)),
    field_maps.map(_form),
    st.binary(max_size=300),
    st.binary(min_size=17000, max_size=17001),
)


@pytest.fixture(scope="module")
def client(ingress_module: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingress_module, timeout=10) as c:
        yield c


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "POST"]),
    query=field_maps,
    raw_query=st.text(st.sampled_from("%&=+;aFf09tokenevapIN#/?"), max_size=40),  # incl. bad %-escapes
    body=bodies,
    content_type=content_types,
    token=tokens,
    in_header=st.booleans(),
)
def test_no_input_gets_a_5xx(
    client: httpx.Client, method: str, query: dict[str, Any], raw_query: str, body: bytes,
    content_type: str, token: str | None, in_header: bool,
) -> None:
    params = {k: str(v) for k, v in query.items() if k != "token"}
    headers = {}
    if content_type:
        headers["content-type"] = content_type.encode("ascii", "replace").decode()
    if token is not None:
        if in_header:
            headers["x-webhook-token"] = token
        else:
            params["token"] = token
    url = "/webhooks/ivr?" + urlencode(params) + ("&" + raw_query if raw_query else "")
    r = client.request(method, url, content=body if method == "POST" else None, headers=headers)
    if r.status_code == 400:  # the HTTP server itself refused a malformed request line
        assert r.text == "Invalid HTTP request received."
        return
    assert r.status_code in {202, 401, 413, 415, 422}, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    if r.status_code != 202:
        assert r.json()["error"]


def test_still_serving_after_fuzzing(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    r = client.post("/webhooks/ivr", params={"token": TOKEN}, data={"app": "a", "event": "IN", "uniqueid": "u"})
    assert r.status_code == 202
