from __future__ import annotations

import orjson
from hypothesis import given, settings, strategies

from processors.core.windows import Window, Windowed, WindowPolicy, add, flush
from processors.window_store import WindowStore

P = WindowPolicy(size_s=3600, grace_s=600, idle_close_s=30, interim_interval_s=5, keep_final_s=100)
H = 1_700_002_800


def change(store: WindowStore, key: str, fn: object) -> Windowed:
    """One batch's work on a key, as the runtime does it: load (a copy), change, save once."""
    st = store.load(key) or Windowed()
    fn(st)  # type: ignore[operator]
    store.save(key, st)
    return st


def test_rows_rebuild_the_same_state_and_dropped_windows_leave_no_rows() -> None:
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    change(store, "app:A1", lambda st: add(st, "c1|1", H + 10, ["answered", 3, 10], H + 20, P))
    change(store, "app:A1", lambda st: (add(st, "c2|1", H + 20, ["noanswer", None, 0], H + 21, P),
                                        add(st, "c2|1", H - 20, ["noanswer", None, 0], H + 21, P)))
    change(store, "app:A2", lambda st: add(st, "c3|1", H + 30, ["busy", None, 0], H + 23, P))
    assert sum(1 for k in rows if b"\x1fd\x1f" in k) == 3  # one row per window and batch that changed it
    assert sum(1 for k in rows if b"\x1fw\x1f" in k) == 0  # no window rows until a flush
    again = WindowStore(dict(rows))
    again.rebuild(rows.items(), H + 30)
    for key, st in store.cache.items():
        assert {s: w.items for s, w in again.cache[key].windows.items()} == {s: w.items for s, w in st.windows.items()}
        assert again.cache[key].watermark == st.watermark
        assert all(w.dirty and w.changed_at == H + 30 for w in again.cache[key].windows.values())
    finals: list[tuple[int, Window]] = []
    change(store, "app:A1", lambda st: finals.extend(flush(st, H + 3600 + 600, P)))
    assert [(s, w.final) for s, w in finals] == [(H - 3600, True), (H, True)]
    rebuilt = WindowStore({})
    rebuilt.rebuild(rows.items(), H + 4300)
    assert rebuilt.cache["app:A1"].windows[H].final
    change(store, "app:A1", lambda st: flush(st, H + 3600 + 600 + 100, P))  # kept long enough: dropped
    assert not any(k.startswith(b"app:A1\x1fi") or k.startswith(b"app:A1\x1fw") for k in rows)
    result: list[str] = []
    change(store, "app:A1", lambda st: result.append(add(st, "late|1", H + 5, ["busy", None, 0], H + 9000, P)))
    assert result == ["late"]
    rebuilt = WindowStore({})
    rebuilt.rebuild(rows.items(), H + 9000)
    assert rebuilt.cache["app:A1"].windows == {}


def test_a_loaded_state_is_a_copy_until_saved() -> None:
    store = WindowStore({})
    change(store, "k", lambda st: add(st, "a", H, [1], H, P))
    st = store.load("k")
    assert st is not None
    add(st, "b", H, [2], H + 1, P)
    assert set(store.cache["k"].windows[H].items) == {"a"}  # not saved: the stored state is unchanged
    assert set((store.load("k") or Windowed()).windows[H].items) == {"a"}


def test_rows_and_records_written_positionally_before_version_1_are_still_read() -> None:
    import orjson
    import pytest

    from processors.core.call_metrics import agent_record, app_record, named

    old_rows = {
        f"app:A1\x1fi\x1f{H}\x1fc1|1".encode(): orjson.dumps([H + 10, ["answered", 3.0, 60.0]]),
        f"app\x1fi\x1f{H}\x1fc1".encode(): orjson.dumps([H + 5, ["missed", "no_answer", 2.0, True, False]]),
    }
    store = WindowStore(old_rows, named)
    states = dict(store.items())
    agent = agent_record("app:A1", H, 3600, states["app:A1"].windows[H])
    assert (agent.offered, agent.answered, agent.avg_ring_s, agent.talk_s) == (1, 1, 3.0, 60.0)
    app = app_record("app", H, 3600, states["app"].windows[H], 20.0)
    assert (app.offered, app.missed, app.short_abandons, app.service_level) == (1, 1, 1, None)
    # a replayed old record equals the named one it was stored as: no change, no double count
    assert named(["answered", 3.0, 60.0]) == {"v": 1, "result": "answered", "ring_s": 3.0, "talk_s": 60.0}
    with pytest.raises(ValueError):
        named({"v": 2, "result": "answered"})
    with pytest.raises(ValueError):
        named([1, 2])


