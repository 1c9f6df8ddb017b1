"""`JsonStore`: one JSON value per key, and the states it keeps between batches."""

from __future__ import annotations

from typing import Any

import orjson

from processors.json_store import JsonStore


class Rows(dict[bytes, bytes]):
    """A table: counts reads."""

    reads = 0

    def get(self, key: bytes, default: Any = None) -> Any:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)


def store(keep_bytes: int, reuse: Any = lambda state: state) -> tuple[JsonStore[dict[str, Any]], Rows]:
    rows = Rows()
    return JsonStore(rows, dict, dict, keep_bytes=keep_bytes, reuse=reuse), rows


def test_without_keep_every_load_reads_and_decodes_the_table() -> None:
    s, rows = store(0)
    state = {"n": 1}
    s.save("a", state)
    loaded = s.load("a")
    assert loaded == state and loaded is not state and rows.reads == 1
    assert rows[b"a"] == orjson.dumps(state)


def test_a_kept_state_is_handed_over_once_then_read_from_the_table() -> None:
    s, rows = store(100)
    state = {"n": 1}
    s.save("a", state)
    assert rows[b"a"] == b'{"n":1}'  # written all the same
    taken = s.load("a")
    assert taken is state and rows.reads == 0
    assert taken is not None
    taken["n"] = 99  # the step may change it in place; not saved
    again = s.load("a")  # a failed record's key is put back: as saved, from the table
    assert again == {"n": 1} and rows.reads == 1


def test_the_states_saved_last_are_kept_and_the_oldest_forgotten_when_too_many_bytes() -> None:
    s, rows = store(36)  # 9 bytes a state, as stored: {"k":"a"}
    for key in ("a", "b", "c", "d"):
        s.save(key, {"k": key})
    s.save("b", {"k": "B"})  # saved again: now the newest
    assert list(s.kept) == ["a", "c", "d", "b"] and s.kept_bytes == 36
    s.save("e", {"k": "e"})  # 9 bytes too many: the oldest forgotten, down to half
    assert list(s.kept) == ["b", "e"] and s.kept_bytes == 18
    assert s.load("a") == {"k": "a"} and s.load("d") == {"k": "d"} and rows.reads == 2
    assert s.load("b") == {"k": "B"} and s.load("e") == {"k": "e"} and rows.reads == 2
    assert s.kept == {} and s.kept_bytes == 0
    s.save("big", {"k": "x" * 40})  # larger than all it may keep: not kept
    assert s.kept == {} and s.kept_bytes == 0


def test_a_key_forgotten_is_not_kept() -> None:
    s, rows = store(100)
    s.save("a", {"n": 1})
    s.save("a", None)
    assert s.load("a") is None and b"a" not in rows and rows.reads == 1 and s.kept_bytes == 0


def test_reading_every_state_forgets_the_kept_ones() -> None:
    """After a rebalance (`items`), another worker may have written the keys since they were kept."""
    s, rows = store(100)
    s.save("a", {"n": 1})
    rows[b"a"] = b'{"n":2}'  # written meanwhile, elsewhere
    assert list(s.items()) == [("a", {"n": 2})]
    assert s.load("a") == {"n": 2}


def test_a_kept_state_is_made_as_a_decoded_one_would_be() -> None:
    def as_loaded(state: dict[str, Any]) -> dict[str, Any]:
        state.pop("measured", None)  # what the table does not store
        return state

    s, _ = store(100, as_loaded)
    s.save("a", {"n": 1, "measured": 7})
    assert s.load("a") == {"n": 1}
