"""Call-level predicates shared by the alerting (lifecycle) and the app metrics, written once.

Both read a completed-call record's own fields, so a call counted as a short abandon in the
metrics is exactly a call that raised no alert for being short.
"""

from __future__ import annotations


def is_short_abandon(outcome: str, close_reason: str, wait_s: float, short_abandon_s: float) -> bool:
    """A missed call whose caller was seen hanging up less than `short_abandon_s` after it began.

    Needs a seen hang-up: a call closed by timeout has an unknown real wait (what we know is a lower
    bound), so it is never a short abandon."""
    return outcome == "missed" and close_reason == "hangup" and wait_s < short_abandon_s


def answered_within(outcome: str, wait_s: float, service_level_s: float) -> bool:
    """An answered call answered within the service-level threshold."""
    return outcome == "answered" and wait_s <= service_level_s


def alert_worthy(outcome: str, close_reason: str, wait_s: float, short_abandon_s: float) -> bool:
    """A missed call worth a call-back: every missed call but a short abandon."""
    return outcome == "missed" and not is_short_abandon(outcome, close_reason, wait_s, short_abandon_s)
