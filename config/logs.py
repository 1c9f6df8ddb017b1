"""Logging filters shared by the ingress and the worker.

* Tokens never reach a log: uvicorn's access log prints the query string as sent. Every
  configured token's value is scrubbed in any encoding, and any `token=` parameter is masked
  whatever its value; caller numbers (`cli=`) keep only their last digits unless configured
  otherwise (LOG_CALLER_NUMBERS=full).
* aiokafka logs the same connection error thousands of times a second while a broker is down;
  identical lines are let through at most once per interval, with a count of those held back.
* While a worker starts, aiokafka logs retries of things that are expected then as ERRORs (the
  group's coordinator not known yet, changelog topics not created yet): see StartupNoise.
* The ingress's launcher writes every line in one format, the worker's with the logger's name:
  see ingress_log_config.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from config.redact import Scrubber, mask_callers, redact_token_params


class RedactSecrets(logging.Filter):
    """`flatten`: the message is formatted and cleaned whole (any argument, whatever its type: a
    handler's filter for every logger of a process); without it, string arguments are cleaned one
    by one and stay arguments (uvicorn's access formatter reads them by position)."""

    def __init__(self, tokens: Iterable[str] = (), mask_callers: bool = True, flatten: bool = False) -> None:
        super().__init__()
        self.scrubber = Scrubber(tokens)
        self.mask_callers = mask_callers
        self.flatten = flatten

    def _clean(self, text: str) -> str:
        text = redact_token_params(self.scrubber.text(text))
        return mask_callers(text) if self.mask_callers else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.flatten and record.args:
            # arguments that do not fit the format are left as they are: logging reports that itself.
            # `()`, not None: Faust's formatter makes None an argument again (`(None,)`)
            with contextlib.suppress(Exception):
                record.msg, record.args = record.getMessage(), ()
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        if isinstance(record.exc_info, tuple) and record.exc_info[1] is not None and not record.exc_text:
            # an exception's text (a URL with its query, a value echoed back) is formatted by the
            # handler, after the filters: format it here, cleaned; handlers use `exc_text` as given
            record.exc_text = self._clean(_EXCEPTIONS.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


_EXCEPTIONS = logging.Formatter()  # formats a traceback as every standard handler would


def _client_gone(exc: BaseException | None) -> bool:
    """An error that only says the client closed its connection before the response was written."""
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or type(exc).__name__ == "ClientDisconnect":
        return True
    # uvloop: "unable to perform operation on <TCPTransport closed=True ...>; the handler is closed"
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)


class QuietDisconnects(logging.Filter):
    """A client closing its connection early (e.g. mid-pipeline) is one INFO line, not an ERROR traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno >= logging.ERROR and _client_gone(record.exc_info[1]):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "client closed the connection before the response was sent (%s)", (
                type(record.exc_info[1]).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


class RateLimit(logging.Filter):
    """`only`: limit the lines that start with it, let every other line through."""

    def __init__(self, interval_s: float = 10.0, only: str | None = None) -> None:
        super().__init__()
        self.interval = interval_s
        self.only = only
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if self.only is not None and not key.startswith(self.only):
            return True
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
    its changelog topics; dozens of lines on a first start) -> dropped; the WARNING `Marking the
    coordinator dead` (the same coordinator still loading) -> INFO. After the start-up period all
    are WARNINGs: then they mean something."""

    DURING_START = {"Group Coordinator Request failed": logging.INFO, "Topic %s not found in cluster metadata": None,
                    "Marking the coordinator dead": logging.INFO}

    def __init__(self, startup_s: float = 120.0) -> None:
        super().__init__()
        self.until = time.monotonic() + startup_s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
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


REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "ingress", "ingress.writer")


def redact_handlers(tokens: Iterable[str] = (), caller_numbers: str = "masked") -> None:
    """Every record any logger of the process writes through the root's handlers is cleaned (the
    worker: Faust's, aiokafka's and the pipelines' loggers alike). Call it once the handlers exist
    (Faust's worker replaces them as it starts); called again, it replaces its filters."""
    unredact_handlers()
    for handler in logging.root.handlers:
        handler.addFilter(RedactSecrets(tokens, mask_callers=caller_numbers != "full", flatten=True))


def unredact_handlers() -> None:
    """The filters of `redact_handlers` removed (an app stopping in a process that goes on: tests)."""
    for handler in logging.root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)


def install_filters(tokens: Iterable[str] = (), caller_numbers: str = "masked") -> None:
    """Idempotent; called again with the settings, it replaces the redaction filters."""
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RedactSecrets)]:
            logger.removeFilter(old)
        logger.addFilter(RedactSecrets(tokens, mask_callers=caller_numbers != "full"))
    _add("uvicorn.error", QuietDisconnects())
    # before the rate limit, which keys on the message
    for name in ("aiokafka.consumer.group_coordinator", "aiokafka.cluster"):
        _add(name, StartupNoise())
    for name in ("aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.producer.sender",
                 "aiokafka.consumer.group_coordinator", "aiokafka.consumer.fetcher"):
        _add(name, RateLimit())


# The worker's (Faust's) line, `[2026-11-30 06:36:08,788] [5854] [WARNING] ...`, naming the logger
LINE_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def ingress_log_config() -> dict[str, Any]:
    """uvicorn's `log_config` for `python -m ingress`: one handler, to stderr, on the root logger, and
    one format for every line: uvicorn's error and access logs (which uvicorn otherwise formats
    without a time, the access log to stdout), the app's `ingress.*` loggers and aiokafka's (which
    otherwise reach only Python's last-resort handler: bare text, WARNING and above). uvicorn's
    loggers propagate to it rather than keep handlers of their own. The filters of install_filters
    stay on their loggers, which run them before a record propagates; `--no-access-log` still works
    (uvicorn then empties `uvicorn.access` and stops its propagation)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,  # the app's loggers exist already (and carry the filters)
        "formatters": {"line": {"format": LINE_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            "uvicorn": {"handlers": [], "level": "INFO", "propagate": True},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "INFO", "propagate": True},
        },
    }
