"""The project's launcher for the ingress: `python -m ingress [--host H] [--port P]`.

Plain `uvicorn ingress.app:app` works (the contract's entry point), but uvicorn leaves some HTTP
edges open whatever its options: a connection that never sends a request, or sends only blank
lines, is held forever (the keep-alive timer starts only after a first response, and any byte
received cancels it), and with httptools there is no limit on the size of request headers. This
launcher runs uvicorn with h11 and a protocol that closes those connections:

* header timeout: a request's complete headers must arrive within HEADER_TIMEOUT_S of the
  connection opening or of the previous response; otherwise `408` and the connection is closed;
* header size: over MAX_HEADER_BYTES, h11 stops buffering and the client gets `431`;
* idle keep-alive: closed KEEP_ALIVE_S after the last response (uvicorn's own timer);
* a stall is not idleness: both timers, fired late (the process was stopped, a VM paused, the loop
  starved of CPU), start over once instead of closing, so that bytes that arrived meanwhile are
  read first (see `_fired_late`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.logs import ingress_log_config
from ingress.app import MAX_HEADER_BYTES
from ingress.stall import late

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
STALL_LOG_EVERY_S = 10.0  # one line per stall, not one per connection

log = logging.getLogger("uvicorn.error")
_stall_logged_at = float("-inf")
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and 431 for oversized headers."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    _armed_for: object = None
    _protocol_error: h11.RemoteProtocolError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        next_event = self.conn.next_event

        def remembering_next_event() -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
            try:
                return next_event()
            except h11.RemoteProtocolError as e:  # uvicorn answers every one with 400: keep the hint
                self._protocol_error = e
                raise

        self.conn.next_event = remembering_next_event  # type: ignore[method-assign]
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _fired_late(self, timer: asyncio.TimerHandle | None) -> bool:
        """Whether `timer`, firing now, is late: the loop was stalled past its time (SIGSTOP, a VM
        pause, CPU starvation). Bytes a client sent meanwhile wait unread in the socket: on waking,
        uvloop runs due timers before it polls the sockets, and asyncio's poll, interrupted by the
        stop (EINTR), returns no events, so its timers too run before the reads. Closing then loses
        the request and the kernel answers the unread bytes with a reset. So a late timer starts over
        once, with its whole period: time the process did not run is not time the client was idle."""
        if timer is None or not late(self.loop, timer.when()):
            return False
        global _stall_logged_at
        if self.loop.time() - _stall_logged_at > STALL_LOG_EVERY_S:
            _stall_logged_at = self.loop.time()
            log.warning("connection timers fired %.1fs late (the process was stopped, its VM paused or it was "
                        "starved of CPU): they start over once, so that what clients sent meanwhile is read",
                        self.loop.time() - timer.when())
        return True

    def timeout_keep_alive_handler(self) -> None:
        if self._fired_late(self.timeout_keep_alive_task):
            # read whatever arrived; closed if the connection is still idle after a whole keep-alive
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                super().timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._armed_for = self.cycle  # a new request replaces the cycle: its headers arrived in time
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        if self._fired_late(self._header_timer):
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout_now)
            return
        self._header_timeout_now()

    def _header_timeout_now(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.cycle is not self._armed_for:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # the app is still answering the previous request
        log.info("closed a connection that sent no complete request headers within %.0fs", self.header_timeout_s)
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        error, self._protocol_error = self._protocol_error, None
        if error is None or error.error_status_hint != 431:
            super().send_400_response(msg)
            return
        log.info("refused a request with headers over %d bytes (431)", MAX_HEADER_BYTES)
        body = f"request headers over {MAX_HEADER_BYTES} bytes".encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def config(host: str, port: int, **overrides: object) -> uvicorn.Config:
    """The uvicorn configuration the launcher runs (tests and other launchers reuse it)."""
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "http": GuardedH11Protocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "server_header": False,
        "log_config": ingress_log_config(),  # every line with its time, level and logger
        **overrides,
    }
    return uvicorn.Config("ingress.app:app", **options)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingress", description="Run the webhook ingress.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--no-access-log", action="store_true", help="turn off the per-request access log")
    args = parser.parse_args(argv)
    uvicorn.Server(config(args.host, args.port, access_log=not args.no_access_log)).run()
