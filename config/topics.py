"""The topic catalogue: names from the contract, and how each topic is created."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NoReturn

from config.kafka_client import aiokafka_kwargs, check_connection
from config.settings import Settings

EVENTS = "ivr.events"
EVENTS_INVALID = "ivr.events.invalid"
# records the worker could not process, with the error (its dead-letter topic)
EVENTS_UNPROCESSABLE = "ivr.events.unprocessable"
CALLS_COMPLETED = "ivr.calls.completed"
ALERTS_MISSED = "ivr.alerts.missed"
ALERTS_RESOLVED = "ivr.alerts.resolved"
METRICS_AGENTS = "ivr.metrics.agents"
METRICS_APPS = "ivr.metrics.apps"
# internal: closed calls' caller facts (missed calls, answered calls), re-keyed by app:cli for
# repeat counting, alerting and resolving alerts
MISSED_BY_CALLER = "ivr.internal.missed-by-caller"
# internal: closed calls' attempts and call facts, re-keyed by app:agent / app for the metrics
ATTEMPTS_BY_AGENT = "ivr.internal.attempts-by-agent"
CALLS_BY_APP = "ivr.internal.calls-by-app"
# internal: wake-up hints for calls with a deadline, co-partitioned with ivr.events (keyed by uniqueid)
CALL_TICKS = "ivr.internal.call-ticks"
# internal: wake-up hints for metric windows due a record, co-partitioned with their sources
AGENT_WINDOW_TICKS = "ivr.internal.agent-window-ticks"
APP_WINDOW_TICKS = "ivr.internal.app-window-ticks"
CALLER_TICKS = "ivr.internal.caller-ticks"
# internal: the call-log reconciler's cursor per app (compacted: the latest per app is all it reads)
RECONCILE_CURSOR = "ivr.internal.reconcile-cursor"
DAY_MS = 24 * 3600 * 1000

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    base: str
    config: tuple[tuple[str, str], ...] = ()
    prefixed: bool = True  # False: `base` is the full name (the worker's changelog topics)
    partitions: int | None = None  # None: TOPIC_PARTITIONS
    # read by the worker, keyed like its tables: exactly TOPIC_PARTITIONS partitions, or records
    # meet the wrong table partition (bundles and ticks are placed by TOPIC_PARTITIONS)
    co_partitioned: bool = False

    def name(self, settings: Settings) -> str:
        return settings.topic(self.base) if self.prefixed else self.base


# Every topic the project writes. The latest revision of a call, an agent window or an app
# window replaces the earlier ones, so those topics are compacted.
CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(EVENTS, (("retention.ms", str(WEEK_MS)),), co_partitioned=True),
    TopicSpec(EVENTS_INVALID, (("retention.ms", str(4 * WEEK_MS)),)),
    TopicSpec(EVENTS_UNPROCESSABLE, (("retention.ms", str(4 * WEEK_MS)),)),
    TopicSpec(CALLS_COMPLETED, (("cleanup.policy", "compact"),)),
    TopicSpec(ALERTS_MISSED, (("retention.ms", str(WEEK_MS)),)),
    TopicSpec(ALERTS_RESOLVED, (("retention.ms", str(WEEK_MS)),)),
    TopicSpec(METRICS_AGENTS, (("cleanup.policy", "compact"),)),
    TopicSpec(METRICS_APPS, (("cleanup.policy", "compact"),)),
    TopicSpec(MISSED_BY_CALLER, (("retention.ms", str(WEEK_MS)),), co_partitioned=True),
    TopicSpec(ATTEMPTS_BY_AGENT, (("retention.ms", str(WEEK_MS)),), co_partitioned=True),
    TopicSpec(CALLS_BY_APP, (("retention.ms", str(WEEK_MS)),), co_partitioned=True),
    TopicSpec(CALL_TICKS, (("retention.ms", str(DAY_MS)),), co_partitioned=True),
    TopicSpec(AGENT_WINDOW_TICKS, (("retention.ms", str(DAY_MS)),), co_partitioned=True),
    TopicSpec(APP_WINDOW_TICKS, (("retention.ms", str(DAY_MS)),), co_partitioned=True),
    TopicSpec(CALLER_TICKS, (("retention.ms", str(DAY_MS)),), co_partitioned=True),
    TopicSpec(RECONCILE_CURSOR, (("cleanup.policy", "compact"),), partitions=1),  # a few records: one partition
)


def min_insync(settings: Settings) -> int:
    """The topics' `min.insync.replicas`: two of three replicas, so that one broker may be lost."""
    return 2 if settings.topic_replication >= 3 else 1


