"""A call's state: every distinct provider event seen for it, plus its close/alert bookkeeping.

State is a set of facts keyed by what they say (`IN`, `H`, `TA|<attemptid>`, ...), so the
order events arrive in cannot matter: everything derived is computed from the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    from_log: bool = False  # the fields above came from the provider's call log, not a webhook
    agent_name: str | None = None  # from the call log (TA, TE)
    group: str | None = None

    def to_json(self) -> list[Any]:
        return [self.t, self.provider_time, self.received, self.cli, self.to, self.result, self.duration,
                self.from_log, self.agent_name, self.group]

    @classmethod
    def from_json(cls, data: list[Any]) -> Fact:
        return cls(*data)  # states written before the call-log fields existed have 7 items: defaults


def merge_fact(seen: Fact, new: Fact, closed: bool) -> tuple[Fact, bool]:
    """Two reports of one event (same key): the fact to keep, and whether `new` is a repeated
    webhook delivery (what `duplicates` counts).

    The result does not depend on which came first: a webhook's fields win over the call log's
    (the log only adds what was missing); of two webhook deliveries the earliest received is kept
    (while the call is open: once closed, a repeat must not revise it); the agent's name and group
    come from the call log whenever it has them, from its latest read when they changed there (an
    agent renamed): the one received last of two reads, or, on a webhook's fact (which keeps the
    webhook's receipt), the read that came last (the reconciler writes its reads in order)."""
    webhook_wins = seen.from_log and not new.from_log
    earlier_delivery = not seen.from_log and not new.from_log and not closed and new.received < seen.received
    core = new if webhook_wins or earlier_delivery else seen
    renamed = new.from_log and (not seen.from_log or new.received > seen.received)
    name = new.agent_name if new.agent_name is not None and (renamed or seen.agent_name is None) else seen.agent_name
    group = new.group if new.group is not None and (renamed or seen.group is None) else seen.group
    merged = replace(core, agent_name=name, group=group)
    return merged, not seen.from_log and not new.from_log


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
    # the state's JSON size when the lifecycle measured it (once a call is large enough, once per
    # load), plus what attempts' facts added since (not the IN, the H or bookkeeping); not stored
    size: int | None = field(default=None, compare=False, repr=False)
    # a closed call that late events changed, its revision left for `lifecycle.settle` (at the end
    # of the batch), and the latest one's receipt; never stored (settled before the state is saved)
    revise: bool = field(default=False, compare=False, repr=False)
    revised_by: float | None = field(default=None, compare=False, repr=False)

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