def test_rows_written_with_late_counts_still_read() -> None:
    rows = {b"app:A1\x1fm": orjson.dumps([H + 10, H - 3600, 2]),
            f"app:A1\x1fw\x1f{H}".encode(): orjson.dumps([True, 3, False, H + 20.0, H + 30.0])}
    store = WindowStore(rows)
    store.rebuild(rows.items(), H + 40)
    st = store.cache["app:A1"]
    assert (st.watermark, st.closed_upto) == (H + 10, H - 3600)
    w = st.windows[H]
    assert (w.final, w.changed_at, w.emitted_at) == (True, H + 20.0, H + 30.0)


def test_a_batch_writes_one_row_per_window_whatever_its_items() -> None:
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    change(store, "k", lambda st: [add(st, f"c{i}|1", H + i, [i], H, P) for i in range(50)])
    assert list(rows) == [f"k\x1fd\x1f{H}\x1f0\x1f{store.owner}".encode(), f"k\x1fm\x1f{store.owner}".encode()]



def test_a_batch_on_a_loaded_state_writes_the_items_it_touched_and_rebuilds_them_in_order() -> None:
    """A window of thousands of items is not compared item by item in every batch: the core notes
    what a step puts or removes in a state the store loaded, and the store writes that, new items
    in the order they are in the window (rebuilt in another order, the windows' sums could differ
    in their last digit)."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    change(store, "k", lambda st: [add(st, f"c{i}|1", H + i, [i], H, P) for i in range(1000)])

    def batch(st: Windowed) -> None:
        add(st, "new|2", H + 5, [2], H + 1, P)
        add(st, "new|1", H + 6, [1], H + 1, P)
        add(st, "c7|1", H + 7, [70], H + 1, P)  # replaced
        add(st, "new|2", H + 5, [20], H + 1, P)  # revised: keeps its place
        add(st, "new|3", H + 8, [3], H + 1, P)
        add(st, "new|3", H + 3600 + 8, [3], H + 1, P)  # moved to the next window: removed from this one
        add(st, "new|3", H + 8, [3], H + 1, P)  # and back, put last
        add(st, "new|1", H + 3600 + 6, [1], H + 1, P)  # a new item moved out and back: last, as it is live
        add(st, "new|1", H + 6, [1], H + 1, P)
        st.windows[H].items["c8|1"] = [8]  # an equal item put outside the core: not a change to write

    before = set(rows)
    change(store, "k", batch)
    written = [orjson.loads(rows[k]) for k in set(rows) - before if b"\x1fd\x1f" in k]
    assert [list(delta) for _, delta in written] == [["new|2", "c7|1", "new|3", "new|1"]]
    assert all(w.touched is None for w in store.cache["k"].windows.values())  # written: not kept
    again = WindowStore({})
    again.rebuild(rows.items(), H + 2)
    assert list(again.cache["k"].windows[H].items) == list(store.cache["k"].windows[H].items)
    assert again.cache["k"].windows[H].items == store.cache["k"].windows[H].items

def test_a_delta_larger_than_a_row_is_split_into_rows_read_back_as_one() -> None:
    """A backlog batch puts thousands of contributions in one window: its delta is written as
    several rows, each within `row_bytes` (a changelog record the producer can send), numbered on."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows, row_bytes=16 * 1024)
    values = ["answered", 3.5, 61.25, "agent-0042", "x" * 40]
    change(store, "k", lambda st: [add(st, f"call.{i}|1", H + i % 3000, values, H, P) for i in range(3000)])
    deltas = sorted((k for k in rows if b"\x1fd\x1f" in k), key=lambda k: int(k.split(b"\x1f")[3]))
    assert len(deltas) > 10
    assert all(len(rows[k]) <= 16 * 1024 for k in deltas)
    assert [int(k.split(b"\x1f")[3]) for k in deltas] == list(range(len(deltas)))
    change(store, "k", lambda st: add(st, "call.x|1", H + 1, values, H + 1, P))  # the next batch's row follows
    assert f"k\x1fd\x1f{H}\x1f{len(deltas)}\x1f{store.owner}".encode() in rows
    again = WindowStore({})
    again.rebuild(rows.items(), H + 2)
    assert again.cache["k"].windows[H].items == store.cache["k"].windows[H].items
    assert len(again.cache["k"].windows[H].items) == 3001
    assert again.next_seq[("k", H)] == len(deltas) + 1


