"""The worker's liveness and readiness, and the one repair of a consumer that stopped coordinating.

Every few seconds the monitor looks at the consumer group from the broker's side, as an
operator would: the group's members (is this worker's member among them?), its committed
offsets and the log end offsets of the partitions it consumes. `processors.core.liveness`
decides from those facts; `/healthz` answers 503 with the reason when the worker is stalled or
out of its group for longer than `WORKER_STALL_TIMEOUT_S`, and after `WORKER_STALL_EXIT_S` more
the process exits with status 3 so its supervisor starts a fresh one.

The repair: aiokafka's group coordination hands some errors "to the user" and then waits until
the user reads them (`AIOKafkaConsumer.getmany` does, through `check_errors()`). Faust reads
records from aiokafka's fetcher directly and never does, so after one such error (a heartbeat
answered `COORDINATOR_LOAD_IN_PROGRESS` while a restarted broker loads its groups) the
coordination task waits forever, the dead heartbeat task is never replaced, the broker evicts
the member and the worker never rejoins. The monitor reads the error on Faust's behalf (in the
consumer's thread) and restarts the heartbeat; aiokafka then finds out it was evicted and rejoins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from mode import Service
from prometheus_client import Counter, Gauge

from config.kafka_client import aiokafka_kwargs
from config.logs import RateLimit
from config.settings import Settings
from processors.core.liveness import Observation, Verdict, Watchdog
from processors.faust_consumer import kafka_consumer
from processors.worker_metrics import REGISTRY

log = logging.getLogger("processors.liveness")

EXIT_STATUS = 3
SINCE_PROGRESS = Gauge("ivr_worker_seconds_since_progress",
                       "Seconds the worker has held lag without its committed offsets advancing (0: no lag)",
                       registry=REGISTRY)
IN_GROUP = Gauge("ivr_worker_in_group", "1 while the broker lists this worker as a member of its consumer group",
                 registry=REGISTRY)
STORE_ERRORS = Counter("ivr_worker_store_errors_total",
                       "Writes of restored changelog records to the worker's local store that failed (e.g. a full "
                       "disk); Faust keeps the records in memory and tries again", registry=REGISTRY)
GROUP_ERRORS = Counter("ivr_worker_group_errors_total",
                       "Consumer group errors aiokafka waited on and the worker read so coordination goes on",
                       registry=REGISTRY)


async def _read_pending_group_error(consumer: Any) -> str | None:
    """In the consumer's thread: read the error the coordination task waits on, if any, and
    replace a heartbeat task that died of it. Returns the error read (None: nothing waited)."""
    from aiokafka.protocol.group import JoinGroupRequest

    coordinator = consumer._coordinator
    waiting = coordinator._error_consumed_fut
    if waiting is None or waiting.done():
        return None
    error = repr(coordinator._pending_exception)
    try:
        coordinator.check_errors()  # marks the error read and raises it
    except Exception as e:  # whatever it was, it has been read now
        error = repr(e)
    heartbeat = coordinator._heartbeat_task
    if heartbeat is not None and heartbeat.done() and coordinator.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID:
        coordinator._heartbeat_task = None
        coordinator._start_heartbeat_task()
    return error


def _given_by_group(member: Any) -> set[tuple[str, int]]:
    """The partitions the group's last assignment gave `member` (a DescribeGroups member: id,
    client id, host, metadata, assignment), as the broker holds them; empty when not known."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    if member is None or not member[4]:
        return set()
    try:
        given = ConsumerProtocolMemberAssignment.decode(member[4])
    except Exception:  # not the consumer protocol's assignment: what the worker holds is watched alone
        return set()
    return {(topic, partition) for topic, partitions in given.assignment for partition in partitions}


