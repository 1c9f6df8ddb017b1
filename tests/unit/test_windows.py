"""The windowing core: boundaries, grace, late items, one final per window, rates."""

from __future__ import annotations

import pytest

from processors.core.call_metrics import (
    agent_contributions,
    agent_record,
    app_contribution,
    app_record,
    named,
    reached_contribution,
)
from processors.core.windows import Windowed, WindowPolicy, add, flush, next_flush, window_start
from tests.unit.callgen import APP, T0, attempt, ev
from tests.unit.test_lifecycle import Run, answered_call

P = WindowPolicy(size_s=3600, grace_s=600, idle_close_s=30, interim_interval_s=5, keep_final_s=7200)
H = 1_700_002_800  # an hour boundary (1_700_002_800 % 3600 == 0)
NOW = 1_800_000_000.0  # wall clock, later than all event times (a replay)


def test_boundaries_are_start_inclusive_end_exclusive() -> None:
    assert H % 3600 == 0
    assert window_start(H, 3600) == H and window_start(H + 3599.999, 3600) == H
    assert window_start(H + 3600, 3600) == H + 3600 and window_start(H - 0.001, 3600) == H - 3600


def test_interims_are_throttled_and_final_comes_once_by_watermark() -> None:
    s = Windowed()
    live = H + 100.0  # live stream: wall clock near event time
    assert add(s, "a", H + 10, ["answered", 3, 10], live, P) == "counted"
    assert [(st, w.final) for st, w in flush(s, live, P)] == [(H, False)]  # first interim at once
    add(s, "b", H + 20, ["noanswer", None, 0], live + 1, P)
    assert flush(s, live + 2, P) == []  # throttled
    assert [(st, w.final) for st, w in flush(s, live + 5, P)] == [(H, False)]
    add(s, "c", H + 3600 + 599, ["busy", None, 0], live + 6, P)  # watermark = end + grace - 1
    assert [(st, w.final) for st, w in flush(s, live + 6, P)] == [(H + 3600, False)]  # the new window's interim
    add(s, "d", H + 3600 + 600, ["busy", None, 0], live + 7, P)  # watermark reaches end + grace
    assert flush(s, live + 7, P) == []  # H changed 6 s ago: not quiet yet; the next interim still throttled
    assert [(st, w.final) for st, w in flush(s, live + 11, P)] == [(H + 3600, False)]
    assert next_flush(s, P) == live + 1 + P.idle_close_s  # H quiet for idle_close_s
    assert [(st, w.final) for st, w in flush(s, live + 1 + P.idle_close_s, P)] == [(H, True)]
    assert flush(s, live + 100, P) == []  # never H again
    assert len(s.windows[H].items) == 2


def test_a_window_past_its_grace_by_the_watermark_still_counts_items_until_it_is_quiet() -> None:
    """A backlog read in seconds: one partition's calls move the watermark past end + grace while
    another's calls of the same hour are still closing (their hang-up grace, their ticks held while
    their partition reads on). They count; once the window has been quiet for idle_close_s it is
    final, and only then is an item late."""
    s = Windowed()
    add(s, "p0-early", H + 10, ["answered", 3, 10], NOW, P)
    add(s, "p0-late", H + 3 * 3600, ["answered", 3, 10], NOW + 1, P)  # watermark far past H's end + grace
    assert [(st, w.final) for st, w in flush(s, NOW + 2, P) if st == H] == [(H, False)]
    assert add(s, "p1-early", H + 20, ["noanswer", None, 0], NOW + 12, P) == "counted"  # 10 s later
    assert all(not w.final for st, w in flush(s, NOW + 12 + P.idle_close_s - 1, P) if st == H)
    finals = [(st, sorted(w.items)) for st, w in flush(s, NOW + 12 + P.idle_close_s, P) if w.final]
    assert (H, ["p0-early", "p1-early"]) in finals
    assert add(s, "p2-early", H + 30, ["busy", None, 0], NOW + 100, P) == "late"


def test_quiet_stream_closes_by_wall_clock() -> None:
    s = Windowed()
    add(s, "a", H + 10, ["answered", 3, 10], H + 20, P)
    flush(s, H + 20, P)
    assert flush(s, H + 3600 + 599, P) == []  # not yet end + grace
    ((start, w),) = flush(s, H + 3600 + 600, P)
    assert start == H and w.final


def test_replayed_old_data_closes_after_it_goes_quiet() -> None:
    s = Windowed()
    add(s, "a", H + 10, ["answered", 3, 10], NOW, P)
    assert [w.final for _, w in flush(s, NOW, P)] == [False]
    add(s, "b", H + 20, ["busy", None, 0], NOW + 20, P)
    assert all(not w.final for _, w in flush(s, NOW + 29, P))
    assert [w.final for _, w in flush(s, NOW + 50, P)] == [True]  # 30 s quiet


