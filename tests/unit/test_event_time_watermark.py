"""A call's receive-time fallback must never move a metrics watermark to the wall clock.

A hang-up delivered more than HANGUP_GRACE_S before its IN (or a lost IN) closes the call
without the provider's start time. Replayed or delayed history is processed long after it
happened, so a start taken from our receive time is "now": as a window time it would push the
app's watermark past every open window, all of them would go final at once, and the calls still
to come for them (this one's revision among them) would be late.
"""

from __future__ import annotations

from processors.core.call_metrics import Contribution, agent_contributions, app_contribution, receive_timed
from processors.core.call_record import view
from processors.core.windows import Windowed, WindowPolicy, add, flush
from schemas.timefmt import format_ts
from tests.unit.callgen import T0, attempt, ev
from tests.unit.test_lifecycle import NOW, Run

P = WindowPolicy(size_s=3600, grace_s=600, idle_close_s=30, interim_interval_s=5, keep_final_s=7200)
START = 1_699_999_200  # the hour window T0 falls in


def contributions(run: Run) -> tuple[list[Contribution], frozenset[str]]:
    """What the calls pipeline sends for the latest record (as processors.pipelines.calls does)."""
    assert run.state is not None
    rec = run.record
    return [*agent_contributions(rec), app_contribution(rec, 5, 20)], receive_timed(rec.uniqueid, view(run.state))


def feed(windows: dict[str, Windowed], run: Run, now: float) -> list[str]:
    out: list[str] = []
    contribs, clockless = contributions(run)
    for c in contribs:
        out.append(add(windows.setdefault(c.key, Windowed()), c.item_id, c.t, c.values, now, P,
                       advance=c.item_id not in clockless))
    return out


def test_hangup_before_its_in_by_more_than_the_grace_does_not_close_the_windows() -> None:
    windows: dict[str, Windowed] = {}
    earlier = Run().feed([ev("IN", "a", T0), ev("H", "a", None, duration=30, received=NOW)])
    feed(windows, earlier, NOW)  # a call of that hour, already counted
    app = earlier.record.app
    assert [w.final for _, w in flush(windows[app], NOW, P)] == [False]  # its interim
    # an abandon in the IVR: H (no provider time, duration 12) arrives first; IN only after the grace
    call = Run().feed([ev("H", "b", None, duration=12, received=NOW + 1)], now=NOW + 1).settle(NOW + 1)
    assert len(call.completed) == 1 and call.record.close_reason == "hangup"
    rec = call.record
    # its start is unknown: estimated from H's duration, not our receive time of H
    assert rec.started_at < rec.ended_at and rec.duration == 12 and rec.wait_s == 12
    assert feed(windows, call, NOW + 20) == ["counted"]
    assert windows[app].watermark == T0  # only the provider's clock moves it
    assert all(not w.final for _, w in flush(windows[app], NOW + 20, P))
    # the IN comes at last: the call is revised into the hour it began in and counted there
    call.feed([ev("IN", "b", T0 + 600, received=NOW + 21)], now=NOW + 21)
    assert call.record.revision == 2 and call.record.started_at == format_ts(T0 + 600)
    assert feed(windows, call, NOW + 21) == ["counted"]
    assert windows[app].watermark == T0 + 600
    assert sorted(windows[app].windows[START].items) == ["a", "b"]
    assert not windows[app].windows[START].final
    # the receive-time window the estimate had put it in is emptied, not left holding the call
    assert [len(w.items) for s, w in windows[app].windows.items() if s != START] in ([], [0])


def test_lost_in_with_attempts_starts_at_the_earliest_provider_time() -> None:
    events = [*attempt("c", 1, "A1", T0 + 8, "noanswer", ring=20), ev("H", "c", None, duration=40, received=NOW)]
    run = Run().feed(events).settle(NOW)
    rec = run.record
    assert rec.started_at == rec.attempts[0].started_at  # TA's provider time, not H's receipt
    assert run.state is not None and receive_timed(rec.uniqueid, view(run.state)) == frozenset()


def test_lost_in_without_any_provider_time_is_receive_timed() -> None:
    run = Run().feed([ev("H", "d", None, duration=9, received=NOW)]).settle(NOW)
    assert run.state is not None and receive_timed("d", view(run.state)) == frozenset({"d"})
    assert run.record.duration == 9 and run.record.missed_reason == "abandoned_in_ivr"
    # and a call with its IN is on the provider's clock
    full = Run().feed([ev("IN", "e", T0), ev("H", "e", None, duration=9, received=NOW)])
    assert full.state is not None and receive_timed("e", view(full.state)) == frozenset()


def test_a_receive_timed_item_is_counted_but_does_not_advance_the_watermark() -> None:
    s = Windowed()
    assert add(s, "a", T0, {"x": 1}, NOW, P) == "counted"
    assert add(s, "b", NOW - 5, {"x": 1}, NOW, P, advance=False) == "counted"
    assert s.watermark == T0 and len(s.windows) == 2
    assert all(not w.final for _, w in flush(s, NOW, P))


def test_a_provider_time_a_day_ahead_of_its_receipt_does_not_close_the_windows() -> None:
    """A fault trial: one call whose IN, TA and TC said a day ahead closed its app's and agent's
    windows early; a call of that hour closed after it was then dropped as late. Counted in the
    window its time names, such a call moves no watermark; a few minutes ahead (clocks differ)
    still does."""
    windows: dict[str, Windowed] = {}
    counted = Run().feed([ev("IN", "a", T0), ev("H", "a", None, duration=30, received=T0 + 30)])
    feed(windows, counted, NOW)
    app = counted.record.app
    ahead = T0 + 86_400
    skewed = Run().feed([ev("IN", "f", ahead, received=T0 + 60),
                         *[{**e, "received_at": format_ts(T0 + 61)} for e in
                           attempt("f", 1, "A1", ahead + 2, "answered", ring=3, talk=20)],
                         ev("H", "f", None, duration=40, received=T0 + 90)])
    assert skewed.record.started_at == format_ts(ahead)  # the record keeps the provider's word
    feed(windows, skewed, NOW)
    assert windows[app].watermark == T0
    assert all(not w.final for _, w in flush(windows[app], NOW + 20, P))
    assert all(w.watermark < ahead for k, w in windows.items())
    late = Run().feed([ev("IN", "g", T0 + 1200), ev("H", "g", None, duration=30, received=T0 + 1230)])
    assert feed(windows, late, NOW + 21) == ["counted"]
    slightly = Run().feed([ev("IN", "h", T0 + 1500, received=T0 + 1300), ev("H", "h", None, duration=9)])
    feed(windows, slightly, NOW + 22)
    assert windows[app].watermark == T0 + 1500
