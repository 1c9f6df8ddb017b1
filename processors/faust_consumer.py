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
again (handled twice at worst, which the pipelines tolerate). A commit held back for
`rewind_after_s` while the stream went on past the missing offset means the event never reached
the stream: the partition is then read again from the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.transport.drivers.aiokafka import Consumer, Transport
from mode.utils.futures import notify

log = logging.getLogger("processors.consumer")


class SafeConsumer(Consumer):
    #: a commit held back this long at the same offset: that partition is read again from there
    rewind_after_s = 10.0
    #: re-reads of the same offset before it is taken as absent
    rewinds_max = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # partition -> (offset held at, since or last re-read, re-reads)
        self._held: dict[Any, tuple[int, float, int]] = {}
        self._rewinds: set[asyncio.Task[None]] = set()

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
            now = time.monotonic()
            held = self._held.get(tp)
            if held is None or held[0] != committed:
                self._held[tp] = (committed, now, 0)
                log.warning("commit of %s held at %d: that offset is not acknowledged yet (the next acknowledged "
                            "is %d)", tp, committed, min(acked))
            elif now - held[1] >= self.rewind_after_s:
                if held[2] >= self.rewinds_max:
                    # read again and again and still not there: the offsets do not exist (e.g. deleted
                    # by retention before they were read); hold no longer
                    log.error("commit of %s held at %d after %d re-reads: offsets %d-%d taken as absent", tp,
                              committed, held[2], committed, min(acked) - 1)
                    self._gap[tp].addi(committed, min(acked))
                    self._held.pop(tp, None)
                    return super()._new_offset(tp)  # type: ignore[no-any-return]
                # the stream went on past an event it never got (lost between fetch and stream in a
                # rebalance): read the partition again from the offset held (handled twice at worst)
                self._held[tp] = (committed, now, held[2] + 1)
                log.warning("commit of %s still held at %d: reading the partition again from there", tp, committed)
                task = self.loop.create_task(self._rewind(tp, committed))
                self._rewinds.add(task)
                task.add_done_callback(self._rewinds.discard)
            return None  # the next offset to read has not been handled
        self._held.pop(tp, None)
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    def describe(self) -> str:
        """The consumer's state for a diagnostic dump (see `faust_app.log_tasks`)."""
        return (f"flow: consumer {self.flow_active}, app {self.app.flow_control.is_active()}; generation "
                f"{self.app.consumer_generation_id}; read offsets {dict(self._read_offset)}; paused "
                f"{sorted(self._paused_partitions)}; assigned {sorted(self.assignment())}")

    async def _rewind(self, tp: Any, offset: int) -> None:
        try:
            if tp in self.assignment() and self._committed_offset[tp] == offset:
                await self.seek(tp, offset)
        except Exception as e:  # moved away or stopping meanwhile: its next owner reads from the commit
            log.warning("could not read %s again from %d: %r", tp, offset, e)


class SafeTransport(Transport):
    """The aiokafka transport, its consumer a `SafeConsumer` (the producer is Faust's)."""

    Consumer = SafeConsumer