def handed_over(late_change: object) -> tuple[WindowStore, dict[bytes, bytes], dict[bytes, bytes]]:
    """An owner's first batch, then its last, delivered late: after a new owner rebuilt without it.
    -> (the new owner, the rows it rebuilt from, the late batch's rows)."""
    changelog: dict[bytes, bytes] = {}
    old = WindowStore(changelog)
    old.owner = "0.ffffffff"  # a token that sorts after any other: the order must not rest on it
    change(old, "k", lambda st: add(st, "a", H, [1], H, P))
    recovered_from = dict(changelog)
    change(old, "k", late_change)
    late = {k: v for k, v in changelog.items() if k not in recovered_from}
    new = WindowStore(dict(recovered_from))
    new.rebuild(list(new.rows.items()), H + 2)
    assert new.owner.startswith("1.")  # one more than the epoch of the rows it rebuilt from
    new.owner = "1.00000000"
    return new, recovered_from, late


def test_two_owners_of_a_partition_never_write_the_same_row_and_the_new_one_wins() -> None:
    new, _, late = handed_over(lambda st: (add(st, "a", H, [7], H + 1, P), add(st, "b", H + 1, [2], H + 1, P)))
    change(new, "k", lambda st: (add(st, "a", H, [9], H + 2, P), add(st, "c", H + 2, [3], H + 2, P)))
    compacted = {**new.rows, **late}  # compaction keeps the last of two rows with one key
    assert sum(1 for k in compacted if b"\x1fd\x1f" in k) == 3  # numbered alike, both kept
    final = WindowStore(compacted)
    final.rebuild(list(compacted.items()), H + 3)
    assert final.cache["k"].windows[H].items == {"a": [9], "b": [2], "c": [3]}  # a: the new owner's
    st = final.load("k")
    assert st is not None
    st.windows.clear()
    final.save("k", st)
    assert [k for k in compacted if b"\x1fd\x1f" in k] == []  # and every row goes with the window


def test_a_late_batch_for_a_window_dropped_since_does_not_bring_it_back() -> None:
    new, _, late = handed_over(lambda st: add(st, "b", H + 1, [2], H + 1, P))

    def drop(st: Windowed) -> None:  # as the core drops a final window kept long enough
        st.windows.clear()
        st.closed_upto = H + P.size_s
    change(new, "k", drop)
    compacted = {**new.rows, **late}
    final = WindowStore(compacted)
    final.rebuild(list(compacted.items()), H + 3)
    assert final.cache["k"].windows == {}  # not rebuilt: its final would go out again with "b" alone
    assert [k for k in compacted if b"\x1fd\x1f" in k] == list(late)  # until the key's next save
    change(final, "k", lambda st: add(st, "x", H + P.size_s, [1], H + 4, P))
    assert [k for k in compacted if b"\x1fd\x1f" in k and f"{H}".encode() in k] == []


def test_delta_rows_written_without_an_owner_are_read_and_dropped() -> None:
    rows = {f"k\x1fd\x1f{H}\x1f0".encode(): orjson.dumps([H, {"a": [1]}]),
            f"k\x1fd\x1f{H}\x1f1".encode(): orjson.dumps([H + 1, {"a": None, "b": [2]}])}
    store = WindowStore(rows)
    store.rebuild(list(rows.items()), H + 2)
    assert store.cache["k"].windows[H].items == {"b": [2]} and store.next_seq[("k", H)] == 2
    st = store.load("k")
    assert st is not None
    st.windows.clear()
    store.save("k", st)
    assert [k for k in rows if b"\x1fd\x1f" in k] == []


@given(strategies.lists(strategies.lists(strategies.tuples(
    strategies.sampled_from("abcdef"), strategies.integers(0, 2), strategies.integers(0, 3)),
                         max_size=6), max_size=25),
       strategies.lists(strategies.sampled_from([None, False, True]), min_size=25, max_size=25),
       strategies.booleans(), strategies.sampled_from([64 * 1024, 40]))
