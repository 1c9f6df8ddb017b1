"""Ingress against a real broker: what is accepted lands in ivr.events, what is refused says why."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from deploy.local_kafka import KafkaBroker
from tests.conftest import OTHER_TOKEN, TOKEN, start_ingress
from tests.helpers import read_all, read_topic

pytestmark = pytest.mark.kafka

APP = "4e11fe2082b044b4a3b55718c79c29d5"

EVENTS = {
    "IN": {"app": APP, "event": "IN", "uniqueid": "1498110438.13", "cli": "9716700271",
           "time": "2017-06-22T11:17:18+05:30"},
    "TA": {"app": APP, "event": "TA", "uniqueid": "1498110438.13", "cli": "9716700271",
           "attemptid": "1498110438.13.1", "to": "9716700001", "time": "2017-06-22 11:17:20"},
    "TC": {"app": APP, "event": "TC", "uniqueid": "1498110438.13", "cli": "9716700271",
           "attemptid": "1498110438.13.1", "to": "9716700001", "time": "1498110445"},
    "TE": {"app": APP, "event": "TE", "uniqueid": "1498110438.13", "cli": "9716700271",
           "attemptid": "1498110438.13.1", "to": "9716700001", "duration": "30", "result": "ANSWERED"},
    "H": {"app": APP, "event": "H", "uniqueid": "1498110438.13", "cli": "9716700271", "duration": "40"},
}


def post(base: str, how: str, fields: dict[str, str], token: str | None = TOKEN, **kw: object) -> httpx.Response:
    url = f"{base}/webhooks/ivr"
    params = {"token": token} if token else {}
    if how == "get":
        return httpx.get(url, params={**fields, **params}, **kw)  # type: ignore[arg-type]
    if how == "form":
        return httpx.post(url, params=params, data=fields, **kw)  # type: ignore[arg-type]
    return httpx.post(url, params=params, json=fields, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["get", "form", "json"])
def test_every_event_type_accepted_and_normalised(ingress: str, kafka: KafkaBroker, prefix: str, how: str) -> None:
    ids = {}
    for name, fields in EVENTS.items():
        r = post(ingress, how, fields)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["id"]
    records = read_topic(kafka.bootstrap, f"{prefix}ivr.events", len(EVENTS))
    assert len(records) == len(EVENTS)
    by_type = {v["event"]: (k, v) for k, v in records}
    assert set(by_type) == set(EVENTS)
    for name, (key, value) in by_type.items():
        assert key == b"1498110438.13"
        assert value["v"] == 1 and value["app"] == APP and value["id"] == ids[name]
        assert value["raw"] == EVENTS[name]  # the original fields, unchanged, token removed
        assert "token" not in value["raw"]
    assert by_type["IN"][1]["time"] == "2017-06-22T05:47:18.000Z"  # offset honoured
    assert by_type["TA"][1]["time"] == "2017-06-22T05:47:20.000Z"  # naive read in Asia/Kolkata
    assert by_type["TC"][1]["time"] == "2017-06-22T05:47:25.000Z"  # epoch seconds
    te = by_type["TE"][1]
    assert te["result"] == "answered" and te["duration"] == 30.0
    assert te["time_source"] == "received" and te["time"] == te["received_at"]
    assert by_type["IN"][1]["time_source"] == "provider"
    assert by_type["H"][1]["attemptid"] is None


def test_header_token_rotation_and_repeated_delivery(ingress: str, kafka: KafkaBroker, prefix: str) -> None:
    url = f"{ingress}/webhooks/ivr"
    a = httpx.post(url, data=EVENTS["IN"], headers={"X-Webhook-Token": OTHER_TOKEN})
    b = httpx.post(url, data=EVENTS["IN"], headers={"X-Webhook-Token": TOKEN})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]  # same delivery, same id
    ms = dict(EVENTS["IN"], time="1498110438000")
    assert httpx.post(url, json=ms, headers={"X-Webhook-Token": TOKEN}).status_code == 202
    records = read_topic(kafka.bootstrap, f"{prefix}ivr.events", 3)
    assert [v["time"] for _, v in records][-1] == "2017-06-22T05:47:18.000Z"  # epoch milliseconds


def test_refusals_and_dead_letters(ingress: str, kafka: KafkaBroker, prefix: str) -> None:
    url = f"{ingress}/webhooks/ivr"
    # 401: missing, wrong token; nothing written anywhere
    r = httpx.post(url, data=EVENTS["IN"])
    assert r.status_code == 401 and r.json()["detail"] == "missing token"
    r = httpx.post(url, params={"token": "nope"}, data=EVENTS["IN"])
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    r = httpx.post(url, params={"token": "nope"}, content=b"garbage", headers={"content-type": "text/plain"})
    assert r.status_code == 401
    # 413: over the body limit (16 KiB by default); kept (its first 16 KiB), like every refusal below
    r = httpx.post(url, params={"token": TOKEN}, data={**EVENTS["IN"], "pad": "x" * 20000})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # 415: unsupported content type
    r = httpx.post(url, params={"token": TOKEN}, content=b"<xml/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    # 422: each names the field and the reason; each is dead-lettered as received
    bad = [
        ({k: v for k, v in EVENTS["TA"].items() if k != "attemptid"}, "attemptid", "required for TA"),
        (dict(EVENTS["TE"], result="maybe"), "result", "is not one of"),
        ({k: v for k, v in EVENTS["TE"].items() if k != "result"}, "result", "required for TE"),
        (dict(EVENTS["IN"], event="XX"), "event", "unknown event"),
        (dict(EVENTS["IN"], time="yesterday"), "time", "not a timestamp"),
        (dict(EVENTS["H"], duration="-3"), "duration", "non-negative"),
        ({"event": "IN", "uniqueid": "1"}, "app", "required"),
    ]
    for fields, field, reason in bad:
        r = httpx.post(url, params={"token": TOKEN}, data=fields)
        assert r.status_code == 422, (fields, r.text)
        body = r.json()
        assert body["error"] == "invalid_event"
        assert any(e["field"] == field and reason in e["reason"] for e in body["errors"]), body
    r = httpx.post(url, params={"token": TOKEN}, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    r = httpx.post(url, params={"token": TOKEN}, json=[1, 2])
    assert r.status_code == 422
    dead = read_topic(kafka.bootstrap, f"{prefix}ivr.events.invalid", len(bad) + 4)
    assert len(dead) == len(bad) + 4
    assert TOKEN not in orjson.dumps([v for _, v in dead]).decode()
    bodies = {v["body"]: v for _, v in dead}  # unkeyed: spread over partitions, no order to rely on
    first = bodies[str(httpx.QueryParams({k: v for k, v in EVENTS["TA"].items() if k != "attemptid"}))]
    assert first["method"] == "POST" and first["query"] == "" and first["app"] == APP
    assert first["errors"] == [{"field": "attemptid", "reason": "required for TA"}]
    assert bodies["{not json"]["content_type"] == "application/json"
    assert bodies["<xml/>"]["errors"][0]["field"] == "content-type"
    [too_large] = [v for v in bodies.values() if len(v["body"]) == 16384]
    assert too_large["app"] == APP and too_large["errors"][0]["field"] == "body"
    # nothing from the refused requests reached ivr.events
    assert read_all(kafka.bootstrap, f"{prefix}ivr.events", settle=1.0) == []


def test_withheld_cli_is_valid(ingress: str, kafka: KafkaBroker, prefix: str) -> None:
    r = post(ingress, "form", dict(EVENTS["IN"], cli=""))
    assert r.status_code == 202
    no_cli = {k: v for k, v in EVENTS["IN"].items() if k != "cli"}
    assert post(ingress, "json", no_cli).status_code == 202
    records = read_topic(kafka.bootstrap, f"{prefix}ivr.events", 2)
    assert [v["cli"] for _, v in records] == ["", ""]


def test_health_readiness_metrics_and_no_token_in_logs(ingress: str, tmp_path: Path) -> None:
    assert httpx.get(f"{ingress}/healthz").status_code == 200
    assert httpx.get(f"{ingress}/readyz").json() == {"status": "ready"}
    post(ingress, "get", EVENTS["IN"])
    post(ingress, "form", dict(EVENTS["IN"], event="nope"))
    text = httpx.get(f"{ingress}/metrics").text
    assert 'ivr_ingress_requests_total{event="IN",status="202"} 1.0' in text
    assert "ivr_ingress_dead_lettered_total 1.0" in text
    assert 'ivr_ingress_produce_seconds_count{topic=' in text
    assert "ivr_ingress_in_flight_requests" in text
    log = (tmp_path / "ingress.log").read_text()
    assert "GET /webhooks/ivr" in log  # the access log is on ...
    assert TOKEN not in log  # ... and the token is redacted


def test_without_tokens_every_webhook_is_refused(stack_env: dict[str, str], tmp_path: Path) -> None:
    service, base = start_ingress({**stack_env, "WEBHOOK_TOKENS": ""}, tmp_path / "ingress.log")
    try:
        r = post(base, "form", EVENTS["IN"])
        assert r.status_code == 401
    finally:
        service.stop()
    assert "WEBHOOK_TOKENS" in (tmp_path / "ingress.log").read_text()
