from __future__ import annotations

from processors.core.windows import WindowPolicy
from processors.window_store import WindowStore

P = WindowPolicy(size_s=3600, grace_s=600, idle_close_s=30, interim_interval_s=5, keep_final_s=100)
H = 1_700_002_800


def test_rows_rebuild_the_same_state_and_dropped_windows_leave_no_rows() -> None:
    rows: dict[bytes, bytes] = {}
    store = WindowStore(rows, P)
    store.add("app:A1", "c1|1", H + 10, ["answered", 3, 10], H + 20)
    store.add("app:A1", "c2|1", H + 20, ["noanswer", None, 0], H + 21)
    store.add("app:A1", "c2|1", H - 20, ["noanswer", None, 0], H + 22)  # revised start: moves window
    store.add("app:A2", "c3|1", H + 30, ["busy", None, 0], H + 23)
    assert sum(1 for k in rows if b"\x1fi\x1f" in k) == 3  # one row per item, the moved one only once
    assert len(rows) == 3  # and nothing else until a flush
    again = WindowStore(dict(rows), P)
    again.rebuild(rows.items(), H + 30)
    for key, st in store.cache.items():
        assert {s: w.items for s, w in again.cache[key].windows.items()} == {s: w.items for s, w in st.windows.items()}
        # rebuilt from the items' current times: never later than the live one (finals never early)
        assert again.cache[key].watermark <= st.watermark
        assert all(w.dirty and w.changed_at == H + 30 for w in again.cache[key].windows.values())
    finals = store.flush("app:A1", H + 3600 + 600)
    assert [(s, w.final) for s, w in finals] == [(H - 3600, True), (H, True)]
    rebuilt = WindowStore({}, P)
    rebuilt.rebuild(rows.items(), H + 4300)
    assert rebuilt.cache["app:A1"].windows[H].final
    store.flush("app:A1", H + 3600 + 600 + 100)  # kept long enough: dropped
    assert not any(k.startswith(b"app:A1\x1fi") or k.startswith(b"app:A1\x1fw") for k in rows)
    assert store.add("app:A1", "late|1", H + 5, ["busy", None, 0], H + 9000) == "late"
    rebuilt = WindowStore({}, P)
    rebuilt.rebuild(rows.items(), H + 9000)
    assert rebuilt.cache["app:A1"].late_dropped == 1 and rebuilt.cache["app:A1"].windows == {}
