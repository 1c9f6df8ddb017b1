"""The ingress in process: Starlette's TestClient and a fake writer, no broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from starlette.testclient import TestClient

from config.settings import Settings
from ingress.app import create_app
from ingress.writer import NotDurable
from tests.token_forms import OLD_SECRET, leaks, token_forms

TOKEN = "unit-token-0123456789"
OTHER = "rotated-token-abcdef"
APP = "4e11fe2082b044b4a3b55718c79c29d5"
IN = {"app": APP, "event": "IN", "uniqueid": "1498110438.13", "cli": "9716700271", "time": "2017-06-22T11:17:18+05:30"}
H = {"app": APP, "event": "H", "uniqueid": "1498110438.13", "cli": "9716700271", "duration": "40"}
URL = "/webhooks/ivr"


class FakeWriter:
    """Keeps what would have gone to Kafka; `fail` makes every write not durable."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, dict[str, Any]]] = []
        self.fail = False
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def write(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.fail:
            raise NotDurable("fake broker away")
        self.records.append((topic, key, orjson.loads(value)))

    async def ready(self) -> bool:
        return not self.fail

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [v for t, _, v in self.records if t == topic]


SETTINGS = Settings(webhook_tokens=(TOKEN, OTHER), topic_prefix="u.")


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def client(writer: FakeWriter) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, writer=writer), raise_server_exceptions=True) as c:
        yield c


def test_accepted_event_is_written_keyed_and_202(client: TestClient, writer: FakeWriter) -> None:
    assert writer.started
    r = client.post(URL, params={"token": TOKEN}, data=IN)
    assert r.status_code == 202, r.text
    [(topic, key, value)] = writer.records
    assert topic == "u.ivr.events" and key == b"1498110438.13"
    assert value["origin"] == "webhook"
    assert value["id"] == r.json()["id"] and value["raw"] == IN and value["time"] == "2017-06-22T05:47:18.000Z"
    r = client.get(URL, params={**H}, headers={"X-Webhook-Token": OTHER})
    assert r.status_code == 202 and writer.records[-1][2]["duration"] == 40.0


@pytest.mark.parametrize("query", ["cli=111&cli=222", "cli=%FF"])
def test_a_query_refused_as_invalid_still_counts_its_token_and_is_kept(
        client: TestClient, writer: FakeWriter, query: str) -> None:
    """Its token was dropped with the rest of the query: 401 "missing token", and nothing kept."""
    url = f"{URL}?token={TOKEN}&app={APP}&event=IN&uniqueid=9.1&{query}"
    r = client.get(url)
    assert r.status_code == 422, r.text
    [dead] = writer.on("u.ivr.events.invalid")
    assert dead["app"] == APP and TOKEN not in orjson.dumps(dead).decode()
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == ({"cli"} if "&cli=" in query[3:] else {"query"}), r.json()
    assert client.get(url.replace(TOKEN, "nope-nope-nope")).status_code == 401
    assert client.get(f"{URL}?token={TOKEN}&token={OTHER}&{query}").status_code == 422  # both accepted
    assert client.get(f"{URL}?token={TOKEN}&token=nope&{query}").status_code == 401  # not every one
    assert writer.on("u.ivr.events") == []