def test_late_inside_grace_counts_after_grace_is_reported() -> None:
    s = Windowed()
    add(s, "a", H + 10, ["answered", 3, 10], H + 20, P)
    add(s, "b", H + 3600 + 300, ["noanswer", None, 0], H + 3700, P)  # next window; watermark end+300
    assert add(s, "late-in-grace", H + 3000, ["busy", None, 0], H + 3800, P) == "counted"
    add(s, "x", H + 3600 + 600, ["noanswer", None, 0], H + 4300, P)
    finals = [(st, w) for st, w in flush(s, H + 4300, P) if w.final]
    ((_, w),) = finals
    assert set(w.items) == {"a", "late-in-grace"}
    assert add(s, "after-grace", H + 3000, ["busy", None, 0], H + 4400, P) == "late"
    assert "after-grace" not in s.windows[H].items
    assert add(s, "a", H + 10, ["answered", 3, 10], H + 4400, P) == "unchanged"  # a replay is not late
    assert all(not w.final or st != H for st, w in flush(s, H + 4400, P))  # no second final
    flush(s, H + 4300 + P.keep_final_s, P)  # dropped after keep_final_s
    assert H not in s.windows
    assert add(s, "very-late", H + 5, ["busy", None, 0], H + 20000, P) == "late"


def test_revised_item_moves_and_replaces() -> None:
    s = Windowed()
    add(s, "a", H + 10, ["caller_hangup", None, 0], NOW, P)
    add(s, "a", H + 10, ["noanswer", None, 0], NOW, P)
    assert s.windows[H].items == {"a": ["noanswer", None, 0]}
    add(s, "a", H - 10, ["noanswer", None, 0], NOW, P)  # its start time was revised
    assert s.windows[H].items == {} and s.windows[H - 3600].items == {"a": ["noanswer", None, 0]}


def test_next_flush() -> None:
    s = Windowed()
    assert next_flush(s, P) is None
    add(s, "a", H + 10, ["answered", 3, 10], H + 20, P)
    due = next_flush(s, P)
    assert due is not None and due <= H + 20  # a dirty window: its first interim is due at once
    flush(s, H + 20, P)
    assert next_flush(s, P) == H + 3600 + 600


def test_agent_figures_and_zero_denominators() -> None:
    uid = "m"
    run = Run().feed([ev("IN", uid, T0),
                      *attempt(uid, 1, "A1", T0 + 1, "noanswer", ring=10),
                      *attempt(uid, 2, "A2", T0 + 12, "caller_hangup", ring=5),
                      ev("H", uid, None, duration=20)]).settle()
    call = run.record
    by_agent = {c.key: c for c in agent_contributions(call)}
    assert set(by_agent) == {f"{APP}:A1", f"{APP}:A2"}
    s = Windowed()
    c = by_agent[f"{APP}:A2"]
    add(s, c.item_id, c.t, c.values, NOW, P)
    ((start, w),) = flush(s, NOW, P)
    r = agent_record(c.key, start, 3600, w)
    assert (r.agent, r.offered, r.caller_hangup, r.answered) == ("A2", 1, 1, 0)
    assert r.answer_rate == 0.0 and r.answer_rate_excl_caller_hangup is None and r.avg_ring_s is None
    empty = agent_record(c.key, start, 3600, type(w)())
    assert empty.offered == 0 and empty.answer_rate is None


def test_app_figures_and_service_level() -> None:
    answered = Run().feed(answered_call("a1")).settle().record  # waits 9 s
    short = Run().feed([ev("IN", "s1", T0), ev("H", "s1", None, duration=2)]).settle().record
    missed = Run().feed([ev("IN", "m1", T0), ev("H", "m1", None, duration=40)]).settle().record
    s = Windowed()
    for call in (answered, short, missed):
        c = app_contribution(call, short_abandon_s=5, service_level_s=20)
        add(s, c.item_id, c.t, c.values, NOW, P)
    ((start, w),) = flush(s, NOW, P)
    r = app_record(APP, start, 3600, w, 20)
    assert (r.offered, r.answered, r.missed, r.abandoned_in_ivr, r.short_abandons) == (3, 1, 2, 2, 1)
    assert r.avg_speed_of_answer_s == 9.0
    assert r.service_level == pytest.approx(0.5)  # 1 answered within 20 s / (3 offered - 1 short)


def test_missed_callers_reached_again_whatever_the_order_and_replays() -> None:
    answered = Run().feed(answered_call("a1")).settle().record
    short = Run().feed([ev("IN", "s1", T0), ev("H", "s1", None, duration=2)]).settle().record
    m1 = Run().feed([ev("IN", "m1", T0), ev("H", "m1", None, duration=40)]).settle().record
    m2 = Run().feed([ev("IN", "m2", T0 + 5), ev("H", "m2", None, duration=40)]).settle().record
    calls = [app_contribution(c, short_abandon_s=5, service_level_s=20) for c in (answered, short, m1, m2)]
    # reached items for m1, for a short abandon and an answered call (never sent so, but not
    # counted if they were), and replays; the reached item may come before its call
    reached = [reached_contribution(APP, u, T0) for u in ("m1", "s1", "a1", "m1")]
    for order in (calls + reached, reached + calls[::-1]):
        s = Windowed()
        for c in order:
            add(s, c.item_id, c.t, named(c.values), NOW, P)
        ((start, w),) = flush(s, NOW, P)
        r = app_record(APP, start, 3600, w, 20)
        assert (r.offered, r.missed, r.short_abandons) == (4, 3, 1)  # reached items are not calls
        assert r.missed_reached_again == 1 and r.reached_again_share == pytest.approx(0.5)  # 1 of m1, m2


