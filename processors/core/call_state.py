"""A call's state: every distinct provider event seen for it, plus its close/alert bookkeeping.

State is a set of facts keyed by what they say (`IN`, `H`, `TA|<attemptid>`, ...), so the
order events arrive in cannot matter: everything derived is computed from the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AlertState = Literal["none", "pending", "sent"]


@dataclass(slots=True)
class Fact:
    """What one provider event says, reduced to what the records need."""

    t: float  # event time (epoch s): provider time, else receive time
    provider_time: bool
    received: float  # ingress receive time (epoch s)
    cli: str
    to: str | None = None
    result: str | None = None
    duration: float | None = None

    def to_json(self) -> list[Any]:
        return [self.t, self.provider_time, self.received, self.cli, self.to, self.result, self.duration]

    @classmethod
    def from_json(cls, data: list[Any]) -> Fact:
        return cls(*data)


def fact_key(event: str, attemptid: str | None) -> str:
    return event if attemptid is None else f"{event}|{attemptid}"


@dataclass(slots=True)
class CallState:
    uniqueid: str
    app: str
    facts: dict[str, Fact] = field(default_factory=dict)
    duplicates: int = 0
    last_activity: float = 0.0  # wall clock when the latest new fact was applied
    hangup_seen: float | None = None  # wall clock when H was first applied
    closed_at: float | None = None  # wall clock of the first close
    revision: int = 0
    fingerprint: str | None = None  # content of the last emitted revision
    alert: AlertState = "none"  # sent: an alert-worthy missed fact went out (never twice)
    alert_due: float | None = None  # pending: when the missed-call decision is due
    counted: bool = False  # a missed fact went out (perhaps a short abandon, without alert)
    alerted_cli: str | None = None  # the number the alert went out with (its caller key)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def attempt_ids(self) -> set[str]:
        return {k.split("|", 1)[1] for k in self.facts if "|" in k}

    def to_json(self) -> dict[str, Any]:
        return {
            "u": self.uniqueid, "a": self.app,
            "f": {k: f.to_json() for k, f in self.facts.items()},
            "d": self.duplicates, "la": self.last_activity, "hs": self.hangup_seen, "ca": self.closed_at,
            "r": self.revision, "fp": self.fingerprint, "al": self.alert, "ad": self.alert_due,
            "ct": self.counted, "ac": self.alerted_cli,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CallState:
        return cls(
            uniqueid=d["u"], app=d["a"], facts={k: Fact.from_json(v) for k, v in d["f"].items()},
            duplicates=d["d"], last_activity=d["la"], hangup_seen=d["hs"], closed_at=d["ca"],
            revision=d["r"], fingerprint=d["fp"], alert=d["al"], alert_due=d["ad"],
            # absent from states written before revisions could raise alerts; cli unknown then
            counted=d.get("ct", d["al"] == "sent"), alerted_cli=d.get("ac"),
        )
