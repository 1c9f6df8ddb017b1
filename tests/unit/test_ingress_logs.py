"""The access-log filters: no token in any encoding, caller numbers masked unless configured."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from config.logs import RedactSecrets, install_filters
from config.redact import mask_callers, mask_number
from config.settings import SettingsError, load

TOKEN = "unit-token-0123456789"


def _access_line(path: str, flt: logging.Filter) -> str:
    # uvicorn's access log: '%s - "%s %s HTTP/%s" %d' with the path and raw query string as sent
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", 202), None)
    assert flt.filter(record)
    return record.getMessage()


@pytest.mark.parametrize("path", [
    f"/webhooks/ivr?%74oken={TOKEN}&event=IN",
    f"/webhooks/ivr?%74%6F%6B%65%6E={TOKEN}",
    f"/webhooks/ivr?event=IN&token={TOKEN}",
    f"/webhooks/ivr?TOKEN={TOKEN.upper()}",
    "/webhooks/ivr?token=" + "".join(f"%{ord(c):02X}" for c in TOKEN),
    f"/webhooks/ivr?note={TOKEN}",  # by value, whatever the field
    "/webhooks/ivr?token=not-a-configured-one",  # by name, whatever the value
])
def test_access_log_never_shows_a_token(path: str) -> None:
    line = _access_line(path, RedactSecrets([TOKEN]))
    assert TOKEN not in line and TOKEN.upper() not in line and "%75%6E" not in line.upper()
    assert "not-a-configured-one" not in line and "***" in line


def test_caller_numbers_masked_by_default_full_when_configured() -> None:
    path = "/webhooks/ivr?event=IN&cli=9716700271&c%6Ci=%2B919716700271&to=9800000001"
    masked = _access_line(path, RedactSecrets([TOKEN]))
    assert "9716700271" not in masked and "cli=***0271" in masked and "c%6Ci=***0271" in masked
    assert "to=9800000001" in masked  # agent numbers are staff numbers: kept
    assert "cli=9716700271" in _access_line(path, RedactSecrets([TOKEN], mask_callers=False))


def test_mask_number_keeps_only_the_last_digits() -> None:
    assert mask_number("9716700271") == "***0271"
    assert mask_number("12345") == "***45"
    assert mask_number("123") == "***"
    assert mask_number("") == ""


def test_install_filters_replaces_rather_than_stacks() -> None:
    install_filters([TOKEN], "full")
    install_filters([TOKEN], "masked")
    filters = [f for f in logging.getLogger("uvicorn.access").filters if isinstance(f, RedactSecrets)]
    assert len(filters) == 1 and filters[0].mask_callers


def test_log_caller_numbers_setting() -> None:
    assert load({}).log_caller_numbers == "masked"
    assert load({"LOG_CALLER_NUMBERS": "full"}).log_caller_numbers == "full"
    with pytest.raises(SettingsError, match="LOG_CALLER_NUMBERS"):
        load({"LOG_CALLER_NUMBERS": "some"})


def test_client_gone_mid_response_is_one_info_line_not_an_error_traceback() -> None:
    from config.logs import QuietDisconnects

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (),
                                 (type(exc), exc, None))

    gone = record(RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed"))
    assert QuietDisconnects().filter(gone)
    assert gone.levelno == logging.INFO and gone.exc_info is None and "client closed" in gone.getMessage()
    real = record(RuntimeError("a real bug"))
    assert QuietDisconnects().filter(real) and real.levelno == logging.ERROR and real.exc_info is not None


def test_exception_text_is_cleaned_too() -> None:
    """A traceback is formatted by the handler, after the filters: the filter formats it, cleaned."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("ingress.test_exception_text")
    logger.addHandler(handler)
    logger.addFilter(RedactSecrets([TOKEN]))
    try:
        try:
            raise ValueError(f"bad request /webhooks/ivr?token={TOKEN}&cli=9716700271")
        except ValueError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ValueError: bad request" in text and "request failed" in text  # the traceback is there
    assert TOKEN not in text and "9716700271" not in text and "cli=***0271" in text


