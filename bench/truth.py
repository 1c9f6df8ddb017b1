"""The simulator's ground truth against the completed-call records: what `ivr check` prints and
the benchmarks count. Pure: the caller reads the records.

A call is right when its latest revision says what the generator decided: the outcome, the missed
reason, the agent who answered, how it closed, and each attempt's result in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: the record's fields compared with the truth's fields of the same name
FIELDS = ("outcome", "missed_reason", "answered_by", "close_reason")


@dataclass(frozen=True)
class Difference:
    uniqueid: str
    field: str  # one of FIELDS, "attempts", or "record" (no record at all)
    expected: Any
    got: Any


@dataclass(frozen=True)
class Checked:
    calls: int  # in the truth
    right: int
    missing: list[str]  # call ids without a record
    differences: list[Difference]  # every differing field of the calls with a record

    @property
    def wrong(self) -> int:
        return len({d.uniqueid for d in self.differences})


def latest(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each call's latest revision (records in any order; anything without an id or revision is skipped)."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in records:
        uid, revision = r.get("uniqueid"), r.get("revision")
        if not isinstance(uid, str) or not isinstance(revision, int):
            continue
        seen = out.get(uid)
        if seen is None or revision > seen["revision"]:
            out[uid] = r
    return out


def _results(attempts: Any) -> list[Any]:
    return [a.get("result") if isinstance(a, Mapping) else a for a in attempts or []]


def check(truth: Iterable[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]]) -> Checked:
    """`truth`: the simulator's `--truth` file, decoded; `records`: `latest(...)` of the topic."""
    calls = right = 0
    missing: list[str] = []
    differences: list[Difference] = []
    for t in truth:
        calls += 1
        uid = t["uniqueid"]
        r = records.get(uid)
        if r is None:
            missing.append(uid)
            continue
        found = [Difference(uid, f, t.get(f), r.get(f)) for f in FIELDS if t.get(f) != r.get(f)]
        expected, got = _results(t.get("attempts")), _results(r.get("attempts"))
        if expected != got:
            found.append(Difference(uid, "attempts", expected, got))
        differences += found
        right += not found
    return Checked(calls, right, missing, differences)
