"""Every record the project writes to a topic, one dataclass each (frozen, but for the caller facts
and the alert: see `MissedCall`).

Field docs double as the JSON Schema descriptions. `v` is the schema version (contract: 1).
Times are `Timestamp` strings (ISO 8601 UTC, milliseconds); durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.types import Count, PositiveCount, Rate, Seconds, Timestamp

EventType = Literal["IN", "TA", "TC", "TE", "H"]
ProviderResult = Literal["answered", "busy", "congestion", "noanswer"]
AttemptResult = Literal["answered", "busy", "congestion", "noanswer", "caller_hangup"]
MissedReason = Literal["abandoned_in_ivr", "no_answer"]
EventOrigin = Literal["webhook", "call_log"]
ResolutionHow = Literal["revised_answered", "called_again_answered", "call_log_answered"]
# how an alerted call itself turned out answered: by a late webhook, or by the provider's call log
SelfResolution = Literal["revised_answered", "call_log_answered"]


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field with a description for the JSON Schema."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True, slots=True)
class IvrEvent:
    """ivr.events: one accepted webhook event, normalised; keyed by uniqueid."""

    id: str = doc("deterministic event id: the same delivery twice gets the same id")
    app: str = doc("the provider's app GUID")
    event: EventType = doc("event type")
    uniqueid: str = doc("the provider's call id")
    cli: str = doc("caller number as received; empty when withheld")
    attemptid: str | None = doc("transfer attempt id (TA, TC, TE)")
    to: str | None = doc("agent number (TA, TC, TE)")
    result: ProviderResult | None = doc("TE result, lower-cased")
    duration: Seconds | None = doc("provider's duration field in seconds (TE: the attempt, H: the call)")
    time: Timestamp = doc("event time: the provider's `time`, or the receive time when it has none")
    time_source: Literal["provider", "received"] = doc("where `time` came from")
    received_at: Timestamp = doc("when the ingress received the webhook")
    raw: dict[str, Any] = doc("the fields exactly as the provider sent them (token removed)")
    origin: EventOrigin = doc("webhook: delivered to the ingress; call_log: derived from the provider's call log")
    agent_name: str | None = doc("agent's name from the call log (TA, TE); null from webhooks", default=None)
    group: str | None = doc("agent group from the call log (TA, TE); null from webhooks", default=None)
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str = doc("the offending field, or `body`")
    reason: str = doc("why it was refused")


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """ivr.events.invalid: an authenticated webhook refused as invalid, kept as received."""

    app: str = doc("the `app` field if one could be read, else empty")
    received_at: Timestamp = doc("when the ingress received it")
    method: str = doc("HTTP method")
    content_type: str = doc("Content-Type header as sent")
    query: str = doc("query string as sent, with the token removed")
    body: str = doc("request body as sent (UTF-8; undecodable bytes replaced, see body_base64)")
    body_base64: str | None = doc("the body base64-encoded when it was not valid UTF-8")
    errors: list[FieldError] = doc("every reason it was refused")
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class Attempt:
    attemptid: str = doc("provider's transfer attempt id")
    to: str = doc("agent number")
    started_at: Timestamp | None = doc("TA time; null when the TA never arrived")
    connected_at: Timestamp | None = doc("TC time; null when not connected or when no TC arrived")
    ended_at: Timestamp | None = doc("TE time, the hang-up for attempts still open at the end")
    result: AttemptResult = doc("provider result, or caller_hangup when the caller hung up while it rang")
    ring_s: Seconds | None = doc("start to connect (answered) or start to end (not answered)")
    agent_name: str | None = doc("the agent's name from the provider's call log; null when unknown", default=None)
    group: str | None = doc("the agent group from the provider's call log; null when unknown", default=None)


@dataclass(frozen=True, slots=True)
class CompletedCall:
    """ivr.calls.completed: one closed call; keyed by uniqueid; a later revision replaces it."""

    uniqueid: str = doc("the provider's call id")
    app: str = doc("the provider's app GUID")
    cli: str = doc("caller number; empty when withheld")
    started_at: Timestamp = doc("IN time (earliest event time when IN never arrived)")
    ended_at: Timestamp = doc("hang-up time (last event time when closed by timeout)")
    duration: Seconds = doc("ended_at - started_at")
    outcome: Literal["answered", "missed"] = doc("answered when any attempt was connected")
    missed_reason: MissedReason | None = doc("why a missed call was missed; null when answered")
    answered_by: str | None = doc("agent number of the first connected attempt")
    wait_s: Seconds = doc("IN to answer, or IN to hang-up when missed")
    talk_s: Seconds = doc("answer to hang-up; 0 when missed")
    attempts: list[Attempt] = doc("transfer attempts in order")
    close_reason: Literal["hangup", "timeout"] = doc("hangup, or timeout when no H arrived in time")
    wait_is_lower_bound: bool = doc(
        "true when the real wait may be longer than wait_s: no IN seen, a missed call closed by timeout"
        " (its hang-up unknown), or an answered call without TC (answer placed at the attempt's start)"
    )
    revision: PositiveCount = doc("1, 2, ... when late events change a closed call")
    duplicates: Count = doc("repeated deliveries absorbed")
    closed_at: Timestamp = doc("when the processor closed the call (wall clock)")
    v: Literal[1] = doc("schema version", default=1)


# The caller facts (and the alert, which shares their base) are not frozen: one is made, sent and
# read back for every completed call, and a frozen dataclass's __init__ (object.__setattr__ per
# field) costs four times a plain one's (3.3 against 0.8 us for 13 fields). Nothing changes one
# once made.
@dataclass(slots=True)
class MissedCall:
    """What a missed call's alert and its internal fact share."""

    uniqueid: str = doc("the provider's call id")
    app: str = doc("the provider's app GUID")
    cli: str = doc("the caller's number (the one to call back); empty when withheld")
    at: Timestamp = doc("when the call was lost (its end)")
    missed_reason: MissedReason = doc("abandoned_in_ivr or no_answer")
    wait_s: Seconds = doc("how long the caller waited")
    attempts: Count = doc("transfer attempts made")
    agents_tried: list[str] = doc("distinct agents tried, in order")


