from __future__ import annotations

from processors.core.repeat_callers import CallerHistory, forget, forget_at, record_missed
from schemas.records import MissedCallFact
from schemas.timefmt import format_ts

T0 = 1_700_000_000.0


def fact(uid: str, at: float, alert: bool = True, cli: str = "98") -> MissedCallFact:
    return MissedCallFact(uniqueid=uid, app="app", cli=cli, at=format_ts(at), missed_reason="no_answer",
                          wait_s=30, attempts=1, agents_tried=["A1"], alert=alert)


def test_repeat_count_over_24_hours_including_this_one() -> None:
    h = CallerHistory()
    a = record_missed(h, fact("1", T0))
    assert a is not None and a.repeat_count == 1
    assert record_missed(h, fact("2", T0 + 3600, alert=False)) is None  # short abandon: counted, no alert
    b = record_missed(h, fact("3", T0 + 7200))
    assert b is not None and b.repeat_count == 3
    c = record_missed(h, fact("4", T0 + 86400 + 3601))  # the first two are now older than 24 h
    assert c is not None and c.repeat_count == 2


def test_replayed_fact_raises_nothing_and_counts_once() -> None:
    h = CallerHistory()
    assert record_missed(h, fact("1", T0)) is not None
    assert record_missed(h, fact("1", T0)) is None
    later = record_missed(h, fact("2", T0 + 10))
    assert later is not None and later.repeat_count == 2


def test_out_of_order_facts_count_only_the_24_hours_before_each() -> None:
    h = CallerHistory()
    record_missed(h, fact("late", T0 + 100))
    early = record_missed(h, fact("early", T0))
    assert early is not None and early.repeat_count == 1


def test_withheld_numbers_are_never_repeats_and_history_expires() -> None:
    h = CallerHistory()
    record_missed(h, fact("1", T0, cli=""))
    a = record_missed(h, fact("2", T0 + 1, cli=""))
    assert a is not None and a.repeat_count == 1
    assert not forget(h, T0 + 100) and forget(h, T0 + 86400 + 2)
    at = forget_at(h)
    assert at is not None and not forget(h, at - 2) and forget(h, at)
    assert forget_at(CallerHistory()) is None
    assert CallerHistory.from_json(h.to_json()) == h