def test_reached_again_share_is_null_without_missed_calls_and_a_late_reach_is_late() -> None:
    answered = Run().feed(answered_call("a1")).settle().record
    s = Windowed()
    c = app_contribution(answered, short_abandon_s=5, service_level_s=20)
    add(s, c.item_id, c.t, c.values, NOW, P)
    ((start, w),) = flush(s, NOW + P.idle_close_s, P)
    r = app_record(APP, start, 3600, w, 20)
    assert r.final and (r.missed_reached_again, r.reached_again_share) == (0, None)
    late = reached_contribution(APP, "m9", c.t)  # a caller reached again after the window's final
    assert add(s, late.item_id, late.t, late.values, NOW + 60, P) == "late"  # not counted, reported late
    assert late.item_id not in w.items


def test_an_item_on_a_receive_time_stand_in_counts_but_does_not_hold_a_window_past_its_grace_open() -> None:
    """A missed call's caller reached again comes up to a day later, timed by receipt (advance=False):
    counted while the window is open, but it does not restart its quiet period once past the grace,
    or an app's busy hour would stay open as long as call-backs trickle in."""
    s = Windowed()
    add(s, "call", H + 10, ["missed"], H + 100, P)
    past = H + 3600 + 600  # end + grace on the wall clock
    assert add(s, "call|reached", H + 10, {"reached_again": True}, past + 5, P, advance=False) == "counted"
    assert s.windows[H].changed_at == H + 100 and s.windows[H].dirty
    ((start, w),) = flush(s, past + 10, P)  # quiet since H + 100, long past idle_close_s
    assert start == H and w.final and "call|reached" in w.items
    assert add(s, "other|reached", H + 20, {"reached_again": True}, past + 20, P, advance=False) == "late"
    # before the grace, such an item is a change like any other
    s2 = Windowed()
    add(s2, "call", H + 10, ["missed"], H + 100, P)
    add(s2, "call|reached", H + 10, {"reached_again": True}, H + 200, P, advance=False)
    assert s2.windows[H].changed_at == H + 200
    # and a window's first item starts its quiet period whatever it is (old data: past every grace)
    s3 = Windowed()
    add(s3, "no-provider-time", H + 10, ["missed"], NOW, P, advance=False)
    assert [w.final for _, w in flush(s3, NOW + 1, P)] == [False]
    assert add(s3, "another", H + 20, ["missed"], NOW + 2, P, advance=False) == "counted"
    assert [w.final for _, w in flush(s3, NOW + P.idle_close_s, P)] == [True]


def test_a_final_window_waits_for_the_windows_before_it_to_be_dropped() -> None:
    """Windows can go final out of order (an older one still changing): a later final one is kept
    until every window before it is dropped, so `closed_upto` never passes a window still held (a
    rebuild would drop it: its items would be late, a replay of them too)."""
    s = Windowed()
    add(s, "a", H + 10, ["answered", 3, 10], H + 100, P)
    add(s, "b", H + 3600 + 10, ["answered", 3, 10], H + 3700, P)
    t = H + 7200 + 600  # both past end + grace on the wall clock
    add(s, "a2", H + 20, ["busy", None, 0], t - 10, P)  # H changes again: H + 3600 goes final first
    assert [(st, w.final) for st, w in flush(s, t, P)] == [(H, False), (H + 3600, True)]
    later = t + P.keep_final_s
    assert next_flush(s, P) == t - 10 + P.idle_close_s  # H's final; not H + 3600's drop
    assert add(s, "a3", H + 30, ["busy", None, 0], later - 10, P) == "counted"
    assert [(st, w.final) for st, w in flush(s, later, P)] == [(H, False)]  # H + 3600's keep is over
    assert set(s.windows) == {H, H + 3600} and s.closed_upto < H  # but it is kept: H is still open
    assert next_flush(s, P) == later + 20  # H's final, not H + 3600's drop (past: a tick every second)
    assert [(st, w.final) for st, w in flush(s, later + 20, P)] == [(H, True)]
    assert set(s.windows) == {H, H + 3600} and s.closed_upto < H  # H is kept: H + 3600 waits for it
    assert add(s, "a4", H + 40, ["busy", None, 0], later + 21, P) == "late"
    assert add(s, "a3", H + 30, ["busy", None, 0], later + 22, P) == "unchanged"  # a replay
    assert next_flush(s, P) == later + 20 + P.keep_final_s  # H's drop (H + 3600's is past, and waits)
    flush(s, later + 20 + P.keep_final_s - 1, P)
    assert set(s.windows) == {H, H + 3600}
    flush(s, later + 20 + P.keep_final_s, P)
    assert s.windows == {} and s.closed_upto == H + 7200
