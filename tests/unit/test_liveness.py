"""The liveness decision: observed facts and time in, a verdict out (no Kafka)."""

from __future__ import annotations

from processors.core.liveness import Observation, Watchdog

P0, P1 = ("ivr.events", 0), ("ivr.events", 1)


def dog() -> Watchdog:
    return Watchdog(stall_timeout_s=60, exit_after_s=120)


def obs(at: float, committed: dict[tuple[str, int], int], ends: dict[tuple[str, int], int],
        in_group: bool | None = True, remaining: int | None = None) -> Observation:
    return Observation(at, in_group, committed, ends, remaining)


def test_no_lag_is_healthy_however_long_nothing_moves() -> None:
    w = dog()
    for t in range(0, 1000, 5):
        w.observe(obs(t, {P0: 10}, {P0: 10}))
    v = w.verdict(1000)
    assert v.healthy and v.reason == "ok" and v.since_progress_s == 0 and not v.exit


def test_lag_with_advancing_commits_is_progress() -> None:
    w = dog()
    for i, t in enumerate(range(0, 600, 5)):
        w.observe(obs(t, {P0: i * 10}, {P0: i * 10 + 500}))
    v = w.verdict(600)
    assert v.healthy and v.lag == 500 and v.since_progress_s <= 5


def test_lag_without_progress_is_a_stall_then_an_exit() -> None:
    w = dog()
    w.observe(obs(0, {P0: 10}, {P0: 10}))  # caught up
    for t in range(5, 400, 5):
        w.observe(obs(t, {P0: 10}, {P0: 50}))  # events arrive, the committed offset stays
    assert w.verdict(60).healthy  # not yet: exactly the timeout since the partition was last fine
    stalled = w.verdict(61)
    assert not stalled.healthy and stalled.reason == "stalled" and stalled.lag == 40 and not stalled.exit
    assert stalled.since_progress_s == 61
    assert not w.verdict(180).exit and w.verdict(181).exit  # 60 s timeout + 120 s grace


def test_one_stuck_partition_is_enough_while_another_moves() -> None:
    w = dog()
    for i, t in enumerate(range(0, 200, 5)):
        w.observe(obs(t, {P0: 5, P1: i}, {P0: 9, P1: i + 3}))
    v = w.verdict(200)
    assert v.reason == "stalled" and v.since_progress_s == 200


def test_progress_after_a_stall_heals() -> None:
    w = dog()
    w.observe(obs(0, {P0: 0}, {P0: 100}))
    w.observe(obs(100, {P0: 0}, {P0: 100}))
    assert not w.verdict(100).healthy
    w.observe(obs(105, {P0: 1}, {P0: 100}))
    assert w.verdict(105).healthy


def test_a_partition_first_seen_with_lag_gets_the_full_timeout() -> None:
    w = dog()
    w.observe(obs(1000, {}, {P0: 100}))  # nothing committed yet: all of it is lag
    assert w.verdict(1059).healthy and not w.verdict(1061).healthy


def test_facts_missing_for_a_while_do_not_stop_the_clock() -> None:
    """A frozen process or an unreachable broker: no observation, but time passes."""
    w = dog()
    w.observe(obs(0, {P0: 0}, {P0: 0}))
    w.observe(obs(5, {P0: 0}, {P0: 30}))
    w.observe(obs(70, {P0: 0}, {P0: 30}, in_group=None))  # first facts after a long gap
    assert w.verdict(70).reason == "stalled"


def test_out_of_group_too_long_fails_even_without_lag() -> None:
    w = dog()
    w.observe(obs(0, {P0: 3}, {P0: 3}))
    w.observe(obs(10, {P0: 3}, {P0: 3}, in_group=False))
    assert w.verdict(70).healthy  # a rebalance: a minute out is allowed
    v = w.verdict(71)
    assert v.reason == "out_of_group" and v.in_group is False and v.out_of_group_s == 61
    assert w.verdict(191).exit
    w.observe(obs(72, {P0: 3}, {P0: 3}, in_group=True))  # rejoined
    assert w.verdict(300).healthy


def test_unknown_membership_keeps_the_last_known() -> None:
    w = dog()
    w.observe(obs(0, {}, {}, in_group=False))
    w.observe(obs(30, {}, {}, in_group=None))
    assert w.verdict(61).reason == "out_of_group"