async def ensure_topics(settings: Settings, bases: tuple[str, ...] | None = None,
                        extra: tuple[TopicSpec, ...] = (), timeout_s: float = 120.0) -> None:
    """Create the project's topics (and `extra`) if they do not exist yet (idempotent), then wait
    until the cluster's metadata shows each of them with all its partitions led: a client that
    starts after this never sees a topic half-created (no partitions yet, or no leader)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    wanted = [s for s in CATALOGUE if bases is None or s.base in bases] + list(extra)
    min_isr = str(min_insync(settings))
    await check_connection(settings)  # refused credentials or certificates: KafkaSetupError, not a retry
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=s.name(settings),
                num_partitions=s.partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs={"min.insync.replicas": min_isr, **dict(s.config)},
            )
            for s in wanted
            if s.name(settings) not in existing
        ]
        for topic in new:  # one request each: one refused as existing does not hide the others
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created it first
                await admin.create_topics([topic])
        kept = [s.name(settings) for s in wanted if s.co_partitioned and s.name(settings) in existing]
        await _check_partitions(admin, kept, settings.topic_partitions)
        await _until_led(admin, {s.name(settings): s.partitions or settings.topic_partitions for s in wanted},
                         timeout_s, exact={s.name(settings) for s in wanted if s.co_partitioned})
    finally:
        await admin.close()


class PartitionMismatch(Exception):
    """A topic the worker reads exists with another partition count than TOPIC_PARTITIONS."""


async def _check_partitions(admin: Any, names: list[str], partitions: int) -> None:
    """Existing topics that must have exactly TOPIC_PARTITIONS partitions (created elsewhere, or
    since altered): a mismatch is said at start, naming the topic and the setting, rather than
    waited out (fewer) or let through (more: records would meet the wrong table partition)."""
    if not names:
        return
    wrong = {t["topic"]: len(t.get("partitions") or []) for t in await admin.describe_topics(names)
             if t.get("error_code", 0) == 0 and len(t.get("partitions") or []) != partitions}
    if wrong:
        _mismatch(partitions, wrong)


def _mismatch(wanted: int, found: dict[str, int]) -> NoReturn:
    listed = ", ".join(f"{topic} has {n}" for topic, n in sorted(found.items()))
    raise PartitionMismatch(f"topics the worker reads must have TOPIC_PARTITIONS={wanted} partitions; found: "
                            f"{listed}. Set TOPIC_PARTITIONS to match (on the ingress and every worker), or "
                            f"recreate the topics (which deletes the records they hold)")


async def _until_led(admin: Any, want: dict[str, int], timeout_s: float, exact: AbstractSet[str] = frozenset()) -> None:
    """Until every topic in `want` has at least its partitions, each with a leader. One of
    `exact` found with more is refused (another process created it meanwhile, with another
    TOPIC_PARTITIONS: the check of the existing topics did not see it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    pending = dict(want)
    while True:
        for t in await admin.describe_topics(list(pending)):
            parts = t.get("partitions") or []
            if t.get("error_code", 0) == 0 and len(parts) >= pending.get(t["topic"], 1) and \
                    all(p.get("leader", -1) >= 0 for p in parts):
                if t["topic"] in exact and len(parts) != pending[t["topic"]]:
                    _mismatch(pending[t["topic"]], {t["topic"]: len(parts)})
                pending.pop(t["topic"], None)
        if not pending:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics not ready after {timeout_s:.0f}s: {sorted(pending)}")
        await asyncio.sleep(0.2)