@settings(max_examples=300, deadline=None)
def test_rows_rebuild_what_was_saved_across_moves_replacements_and_owners(
        batches: list[list[tuple[str, int, int]]], owners: list[bool | None], item_rows: bool, row_bytes: int) -> None:
    """Batches of items put (and moved between three windows, and replaced); after each, a new owner
    rebuilt from the rows holds the same items and watermark, and may go on writing in its place
    (its delta rows continue the count: none is overwritten), writing delta rows or, as 0.1 did,
    item rows (UPGRADE_FROM=0.1), whatever the rows it found; with deltas split into rows of one
    or two items (`row_bytes` 40) or not split."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows, item_rows=item_rows, row_bytes=row_bytes)
    for n, batch in enumerate(batches):
        now = H + 10 + n

        def work(st: Windowed, batch: list[tuple[str, int, int]] = batch, now: float = now) -> None:
            for item, window, value in batch:
                add(st, item, H + window * P.size_s + value, [value], now, P)

        saved = change(store, "k", work)
        again = WindowStore(rows)
        again.rebuild(list(rows.items()), now)
        rebuilt = again.cache.get("k", Windowed())
        assert {s: w.items for s, w in rebuilt.windows.items() if w.items} == \
            {s: w.items for s, w in saved.windows.items() if w.items}
        assert rebuilt.watermark == saved.watermark
        if owners[n] is not None:  # a new owner, of either version
            store = WindowStore(rows, item_rows=bool(owners[n]), row_bytes=row_bytes)
            store.rebuild(list(rows.items()), now)


def test_rows_written_before_deltas_are_read_replaced_removed_and_dropped() -> None:
    rows = {f"k\x1fi\x1f{H}\x1fa".encode(): orjson.dumps([H + 1, [1]]),
            f"k\x1fi\x1f{H}\x1fb".encode(): orjson.dumps([H + 2, [2]])}
    store = WindowStore(rows)
    store.rebuild(list(rows.items()), H + 5)
    change(store, "k", lambda st: (add(st, "a", H + 1, [10], H + 6, P), add(st, "b", H + 3700, [2], H + 6, P)))
    again = WindowStore(rows)
    again.rebuild(list(rows.items()), H + 7)
    assert again.cache["k"].windows[H].items == {"a": [10]}  # replaced by the delta; b moved out
    assert again.cache["k"].windows[H + 3600].items == {"b": [2]}
    change(again, "k", lambda st: flush(st, H + 3 * 3600, P))  # final
    change(again, "k", lambda st: flush(st, H + 4 * 3600, P))  # kept long enough: dropped
    assert [k for k in rows if b"\x1fi\x1f" in k or b"\x1fd\x1f" in k] == []


def test_upgrading_from_0_1_item_rows_are_written_until_a_window_has_deltas() -> None:
    rows: dict[bytes, bytes] = {}
    old_format = WindowStore(rows, item_rows=True)
    change(old_format, "k", lambda st: [add(st, f"c{i}|1", H + i, [i], H, P) for i in range(3)])
    assert sorted(k.split(b"\x1f")[1] for k in rows) == [b"i", b"i", b"i", b"m"]  # what 0.1 writes and reads
    new_format = WindowStore(rows)
    new_format.rebuild(list(rows.items()), H + 1)
    change(new_format, "k", lambda st: add(st, "c0|1", H, [7], H + 2, P))
    assert sum(1 for k in rows if b"\x1fd\x1f" in k) == 1
    old_format.rebuild(list(rows.items()), H + 3)  # a window with deltas goes on with deltas
    change(old_format, "k", lambda st: add(st, "c1|1", H, [8], H + 4, P))
    assert sum(1 for k in rows if b"\x1fd\x1f" in k) == 2
    final = WindowStore(rows)
    final.rebuild(list(rows.items()), H + 5)
    assert final.cache["k"].windows[H].items == {"c0|1": [7], "c1|1": [8], "c2|1": [2]}


def test_a_stale_meta_row_does_not_move_the_rebuilt_watermark_or_closed_upto_back() -> None:
    """The watermark and `closed_upto` only grow. A meta row older than the other rows (a late batch
    of the partition's earlier owner, whose meta row has no OWNER to keep it apart; or 0.1's item
    rows, read before the `m` row) must not take the rebuilt state back: a regressed `closed_upto`
    would rebuild windows already dropped, a regressed watermark delay finals."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    change(store, "app:A1", lambda st: add(st, "c1|1", H + 10, ["answered", 3, 10], H + 20, P))
    change(store, "app:A1", lambda st: flush(st, H + 3600 + 600, P))  # final
    change(store, "app:A1", lambda st: flush(st, H + 3600 + 600 + 100, P))  # kept long enough: dropped
    change(store, "app:A1", lambda st: add(st, "c2|1", H + 3600 + 50, ["busy", None, 0], H + 8000, P))
    saved = store.cache["app:A1"]
    assert saved.closed_upto > H and saved.watermark == H + 3600 + 50
    stale = dict(rows)
    stale[b"app:A1\x1fm"] = orjson.dumps([H + 10, None])  # as written before the window was dropped
    late_delta = orjson.dumps([H + 10, {"z|1": ["busy", None, 0]}])  # the same late batch's
    stale[f"app:A1\x1fd\x1f{H}\x1f0\x1f0.zombie".encode()] = late_delta
    rebuilt = WindowStore({})
    rebuilt.rebuild(stale.items(), H + 8001)
    st = rebuilt.cache["app:A1"]
    assert st.watermark == saved.watermark
    assert st.closed_upto == saved.closed_upto
    assert H not in st.windows  # the dropped window's late rows are not rebuilt
    # the key's next save (even one that changes nothing) leaves one meta row, its owner's, and no late rows
    owner = WindowStore(stale)
    owner.rebuild(list(stale.items()), H + 8001)
    change(owner, "app:A1", lambda st: None)
    metas = [k for k in stale if k.startswith(b"app:A1\x1fm")]
    assert metas == [f"app:A1\x1fm\x1f{owner.owner}".encode()]
    assert orjson.loads(stale[metas[0]]) == [saved.watermark, saved.closed_upto]
    assert not any(k.endswith(b"0.zombie") for k in stale)
    upgrading = WindowStore(stale, item_rows=True)  # UPGRADE_FROM=0.1: the row 0.1 reads
    upgrading.rebuild(list(stale.items()), H + 8002)
    change(upgrading, "app:A1", lambda st: None)
    assert [k for k in stale if k.startswith(b"app:A1\x1fm")] == [b"app:A1\x1fm"]
    old_rows = {b"app:A1\x1fi\x1f" + str(H).encode() + b"\x1fc1|1": orjson.dumps([H + 10, ["answered", 3, 10]]),
                b"app:A1\x1fm": orjson.dumps([H - 100, None])}
    rebuilt = WindowStore({})
    rebuilt.rebuild(old_rows.items(), H + 20)
    assert rebuilt.cache["app:A1"].watermark == H + 10