@dataclass(slots=True)
class MissedCallAlert(MissedCall):
    """ivr.alerts.missed: a missed call worth a call-back; keyed by cli."""

    wait_is_lower_bound: bool = doc("true when the caller may have waited longer (e.g. closed by timeout)")
    repeat_count: PositiveCount = doc(
        "missed calls from this cli to this app known when the alert was raised, within 24 h of this one"
        " (before or after), this one included; 1 for withheld numbers"
    )
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class ResolvedAlert:
    """ivr.alerts.resolved: a missed-call alert that no longer needs a call-back; keyed by cli."""

    uniqueid: str = doc("the alerted call's id")
    app: str = doc("the provider's app GUID")
    cli: str = doc("the alerted number; empty when withheld")
    resolved_at: Timestamp = doc("when the processor resolved the alert (wall clock)")
    how: ResolutionHow = doc(
        "revised_answered: a later revision shows the alerted call answered; called_again_answered: the"
        " caller called the app again within 24 h and was answered; call_log_answered: the provider's call"
        " log shows the alerted call answered"
    )
    by_uniqueid: str | None = doc("the later answered call (called_again_answered), else null")
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class AgentWindowMetrics:
    """ivr.metrics.agents: one agent, one tumbling window of attempts by start time."""

    app: str = doc("the provider's app GUID")
    agent: str = doc("agent number")
    window_start: Timestamp = doc("window start (inclusive)")
    window_end: Timestamp = doc("window end (exclusive)")
    offered: Count = doc("attempts that started in the window")
    answered: Count = doc("attempts connected")
    noanswer: Count = doc("attempts the agent did not answer")
    busy: Count = doc("attempts refused busy")
    congestion: Count = doc("attempts lost to network congestion")
    caller_hangup: Count = doc("attempts ended because the caller hung up while it rang")
    answer_rate: Rate | None = doc("answered / offered; null when offered is 0")
    answer_rate_excl_caller_hangup: Rate | None = doc("answered / (offered - caller_hangup); null on 0")
    avg_ring_s: Seconds | None = doc("mean start-to-connect of answered attempts; null when none")
    talk_s: Seconds = doc("total talk time of answered attempts")
    final: bool = doc("false on interim updates; exactly one true per agent and window")
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class AppWindowMetrics:
    """ivr.metrics.apps: one app, one tumbling window of calls by start time."""

    app: str = doc("the provider's app GUID")
    window_start: Timestamp = doc("window start (inclusive)")
    window_end: Timestamp = doc("window end (exclusive)")
    offered: Count = doc("calls that started in the window")
    answered: Count = doc("calls answered")
    missed: Count = doc("calls missed (any reason)")
    abandoned_in_ivr: Count = doc("missed with no transfer attempted")
    short_abandons: Count = doc("missed calls that waited less than SHORT_ABANDON_S")
    avg_speed_of_answer_s: Seconds | None = doc("mean IN-to-answer of answered calls; null when none")
    service_level: Rate | None = doc(
        "answered within service_level_s / (offered - short_abandons); null when the divisor is 0"
    )
    service_level_s: Seconds = doc("the service level threshold in seconds")
    missed_reached_again: Count = doc(
        "missed calls (short abandons excluded) whose caller called the app again within 24 h and was"
        " answered (their alert resolved called_again_answered) before this window's final")
    reached_again_share: Rate | None = doc(
        "missed_reached_again / (missed - short_abandons); null when the divisor is 0")
    final: bool = doc("false on interim updates; exactly one true per app and window")
    v: Literal[1] = doc("schema version", default=1)


