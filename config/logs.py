"""Logging filters shared by the ingress and the worker.

* Tokens never reach a log: uvicorn's access log prints the query string.
* aiokafka logs the same connection error thousands of times a second while a broker is down;
  identical lines are let through at most once per interval, with a count of those held back.
* While a worker starts, aiokafka logs retries of things that are expected then as ERRORs (the
  group's coordinator not known yet, changelog topics not created yet): see StartupNoise.
"""

from __future__ import annotations

import logging
import re
import time

_TOKEN = re.compile(r"(?i)(token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _TOKEN.sub(r"\1***", record.msg)
        return True


class RateLimit(logging.Filter):
    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        last, held = self._last.get(key, (0.0, 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval:.0f}s)"
        self._last[key] = (now, 0)
        return True


class StartupNoise(logging.Filter):
    """aiokafka's ERRORs that are expected while a worker starts, and retried by aiokafka:
    `Group Coordinator Request failed: GroupCoordinatorNotAvailableError` (the group's coordinator
    is still loading) -> INFO; `Topic ... not found in cluster metadata` (the worker is creating
    its changelog topics; dozens of lines on a first start) -> dropped. After the start-up
    period both are WARNINGs: then they mean something."""

    DURING_START = {"Group Coordinator Request failed": logging.INFO, "Topic %s not found in cluster metadata": None}

    def __init__(self, startup_s: float = 120.0) -> None:
        super().__init__()
        self.until = time.monotonic() + startup_s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True
        msg = str(record.msg)
        prefix = next((p for p in self.DURING_START if msg.startswith(p)), None)
        if prefix is None:
            return True
        starting = time.monotonic() < self.until
        level = self.DURING_START[prefix] if starting else logging.WARNING
        if level is None:
            return False
        record.levelno, record.levelname = level, logging.getLevelName(level)
        if starting:
            record.msg = f"{msg} (normal while the worker starts; retrying)"
        return True


def _add(name: str, flt: logging.Filter) -> None:
    logger = logging.getLogger(name)
    if not any(type(f) is type(flt) for f in logger.filters):
        logger.addFilter(flt)


# Library loggers on the per-event path: pinned, so a DEBUG default anywhere cannot make every
# event build log records (profiling found ~4 records created per event, all discarded).
QUIET_LEVELS = {"aiokafka": logging.WARNING, "faust": logging.INFO, "mode": logging.INFO}


def install_filters() -> None:
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for name in ("uvicorn.access", "uvicorn.error", "ingress", "ingress.writer"):
        _add(name, RedactTokens())
    # before the rate limit, which keys on the message
    for name in ("aiokafka.consumer.group_coordinator", "aiokafka.cluster"):
        _add(name, StartupNoise())
    for name in ("aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.producer.sender",
                 "aiokafka.consumer.group_coordinator", "aiokafka.consumer.fetcher"):
        _add(name, RateLimit())