def test_401_missing_or_wrong_token_writes_nothing(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(URL, data=IN)
    assert r.status_code == 401 and r.json()["detail"] == "missing token"
    r = client.post(URL, params={"token": "nope"}, data=IN)
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    r = client.post(URL, headers={"X-Webhook-Token": "nope", "content-type": "text/plain"}, content=b"x")
    assert r.status_code == 401
    assert writer.records == []


def test_413_body_over_the_limit_keeps_its_first_bytes(client: TestClient, writer: FakeWriter) -> None:
    """Refused, and kept as far as the limit: nothing sent with a valid token is lost."""
    r = client.post(URL, params={"token": TOKEN}, data={**IN, "pad": "x" * 20000})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large" and "16384" in r.json()["detail"]
    [dead] = writer.on("u.ivr.events.invalid")
    assert writer.on("u.ivr.events") == []
    assert len(dead["body"]) == 16384 and dead["body"].startswith("app=4e11fe") and dead["body"].endswith("x")
    assert dead["errors"] == r.json()["errors"] == [
        {"field": "body", "reason": "over the limit of 16384 bytes: only its first 16384 bytes are kept"}]
    assert r.headers["connection"] == "close"  # the rest of the body is not read
    assert TOKEN not in orjson.dumps(dead).decode()
    writer.fail = True  # not durable: 503, so it is sent again
    r = client.post(URL, params={"token": TOKEN}, data={**IN, "pad": "x" * 20000})
    assert r.status_code == 503


def test_413_a_body_declared_over_the_limit_is_read_no_further(writer: FakeWriter) -> None:
    """Content-Length over the limit: refused once the limit's worth has come, the rest unread."""
    body = b"app=" + APP.encode() + b"&pad=" + b"y" * 40000
    messages = [{"type": "http.request", "body": body[i:i + 1000], "more_body": i + 1000 < len(body)}
                for i in range(0, len(body), 1000)]
    status, received = asyncio.run(_call_with(create_app(SETTINGS, writer=writer), messages, len(body)))
    assert status == 413
    assert received <= 17  # chunks read: the limit's worth (16384 bytes), not the 40 KB declared
    [dead] = writer.on("u.ivr.events.invalid")
    assert len(dead["body"]) == 16384


def test_415_unsupported_content_type_is_kept(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(URL, params={"token": TOKEN}, content=b"<xml/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    [dead] = writer.on("u.ivr.events.invalid")
    assert writer.on("u.ivr.events") == []
    assert (dead["body"], dead["content_type"], dead["errors"][0]["field"]) == ("<xml/>", "application/xml",
                                                                                "content-type")
    r = client.post(URL, params={"token": TOKEN, **IN}, files={"f": ("a.txt", b"x")})  # multipart: kept too
    assert r.status_code == 415 and len(writer.on("u.ivr.events.invalid")) == 2
    assert writer.on("u.ivr.events.invalid")[1]["app"] == APP  # read from the query string


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({k: v for k, v in IN.items() if k != "app"}, "app", "required"),
    (dict(IN, event="XX"), "event", "unknown event"),
    (dict(IN, time="yesterday"), "time", "not a timestamp"),
    (dict(H, duration="-3"), "duration", "non-negative"),
])
def test_422_names_the_field_and_dead_letters(
    client: TestClient, writer: FakeWriter, fields: dict[str, str], field: str, reason: str
) -> None:
    r = client.post(URL, params={"token": TOKEN}, data=fields)
    assert r.status_code == 422, r.text
    assert any(e["field"] == field and reason in e["reason"] for e in r.json()["errors"]), r.json()
    [dead] = writer.on("u.ivr.events.invalid")
    assert writer.on("u.ivr.events") == []
    assert dead["errors"] == r.json()["errors"] and dead["method"] == "POST"


def test_503_when_not_durable(client: TestClient, writer: FakeWriter) -> None:
    writer.fail = True
    r = client.post(URL, params={"token": TOKEN}, data=IN)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert "ivr_ingress_kafka_writable 0.0" in client.get("/metrics").text


def test_the_writable_gauge_is_kept_current_without_anyone_asking_readyz(writer: FakeWriter) -> None:
    """Under Kubernetes an ingress that cannot write leaves its Service: only this gauge shows it."""
    import ingress.app as ingress_app

    writer.fail = True
    before = ingress_app.WRITABLE_CHECK_S
    ingress_app.WRITABLE_CHECK_S = 0.05
    try:
        with TestClient(create_app(SETTINGS, writer=writer)) as c:
            time.sleep(0.2)
            assert "ivr_ingress_kafka_writable 0.0" in c.get("/metrics").text
            writer.fail = False
            time.sleep(0.2)
            assert "ivr_ingress_kafka_writable 1.0" in c.get("/metrics").text
    finally:
        ingress_app.WRITABLE_CHECK_S = before


def test_unreadable_and_invalid_fields_are_one_error_type() -> None:
    import ingress.body as bodies
    from schemas.webhook import InvalidWebhook

    assert not hasattr(bodies, "BadFields")
    with pytest.raises(InvalidWebhook) as e:
        bodies.parse_body(bodies.JSON, b"[1]")
    assert e.value.errors[0].field == "body"


TOKEN_FORMS = token_forms(URL, TOKEN, OTHER, dict(IN, event="XX"))


@pytest.mark.parametrize("form", list(TOKEN_FORMS))
def test_no_token_in_dead_letters_whatever_the_form(client: TestClient, writer: FakeWriter, form: str) -> None:
    kw = dict(TOKEN_FORMS[form])
    method = kw.pop("method", "POST")
    r = client.request(method, kw.pop("url"), **kw)
    assert r.status_code == 422, r.text
    [dead] = writer.on("u.ivr.events.invalid")
    assert leaks(dead, TOKEN, OTHER, OLD_SECRET) == [], dead
    assert dead["errors"] and dead["method"] == method


PAD = "x" * 20000
REFUSED_FORMS: dict[str, tuple[dict[str, Any], int]] = {
    "413: a JSON body cut at the limit, an old secret in its token field": (
        {"content": f'{{"app":"{APP}","token":"{OLD_SECRET}","pad":"{PAD}"}}'.encode(),
         "headers": {"content-type": "application/json"}}, 413),
    "413: a configured token cut in two by the limit": (
        {"content": f"app={APP}&pad={PAD[:16384 - 47 - 12]}&note={TOKEN}{PAD}".encode(),
         "headers": {"content-type": "application/x-www-form-urlencoded"}}, 413),
    "413: an old secret in a token field cut by the limit": (
        {"content": f"app={APP}&pad={PAD[:16384 - 47 - 12]}&token={OLD_SECRET}{PAD}".encode(),
         "headers": {"content-type": "application/x-www-form-urlencoded"}}, 413),
    "415: multipart with a token field": (
        {"data": {"app": APP, "token": OLD_SECRET}, "files": {"f": ("a", b"x")}}, 415),
    "415: text with a token parameter": (
        {"content": f"token={OLD_SECRET}&app={APP}".encode(), "headers": {"content-type": "text/plain"}}, 415),
}


@pytest.mark.parametrize("form", list(REFUSED_FORMS))
def test_no_token_in_413_and_415_dead_letters(client: TestClient, writer: FakeWriter, form: str) -> None:
    """Bodies kept without being parsed (cut at the limit, of another content type): no token or
    secret, whole or in part, in what is kept."""
    kw, status = REFUSED_FORMS[form]
    r = client.post(URL, params={"token": TOKEN}, **kw)
    assert r.status_code == status, r.text
    [dead] = writer.on("u.ivr.events.invalid")
    assert leaks(dead, TOKEN, OTHER, OLD_SECRET) == [], dead["body"][-200:]
    assert TOKEN[:6] not in dead["body"] and OLD_SECRET[:6] not in dead["body"], dead["body"][-200:]
    assert len(dead["body"]) <= 16384


def test_no_token_in_raw_of_an_accepted_event(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(f"{URL}?%74oken={TOKEN}", data={**IN, "note": OTHER, "Token": OTHER, OTHER: "x"})
    assert r.status_code == 202, r.text
    [event] = writer.on("u.ivr.events")
    assert leaks(event, TOKEN, OTHER) == [], event
    assert event["raw"]["note"] == "***" and "Token" not in event["raw"]


def test_duration_too_large_is_422_and_dead_lettered(client: TestClient, writer: FakeWriter) -> None:
    r = client.get(URL, params={**H, "duration": "1e308", "token": TOKEN})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["duration"]
    assert writer.on("u.ivr.events") == [] and len(writer.on("u.ivr.events.invalid")) == 1


def test_ids_sent_as_json_numbers_keep_their_digits(client: TestClient, writer: FakeWriter) -> None:
    """Provider ids are "seconds.sequence": as a JSON number, 1796000001.10 read as a float is
    1796000001.1, another call's id (its webhooks sent as text would have split the call in two)."""
    body = (b'{"app":"%s","event":"TA","uniqueid":1796000001.10,"attemptid":1796000001.10,"cli":9716700271,'
            b'"to":9000000001,"time":"2017-06-22T11:17:18+05:30"}' % APP.encode())
    r = client.post(URL, params={"token": TOKEN}, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    [(_, key, value)] = writer.records
    assert key == b"1796000001.10" and value["uniqueid"] == value["attemptid"] == "1796000001.10"
    assert (value["cli"], value["to"]) == ("9716700271", "9000000001")
    text = dict(orjson.loads(body), uniqueid="1796000001.10", attemptid="1796000001.10")
    r = client.post(URL, params={"token": TOKEN}, json=text)
    assert r.status_code == 202 and writer.records[-1][2]["id"] == value["id"]  # one event, either way


def test_a_query_string_with_an_unencoded_offset_and_json_with_a_byte_order_mark_are_taken(
        client: TestClient, writer: FakeWriter) -> None:
    """`time=...T11:17:18+05:30` unencoded reads as `...T11:17:18 05:30`; UTF-8 JSON may start
    with a byte order mark. Both are the provider's event as sent."""
    query = f"token={TOKEN}&app={APP}&event=IN&uniqueid=u9&cli=9716700271&time=2017-06-22T11:17:18+05:30"
    r = client.get(f"{URL}?{query}")
    assert r.status_code == 202, r.text
    assert writer.records[-1][2]["time"] == "2017-06-22T05:47:18.000Z"
    body = b"\xef\xbb\xbf" + orjson.dumps({"app": APP, "event": "H", "uniqueid": "u9"})
    r = client.post(URL, params={"token": TOKEN}, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text


def test_duplicate_json_keys_are_refused_naming_the_field(client: TestClient, writer: FakeWriter) -> None:
    body = b'{"app":"%s","event":"IN","uniqueid":"u1","event":"H","uniqueid":"u1"}' % APP.encode()
    r = client.post(URL, params={"token": TOKEN}, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["event", "uniqueid"]
    assert writer.on("u.ivr.events") == [] and writer.on("u.ivr.events.invalid")[0]["body"] == body.decode()
    deep = b'{"app":"a","x":' + b"[" * 1020 + b"]" * 1020 + b"}"
    r = client.post(URL, params={"token": TOKEN}, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_headers_over_the_limit_are_431(client: TestClient, writer: FakeWriter) -> None:
    r = client.get(URL, params={**IN, "token": TOKEN}, headers={"X-Pad": "a" * 20000})
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    assert client.get(URL, params={**IN, "token": TOKEN}, headers={"X-Pad": "a" * 8000}).status_code == 202
    assert len(writer.records) == 1


async def _call(app: Any, body_parts: list[bytes], declared: int) -> tuple[int | None, list[dict[str, Any]]]:
    """Drive the ASGI app directly: the body arrives in `body_parts`, then the client disconnects."""
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in body_parts]
    messages.append({"type": "http.disconnect"})
    status, sent, _ = await _drive(app, messages, declared)
    return status, sent


async def _call_with(app: Any, messages: list[dict[str, Any]], declared: int) -> tuple[int | None, int]:
    """Drive the ASGI app with these messages: its status, and how many messages it read."""
    status, _, received = await _drive(app, messages, declared)
    return status, received


async def _drive(app: Any, messages: list[dict[str, Any]],
                 declared: int) -> tuple[int | None, list[dict[str, Any]], int]:
    sent: list[dict[str, Any]] = []
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": URL, "raw_path": URL.encode(), "query_string": f"token={TOKEN}".encode(), "root_path": "",
             "headers": [(b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(declared).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "state": {}}
    await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, sent, received


def test_a_body_cut_short_writes_nothing(writer: FakeWriter) -> None:
    import asyncio

    from ingress.metrics import INCOMPLETE

    app = create_app(SETTINGS, writer=writer)
    full = urlencode(IN).encode()
    before = INCOMPLETE.labels("disconnected")._value.get()
    status, _ = asyncio.run(_call(app, [full[:30], full[30:50]], len(full)))
    assert status == 400 and writer.records == []
    assert INCOMPLETE.labels("disconnected")._value.get() == before + 1
    # the same body whole is accepted: only the cut is refused
    with TestClient(app) as c:
        assert c.post(URL, params={"token": TOKEN}, content=full,
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 202


def test_other_methods_and_paths_get_json_errors(client: TestClient, writer: FakeWriter) -> None:
    r = client.put(URL, params={"token": TOKEN}, data=IN)
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    r = client.head(URL, params={"token": TOKEN, **H})  # a GET's twin: it wrote the event (and answered 202)
    assert r.status_code == 405 and writer.records == []
    r = client.get("/nowhere")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