class LivenessMonitor:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.watchdog = Watchdog(settings.worker_stall_timeout_s, settings.worker_stall_exit_s)
        self.interval = max(0.5, min(5.0, settings.worker_stall_timeout_s / 5))
        self.group = app.conf.id
        self._admin: Any = None
        self._probe: Any = None
        self._complained_at = -1e9
        self.store_errors = _store_errors()

    # --- what the web pages answer ----------------------------------------------------------

    def verdict(self) -> Verdict:
        return self.watchdog.verdict(time.monotonic())

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready: in the group (joined, a generation, so its assignment given), not rebalancing and
        tables restored. Holding no partition is not a reason: with more workers than partitions
        one waits, counted in, for a share (a rollout must not wait on it for ever)."""
        consumer = kafka_consumer(self.app)
        coordinator = getattr(consumer, "_coordinator", None)
        joined = coordinator is not None and getattr(coordinator, "generation", -1) > 0
        assigned = len(self._assignment()) > 0
        rebalancing = bool(self.app.rebalancing)
        recovering = bool(self.app.in_recovery)
        ready = joined and not rebalancing and not recovering
        return ready, {"status": "ready" if ready else "not_ready", "joined": joined, "assigned": assigned,
                       "rebalancing": rebalancing, "recovering": recovering}

    # --- observing ----------------------------------------------------------------------------

    async def _clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        # the brokers and their security, as the worker's own; kept before they start: one whose
        # start fails is closed with the others (`_close_clients`)
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**aiokafka_kwargs(self.settings), request_timeout_ms=10_000,
                                              client_id=f"{self.group}-liveness")
            await self._admin.start()
        if self._probe is None:  # end offsets only: no group, never fetches
            self._probe = AIOKafkaConsumer(**aiokafka_kwargs(self.settings), group_id=None, enable_auto_commit=False,
                                           request_timeout_ms=10_000, client_id=f"{self.group}-liveness")
            await self._probe.start()
        return self._admin, self._probe

    def _assignment(self) -> set[Any]:
        try:
            return set(self.app.consumer.assignment())
        except Exception:  # the consumer is not started (yet, or any more)
            return set()

    def _watched(self, topic: str) -> bool:
        # the agents' sources; changelogs are restored (not committed) and the leader topic is empty
        return not topic.endswith("-changelog") and "__assignor-__leader" not in topic

    async def observe(self) -> Observation:
        from aiokafka import TopicPartition

        admin, probe = await self._clients()
        consumer = kafka_consumer(self.app)
        member_id = getattr(getattr(consumer, "_coordinator", None), "member_id", "") or ""
        (described,) = await admin.describe_consumer_groups([self.group])
        _error, _group, state, _ptype, _protocol, members, *_ = described.groups[0]
        mine = next((m for m in members if member_id and m[0] == member_id), None)
        in_group = mine is not None and state not in ("Dead", "Empty")
        # this worker's partitions only, as it holds them and as the broker says the group gave
        # them to it: another worker's lag (one that crashed and keeps its partitions until its
        # session times out, or one wedged) is not this one's stall, and restarting this one
        # would not move it
        assigned = {(tp.topic, tp.partition) for tp in self._assignment()} | _given_by_group(mine)
        watch = sorted(tp for tp in assigned if self._watched(tp[0]))
        committed_raw = await admin.list_consumer_group_offsets(self.group)
        committed = {(tp.topic, tp.partition): meta.offset for tp, meta in committed_raw.items()
                     if (tp.topic, tp.partition) in assigned and meta.offset >= 0}
        ends_raw = await probe.end_offsets([TopicPartition(t, p) for t, p in watch]) if watch else {}
        ends = {(tp.topic, tp.partition): int(end) for tp, end in ends_raw.items()}
        recovery = getattr(self.app.tables, "recovery", None)
        remaining = recovery.active_remaining_total() if recovery is not None and self.app.in_recovery else None
        return Observation(time.monotonic(), in_group, committed, ends, remaining, self.store_errors.take())

    async def _repair(self) -> None:
        consumer = kafka_consumer(self.app)
        if consumer is None:
            return
        error = await self.app.consumer._thread.call_thread(_read_pending_group_error, consumer)
        if error is not None:
            GROUP_ERRORS.inc()
            log.warning("consumer group error left unread by Faust: %s; read it and restarted the heartbeat "
                        "so the consumer rejoins its group", error)

    async def _close_clients(self) -> None:
        for client, name in ((self._admin, "_admin"), (self._probe, "_probe")):
            if client is not None:
                setattr(self, name, None)
                with contextlib.suppress(Exception):  # a client of a broker that went away
                    await client.close() if name == "_admin" else await client.stop()

    async def step(self) -> Verdict:
        """One round: repair, observe (if the broker answers), judge, publish, maybe exit."""
        try:
            await asyncio.wait_for(self._repair(), timeout=10)
        except Exception as e:  # the consumer may be starting, stopping or wedged
            log.debug("liveness repair skipped: %r", e)
        started = time.monotonic()
        try:
            self.watchdog.observe(await asyncio.wait_for(self.observe(), timeout=15))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            from aiokafka.errors import KafkaError

            if isinstance(e, KafkaError | OSError | TimeoutError):  # the broker did not answer: the clocks stop
                self.watchdog.unreachable(started)
            now = time.monotonic()
            if now - self._complained_at > 60:
                self._complained_at = now
                log.warning("liveness: cannot see the consumer group from the broker (%r); retrying", e)
            await self._close_clients()
        verdict = self.verdict()
        SINCE_PROGRESS.set(verdict.since_progress_s)
        if verdict.in_group is not None:
            IN_GROUP.set(1 if verdict.in_group else 0)
        if verdict.exit:
            log.critical("worker %s for %.0f s (WORKER_STALL_TIMEOUT_S=%g + WORKER_STALL_EXIT_S=%g), lag %d: "
                         "exiting with status %d so the supervisor restarts it", verdict.reason,
                         max(verdict.since_progress_s, verdict.out_of_group_s), self.settings.worker_stall_timeout_s,
                         self.settings.worker_stall_exit_s, verdict.lag, EXIT_STATUS)
            logging.shutdown()
            os._exit(EXIT_STATUS)  # a stalled Faust may not finish a graceful stop; nothing is committed anyway
        return verdict


class StoreErrors(logging.Filter):
    """Faust's restore logs a failed write to the local store (`Error in recovery IO error: No space
    left on device ...`) and goes on, once per changelog record it reads (170 lines a second on a
    full disk): counted here for the liveness verdict and the metric; the logger's rate limit comes
    after this filter. Faust logs its recovery loop's other errors the same way: only RocksDB's
    I/O errors count."""

    PREFIX = "Error in recovery IO error"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.PREFIX):
            self.count += 1
            STORE_ERRORS.inc()
        return True

    def take(self) -> int:
        """The errors since the last call."""
        count, self.count = self.count, 0
        return count


RECOVERY_LOGGER = "faust.tables.recovery"


def _store_errors() -> StoreErrors:
    """The one filter on Faust's restore logger, added (before its rate limit) on first use."""
    logger = logging.getLogger(RECOVERY_LOGGER)
    found = next((f for f in logger.filters if isinstance(f, StoreErrors)), None)
    if found is None:
        found = StoreErrors()
        logger.filters.insert(0, found)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        # its error lines only: the logger's other lines ("Worker ready" after each rebalance) all count
        logger.addFilter(RateLimit(only="Error in recovery"))
    return found


class _Watch(Service):
    """Runs the monitor from the moment the app starts: Faust starts `app.task`s and extra
    services only after the first assignment and table restore, which a stuck worker never gets."""

    def __init__(self, monitor: LivenessMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.monitor.interval)
            if not self.should_stop:
                await self.monitor.step()


def install(app: Any, settings: Settings) -> LivenessMonitor:
    """Start the monitor with the app (a child service); returns it for the web pages."""
    monitor = LivenessMonitor(app, settings)
    app.add_dependency(_Watch(monitor))
    return monitor
