"""Which record shape each topic carries."""

from __future__ import annotations

from config import topics
from schemas.records import (
    AgentWindowMetrics,
    AnsweredCallFact,
    AppWindowMetrics,
    CompletedCall,
    InvalidEvent,
    IvrEvent,
    MetricContribution,
    MissedCallAlert,
    MissedCallFact,
    ReconcileCursor,
    ResolvedAlert,
    UnprocessableEvent,
)

TOPIC_RECORDS: dict[str, type | tuple[type, ...]] = {
    topics.EVENTS: IvrEvent,
    topics.EVENTS_INVALID: InvalidEvent,
    topics.EVENTS_UNPROCESSABLE: UnprocessableEvent,
    topics.CALLS_COMPLETED: CompletedCall,
    topics.ALERTS_MISSED: MissedCallAlert,
    topics.ALERTS_RESOLVED: ResolvedAlert,
    topics.METRICS_AGENTS: AgentWindowMetrics,
    topics.METRICS_APPS: AppWindowMetrics,
    # several kinds of caller facts share one repartition topic (one keyed stream per caller)
    topics.MISSED_BY_CALLER: (MissedCallFact, AnsweredCallFact),
    topics.ATTEMPTS_BY_AGENT: MetricContribution,
    topics.CALLS_BY_APP: MetricContribution,
    topics.RECONCILE_CURSOR: ReconcileCursor,
}

# Repartition topics carry bundles: one record per partition and input batch, a JSON array of
# the records above whose keys hash to that partition (a record per item would cost the
# consuming agent one Faust event each).
BUNDLED_TOPICS = frozenset({topics.ATTEMPTS_BY_AGENT, topics.CALLS_BY_APP, topics.MISSED_BY_CALLER})
# ... and, of those, the ones that also carry single records: 0.1 wrote the caller facts one by
# one, and a 0.2 worker still does while UPGRADE_FROM=0.1 (README "Upgrading").
SINGLE_TOO_TOPICS = frozenset({topics.MISSED_BY_CALLER})
