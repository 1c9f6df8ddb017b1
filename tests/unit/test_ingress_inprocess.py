"""The ingress in process: Starlette's TestClient and a fake writer, no broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from config.settings import Settings
from ingress.app import create_app
from ingress.writer import NotDurable

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


def test_401_missing_or_wrong_token_writes_nothing(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(URL, data=IN)
    assert r.status_code == 401 and r.json()["detail"] == "missing token"
    r = client.post(URL, params={"token": "nope"}, data=IN)
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    r = client.post(URL, headers={"X-Webhook-Token": "nope", "content-type": "text/plain"}, content=b"x")
    assert r.status_code == 401
    assert writer.records == []


def test_413_body_over_the_limit(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(URL, params={"token": TOKEN}, data={**IN, "pad": "x" * 20000})
    assert r.status_code == 413 and "16384" in r.json()["detail"]
    assert writer.records == []


def test_415_unsupported_content_type(client: TestClient, writer: FakeWriter) -> None:
    r = client.post(URL, params={"token": TOKEN}, content=b"<xml/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert writer.records == []


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


def test_unreadable_and_invalid_fields_are_one_error_type() -> None:
    import ingress.body as bodies
    from schemas.webhook import InvalidWebhook

    assert not hasattr(bodies, "BadFields")
    with pytest.raises(InvalidWebhook) as e:
        bodies.parse_body(bodies.JSON, b"[1]")
    assert e.value.errors[0].field == "body"