def test_table_restore_progress_counts() -> None:
    w = dog()
    for i, t in enumerate(range(0, 300, 5)):
        w.observe(obs(t, {P0: 0}, {P0: 100}, remaining=10_000 - i))
    assert w.verdict(300).healthy
    w.observe(obs(300, {P0: 0}, {P0: 100}, remaining=10_000))  # restore stuck
    assert not w.verdict(370).healthy


def test_a_restore_whose_writes_fail_is_no_progress() -> None:
    """A full disk: Faust's restore reads on (fewer records left) while every write to the local
    store fails, and /healthz stayed 200 with the lag growing."""
    w = dog()
    for i, t in enumerate(range(0, 65, 5)):
        w.observe(Observation(t, True, {P0: 0}, {P0: 100}, 10_000 - 100 * i, store_errors=170))
    verdict = w.verdict(65)
    assert not verdict.healthy and verdict.reason == "store_failing", verdict
    w.observe(Observation(70, True, {P0: 0}, {P0: 100}, 8_000))  # space again: writes go through
    assert w.verdict(71).healthy


def test_the_store_error_filter_counts_and_faust_lines_are_rate_limited() -> None:
    import logging

    from processors.liveness import RECOVERY_LOGGER, STORE_ERRORS, _store_errors

    counter = _store_errors()
    assert _store_errors() is counter  # one filter, however often asked
    counter.take()
    before = STORE_ERRORS._value.get()
    logger = logging.getLogger(RECOVERY_LOGGER)
    passed = sum(logger.filter(logging.LogRecord(RECOVERY_LOGGER, logging.WARNING, __file__, 1,
                                                 "Error in recovery IO error: No space left on device", None, None))
                 is not False for _ in range(170))
    assert counter.take() == 170 and counter.take() == 0 and STORE_ERRORS._value.get() == before + 170
    assert passed == 1  # the other 169 held back, counted in the next line let through
    logger.filter(logging.LogRecord(RECOVERY_LOGGER, logging.WARNING, __file__, 1,
                                    "Error in recovery 'NoneType' object is not subscriptable", None, None))
    assert counter.take() == 0  # Faust's recovery loop logs its other errors alike: not the store
    ready = [logging.LogRecord(RECOVERY_LOGGER, logging.INFO, __file__, 1, "[^---Recovery]: Worker ready", None, None)
             for _ in range(3)]
    assert all(logger.filter(r) is not False for r in ready)  # each rebalance's line is logged (tests wait on it)


def test_revoked_partitions_are_forgotten() -> None:
    w = dog()
    w.observe(obs(0, {P0: 0, P1: 0}, {P0: 5, P1: 5}))
    w.observe(obs(100, {P0: 0}, {P0: 0}))  # P1 moved to another worker, P0 has no lag
    assert w.verdict(200).healthy


def test_exit_disabled() -> None:
    w = Watchdog(stall_timeout_s=60, exit_after_s=0)
    w.observe(obs(0, {P0: 0}, {P0: 5}))
    v = w.verdict(10_000)
    assert v.reason == "stalled" and not v.exit
    assert v.as_json()["status"] == "unhealthy"


def test_time_without_a_broker_does_not_count() -> None:
    w = dog()
    w.observe(obs(0, {P0: 10}, {P0: 10}))
    w.observe(obs(5, {P0: 10}, {P0: 30}))  # lag, then the broker goes away
    w.unreachable(8)
    w.unreachable(13)  # still away: the first moment counts
    v = w.verdict(500)
    assert v.healthy and not v.broker_reachable and v.as_json()["broker_reachable"] is False
    w.observe(obs(508, {P0: 10}, {P0: 30}))  # back after 500 s: the 8 s before count, none during
    assert w.verdict(508).healthy and w.verdict(508).since_progress_s == 8
    assert w.verdict(560).healthy and w.verdict(561).reason == "stalled"  # 8 + 53 s > 60 s


def test_out_of_group_time_without_a_broker_does_not_count() -> None:
    w = dog()
    w.observe(obs(0, {}, {}, in_group=False))
    w.unreachable(30)
    w.observe(obs(1000, {}, {}, in_group=False))
    assert w.verdict(1020).healthy and w.verdict(1031).reason == "out_of_group"