def test_worker_lines_mask_callers_in_fields_and_any_argument() -> None:
    """The worker's handlers clean the whole message: a caller number inside an event's JSON, a
    dict's repr or an exception passed as an argument, a secret anywhere."""
    flt = RedactSecrets([TOKEN], flatten=True)
    event = {"event": "IN", "cli": "9716700271", "uniqueid": "1.1"}
    record = logging.LogRecord("processors.runtime", logging.WARNING, __file__, 1, "%s: %r / %s / %d",
                               ("calls", event, ValueError(f'bad {{"cli": "+919716700271", "k": "{TOKEN}"}}'), 7),
                               None)
    assert flt.filter(record)
    line = record.getMessage()
    assert "9716700271" not in line and TOKEN not in line, line
    assert "'cli': '***0271'" in line and '"cli": "***0271"' in line and "/ 7" in line and "1.1" in line
    assert flt.filter(record) and record.getMessage() == line  # a second filter masks nothing more
    for text in ("CallerFact(app='x', cli='9716700271')", '{"CLI": "9716700271"}', "cli=***9716700271"):
        assert "9716700271" not in mask_callers(text), text  # a dataclass's repr; any case; not a mask
    kept = RedactSecrets([TOKEN], mask_callers=False, flatten=True)
    full = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (str(event),), None)
    assert kept.filter(full) and "9716700271" in full.getMessage()


def test_redact_handlers_covers_every_logger_through_the_root_handlers() -> None:
    import io

    from mode.utils.logging import ExtensionFormatter

    from config.logs import redact_handlers

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExtensionFormatter(stream, fmt="%(message)s"))  # Faust's worker's (it reads `args`)
    logging.root.addHandler(handler)
    try:
        redact_handlers([TOKEN])
        redact_handlers([TOKEN])  # replaces, does not stack
        assert sum(isinstance(f, RedactSecrets) for f in handler.filters) == 1
        logging.getLogger("faust.some.child").warning("value %s", {"cli": "9716700271", "key": TOKEN})
        logging.getLogger("faust.some.child").warning("Creating topic %r", "t-100%")
    finally:
        logging.root.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert "9716700271" not in lines[0] and TOKEN not in lines[0] and "***0271" in lines[0], lines
    assert lines[1:] == ["Creating topic 't-100%'"], lines  # no "--- Logging error ---"


LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[\d+\] \[(INFO|WARNING|ERROR|CRITICAL)\] ([\w.]+): ")


def _run_ingress(tmp_path: Path, *options: str) -> tuple[str, str]:
    """`python -m ingress` without a broker: a query with the token and a caller number, then SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    from deploy.local_kafka import free_port
    from tests.helpers import wait_http

    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "WEBHOOK_TOKENS": TOKEN}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "ingress", "--port", str(port), *options], env=env,
                                stdout=o, stderr=e)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz?token={TOKEN}&cli=9716700271").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return out.read_text(), err.read_text()


def test_the_launcher_logs_every_line_with_time_level_and_logger_to_stderr(tmp_path: Path) -> None:
    out, err = _run_ingress(tmp_path)
    assert out == ""
    lines = err.splitlines()
    assert lines and all(LINE.match(line) for line in lines), err
    loggers = {m.group(2) for line in lines if (m := LINE.match(line))}
    # uvicorn's own, the app's (the broker is away: the writer says so), aiokafka's
    assert {"uvicorn.error", "uvicorn.access", "ingress.writer", "aiokafka"} <= loggers, err
    [access] = [line for line in lines if "/healthz?" in line]
    assert "[INFO] uvicorn.access: 127.0.0.1:" in access
    assert access.endswith('"GET /healthz?token=***&cli=***0271 HTTP/1.1" 200'), access
    assert TOKEN not in err and "9716700271" not in err


def test_the_launcher_without_access_log_still_logs_the_rest(tmp_path: Path) -> None:
    out, err = _run_ingress(tmp_path, "--no-access-log")
    assert out == "" and "/healthz" not in err and "uvicorn.access" not in err
    assert "[INFO] uvicorn.error: Application startup complete." in err
    assert all(LINE.match(line) for line in err.splitlines()), err
