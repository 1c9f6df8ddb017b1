"""Build provider event streams for a call, as the ingress would normalise them (no broker)."""

from __future__ import annotations

from typing import Any

from schemas.timefmt import format_ts

APP = "4e11fe2082b044b4a3b55718c79c29d5"
T0 = 1_700_000_000.0


def ev(kind: str, uid: str = "c1", t: float | None = None, *, attempt: str | None = None, to: str | None = None,
       result: str | None = None, duration: float | None = None, cli: str = "9800000001",
       received: float | None = None) -> dict[str, Any]:
    recv = received if received is not None else (t if t is not None else T0)
    return {
        "v": 1, "id": f"{uid}-{kind}-{attempt}", "app": APP, "event": kind, "uniqueid": uid, "cli": cli,
        "attemptid": attempt, "to": to, "result": result, "duration": duration,
        "time": format_ts(t if t is not None else recv), "time_source": "provider" if t is not None else "received",
        "received_at": format_ts(recv), "raw": {},
    }


def attempt(uid: str, n: int, agent: str, start: float, result: str, ring: float, talk: float = 0.0,
            with_tc: bool = True) -> list[dict[str, Any]]:
    aid = f"{uid}.{n}"
    out = [ev("TA", uid, start, attempt=aid, to=agent)]
    if result == "answered" and with_tc:
        out.append(ev("TC", uid, start + ring, attempt=aid, to=agent))
    if result != "caller_hangup":
        end = start + ring + talk
        out.append(ev("TE", uid, None, attempt=aid, to=agent, result=result, duration=ring + talk, received=end))
    return out