@dataclass(slots=True)
class MissedCallFact(MissedCall):
    """ivr.internal.missed-by-caller, kind `missed`: a missed call decided by the calls agent,
    re-keyed by app:cli for repeat counting and alerting. Sent once when the call is first decided
    (a short abandon: `alert: false`) and once more if a revision makes it alert-worthy."""

    alert: bool = doc("false for short abandons: counted as missed, but no alert")
    received_at: Timestamp | None = doc(
        "ingress receipt of the webhook that closed the call (its H for a call closed by a timer); "
        "null when none (idle timeout): the alert's latency is measured from it", default=None)
    kind: Literal["missed"] = doc("fact kind (records written before kinds existed are `missed`)", default="missed")
    started_at: Timestamp | None = doc("when the call began (null on records written before it existed)",
                                       default=None)
    wait_is_lower_bound: bool = doc("true when the caller may have waited longer", default=False)
    v: Literal[1] = doc("schema version", default=1)


@dataclass(slots=True)
class AnsweredCallFact:
    """ivr.internal.missed-by-caller, kind `answered`: an answered call (closed or revised), re-keyed
    by app:cli so that the caller's open alerts can be resolved. Sent for every answered revision of
    a call with a caller number, and for an alerted call (withheld or not) under the key it was
    alerted with."""

    uniqueid: str = doc("the provider's call id")
    app: str = doc("the provider's app GUID")
    cli: str = doc("caller number (for an alerted call: the number it was alerted with)")
    started_at: Timestamp = doc("when the call began")
    how: SelfResolution = doc("the resolution of this call's own alert, if it had one")
    start_known: bool = doc("its IN was seen: without it the call may have started earlier than"
                            " started_at, too uncertain to say it called again after a missed call")
    kind: Literal["answered"] = doc("fact kind", default="answered")
    v: Literal[1] = doc("schema version", default=1)


# what the calls agent tells the callers agent, on one repartition topic
CallerFact = MissedCallFact | AnsweredCallFact


@dataclass(frozen=True, slots=True)
class MetricContribution:
    """ivr.internal.attempts-by-agent / calls-by-app: what one attempt or call adds to a window."""

    app: str = doc("the provider's app GUID")
    key: str = doc("app:agent (attempts) or app (calls): the aggregation key, also the record key")
    item: str = doc("uniqueid|attemptid, uniqueid, or uniqueid|reached: a revision replaces what the item gave"
                    " before")
    at: Timestamp = doc("event time that picks the window (attempt start, or call start)")
    values: dict[str, Any] = doc(
        "the figures the window sums, named, with their version `v` (1): attempts {result, ring_s, talk_s}, "
        "calls {outcome, missed_reason, wait_s, short_abandon, within_service_level}, a missed call's caller "
        "reached again {reached_again} (item uniqueid|reached); a positional list "
        "(before version 1) is still read")
    at_received: bool = doc(
        "true when `at` is estimated from our receive time (the provider's time of the start is unknown, "
        "e.g. a call closed without its IN): counted in its window, but it does not advance the key's "
        "event-time watermark", default=False)
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class UnprocessableEvent:
    """ivr.events.unprocessable: a record the worker could not process, kept as received with the
    error; keyed as the record was. The rest of its batch was processed normally."""

    app: str = doc("the record's `app` (a bundle's: its first item's) if one could be read, else empty")
    topic: str = doc("the topic the record was read from")
    partition: Count = doc("its partition")
    offset: Count = doc("its offset")
    key: str = doc("its key as received (UTF-8; undecodable bytes replaced)")
    value: str = doc("its value as received (UTF-8; undecodable bytes replaced, see value_base64)")
    value_base64: str | None = doc("the value base64-encoded when it was not valid UTF-8")
    error_type: str = doc("the exception's type")
    error: str = doc("the exception's message (at most 1000 characters)")
    pipeline: str = doc("the worker pipeline that failed: calls, callers, agent_metrics or app_metrics")
    at: Timestamp = doc("when the worker gave up on it (wall clock)")
    v: Literal[1] = doc("schema version", default=1)


@dataclass(frozen=True, slots=True)
class ReconcileCursor:
    """ivr.internal.reconcile-cursor: how far the call log of one app has been read; keyed by app."""

    app: str = doc("the provider's app GUID")
    cursor: Timestamp = doc("calls that started before this (less the look-back) need not be read again")
    updated_at: Timestamp = doc("when the reconciler wrote it")
    v: Literal[1] = doc("schema version", default=1)
