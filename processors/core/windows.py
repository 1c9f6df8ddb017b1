"""Event-time tumbling windows with a grace period, one final record each.

Per key (an agent, an app) the state holds its open windows. Each window holds *contributions*
keyed by item id (an attempt, a call), so a revised call replaces what it contributed before and
a replay changes nothing: counts are derived from the items, never incremented blindly.

A window [start, start + size) becomes final, exactly once, when it is past end + grace and has not
changed for `idle_close_s` (wall clock). Past end + grace on either clock:
  * event time: the key's watermark (the latest provider-clocked item time seen: an item whose
    time is a receive-time stand-in is counted but does not advance it) reaches it, or
  * wall clock: now reaches it — so a quiet key, or a replay of old data, still closes its windows.
The quiet period holds for the watermark too: items reach a window when their call closes, and
calls close on wall-clock timers (the hang-up grace, the idle timeout, ticks held while a
partition reads a backlog), not in event-time order. When hours of calls are read in minutes (a
backlog after an outage, a replay), one partition's calls can move the watermark past end + grace
while another partition's calls of the same window are still to close: they are counted as long
as they come before the window has been quiet for `idle_close_s`. Live, a window's last calls
close minutes after its end, so it is usually quiet by end + grace and goes final then. An item on a
receive-time stand-in (a missed call's caller reached again, up to a day later) is counted while
its window is open, but does not restart the quiet period once the window is past its grace.
Items for a final window are late: reported to the caller (`add` returns "late", the pipeline
logs and counts them), never added; a replay of what it counted is "unchanged". Windows can go
final out of order (an older one still changing); they are dropped in start order, each
`keep_final_s` after its final and not before every window before it is dropped, so `closed_upto`
(below it, every window is taken as dropped) never passes a window still held.
Interim records are throttled to one per `interim_interval_s` per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    # no defaults: they are settings (config/settings.py), given by the pipeline
    size_s: float
    grace_s: float
    idle_close_s: float
    interim_interval_s: float
    keep_final_s: float  # how long a final window is kept to recognise late items


@dataclass(slots=True)
class Window:
    items: dict[str, Any] = field(default_factory=dict)  # item id -> its contribution (opaque here)
    final: bool = False
    dirty: bool = False  # changed since the last record
    changed_at: float = 0.0  # wall clock
    emitted_at: float = 0.0  # wall clock of the last record (interim or final)
    #: the items put or removed since the state was loaded, those put new in the order of `items`,
    #: when whoever loaded it asks (a dict), so that what changed is known without comparing every
    #: item; None: not kept
    touched: dict[str, None] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Windowed:
    windows: dict[int, Window] = field(default_factory=dict)  # by window start (epoch s)
    watermark: float = -math.inf
    closed_upto: float = -math.inf  # windows ending at or before this were final and are dropped


def window_start(t: float, size: float) -> int:
    return int(math.floor(t / size) * size)


AddResult = Literal["counted", "unchanged", "late"]


def add(state: Windowed, item_id: str, t: float, contribution: Any, now: float, p: WindowPolicy,
        advance: bool = True) -> AddResult:
    """Put (or replace) an item's contribution in the window of its event time `t`.

    `advance`: `t` is the provider's clock, so it may advance the watermark (a receive-time
    stand-in may be "now" for old data, and would close every open window at once)."""
    start = window_start(t, p.size_s)
    # an item that moved (its time was revised) leaves the window it was in, unless that one is final
    for s, w in state.windows.items():
        if s != start and item_id in w.items and not w.final:
            del w.items[item_id]
            w.dirty = True
            if _holds_open(state, s, now, p, advance):
                w.changed_at = now
            _touch(w, item_id)
    found = state.windows.get(start)
    if found is None and start + p.size_s <= state.closed_upto:
        return "late"
    w = state.windows.setdefault(start, Window(changed_at=now)) if found is None else found
    if w.final:
        if w.items.get(item_id) == contribution:
            return "unchanged"  # a replay of what the final already counted
        return "late"
    if advance and t > state.watermark:
        state.watermark = t
    held = w.items.get(item_id)  # None: not held (an item's contribution is never None)
    if held == contribution:
        return "unchanged"
    w.items[item_id] = contribution
    w.dirty = True
    if _holds_open(state, start, now, p, advance):
        w.changed_at = now
    _touch(w, item_id, held is None)
    return "counted"


def _holds_open(state: Windowed, start: int, now: float, p: WindowPolicy, advance: bool) -> bool:
    """Whether a change restarts the window's quiet period: any change before its grace is over (on
    either clock), and after it only an item on the provider's clock. One timed by its receipt (a
    missed call's caller reached again, up to a day later; a call with no provider time) is counted
    while the window is open, but does not hold it open past its grace. (A window's first item
    starts its quiet period whatever it is: see `add`.)"""
    return advance or max(state.watermark, now) < start + p.size_s + p.grace_s


def _touch(w: Window, item_id: str, inserted: bool = False) -> None:
    if w.touched is not None:
        if inserted:  # to the end, as in `items`: new items are noted in the order they were put in
            w.touched.pop(item_id, None)
        w.touched.setdefault(item_id, None)


def _closable(start: int, w: Window, state: Windowed, now: float, p: WindowPolicy) -> bool:
    past = start + p.size_s + p.grace_s
    return (state.watermark >= past or now >= past) and now >= w.changed_at + p.idle_close_s


def flush(state: Windowed, now: float, p: WindowPolicy) -> list[tuple[int, Window]]:
    """Windows whose record is due now (interims, throttled; finals, once), in start order.

    Marks what it returns as emitted, and drops final windows kept long enough.
    """
    out: list[tuple[int, Window]] = []
    for start in sorted(state.windows):
        w = state.windows[start]
        if w.final:
            continue
        if _closable(start, w, state, now, p):
            w.final, w.dirty, w.emitted_at = True, False, now
            out.append((start, w))
        elif w.dirty and now >= w.emitted_at + p.interim_interval_s:
            w.dirty, w.emitted_at = False, now
            out.append((start, w))
    # dropped in start order: `closed_upto` (what a rebuild and a late item take as dropped) must
    # not pass a window still open, or still kept to tell a replay from a late item
    for start in sorted(state.windows):
        w = state.windows[start]
        if not (w.final and now >= w.emitted_at + p.keep_final_s):
            break
        state.closed_upto = max(state.closed_upto, start + p.size_s)
        del state.windows[start]
    return out


def next_flush(state: Windowed, p: WindowPolicy) -> float | None:
    """The earliest wall-clock time `flush` may have something to do (None: nothing pending)."""
    times: list[float] = []
    oldest = min(state.windows, default=None)
    for start, w in state.windows.items():
        end = start + p.size_s
        if w.final:
            if start == oldest:  # (a later one waits for the windows before it: see `flush`)
                times.append(w.emitted_at + p.keep_final_s)
            continue
        past = -math.inf if state.watermark >= end + p.grace_s else end + p.grace_s
        times.append(max(past, w.changed_at + p.idle_close_s))
        if w.dirty:
            times.append(w.emitted_at + p.interim_interval_s)
    return min(times) if times else None
