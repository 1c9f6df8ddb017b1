"""Faust's Kafka consumer, with the two offset rules the worker needs to lose nothing in a rebalance.

Faust commits, per partition, the end of the first run of consecutive acknowledged offsets.

* A gap at the head of that run must hold the commit back. Faust's check lets exactly one
  missing offset through: committed (the next offset to read) C, acknowledged C+1, C+2, ...
  commits past C although C was never handled (its test is `min(acked) - C > 1`). In a
  rolling restart, an event fetched just before a rebalance and handled by no one after it
  was committed over that way (see README "Reliability"): the new owner never saw it.
* Only an event handled under the current assignment may be acknowledged. A stream
  skips an event fetched before a rebalance (its generation is over; the partition is read
  again from the committed offset) but still acknowledges it, which lets that offset, and
  the unhandled ones it then joins, be committed.

Both rules only ever hold a commit back; an event whose acknowledgement is refused is read
again (handled twice at worst, which the pipelines tolerate).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.drivers.aiokafka import Consumer, Transport
from mode.utils.futures import notify

log = logging.getLogger("processors.consumer")


class SafeConsumer(Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[Any, int] = {}  # partition -> the offset a commit was last held back at (logged once)

    def ack(self, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != self.app.consumer_generation_id and not message.acked:
            # skipped by the stream (fetched under an earlier assignment): read again, never committed
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
            log.info("not acknowledging %s[%s]@%s: fetched before the rebalance (generation %s, now %s)",
                     message.topic, message.partition, message.offset, generation, self.app.consumer_generation_id)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if acked and committed is not None and min(acked) > committed and not self._gap[tp].overlaps_point(committed):
            if self._held.get(tp) != committed:
                self._held[tp] = committed
                log.warning("commit of %s held at %d: that offset is not acknowledged yet (the next acknowledged "
                            "is %d)", tp, committed, min(acked))
            return None  # the next offset to read has not been handled
        offset: int | None = super()._new_offset(tp)
        return offset


class SafeTransport(Transport):
    """The aiokafka transport, its consumer a `SafeConsumer` (the producer is Faust's)."""

    Consumer = SafeConsumer