def test_an_item_that_leaves_changed_at_as_it_was_is_still_written() -> None:
    """Past its grace, an item on a receive-time stand-in leaves the window's changed_at alone (it
    must not hold it open): a batch that replaces one such item changes neither changed_at nor the
    item count, and its row must still be written (the store goes by the items touched)."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    past = H + 3600 + 600 + 5
    change(store, "app", lambda st: add(st, "c|reached", H + 10, {"reached_again": False}, H + 100, P, advance=False))
    before = store.cache["app"].windows[H].changed_at
    change(store, "app", lambda st: add(st, "c|reached", H + 10, {"reached_again": True}, past, P, advance=False))
    assert store.cache["app"].windows[H].changed_at == before
    rebuilt = WindowStore({})
    rebuilt.rebuild(rows.items(), past + 1)
    assert rebuilt.cache["app"].windows[H].items == {"c|reached": {"reached_again": True}}


def test_a_replay_of_a_kept_final_window_after_a_rebuild_is_unchanged_not_late() -> None:
    """A later window going final and dropped first must not take `closed_upto` past an older one
    still kept: a rebuild drops every window below it, and a replay of the older one's items (the
    calls pipeline sends a call's contributions again when it replays) would be counted late."""
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows)
    change(store, "app", lambda st: (add(st, "a", H + 10, ["answered", 3, 10], H + 100, P),
                                     add(st, "b", H + 3600 + 10, ["answered", 3, 10], H + 3700, P)))
    t = H + 7200 + 600  # both past end + grace
    change(store, "app", lambda st: add(st, "a2", H + 20, ["busy", None, 0], t - 10, P))  # H changes again
    change(store, "app", lambda st: flush(st, t, P))  # H + 3600 goes final first
    change(store, "app", lambda st: flush(st, t + P.keep_final_s + 30, P))  # H goes final; H + 3600's keep is over
    assert store.cache["app"].windows[H].final
    rebuilt = WindowStore({})
    now = t + P.keep_final_s + 40
    rebuilt.rebuild(list(rows.items()), now)
    result: list[str] = []
    change(rebuilt, "app", lambda st: result.append(add(st, "a", H + 10, ["answered", 3, 10], now + 1, P)))
    assert result == ["unchanged"]
