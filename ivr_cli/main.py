"""`ivr`: look at what the pipeline produced, and feed it simulated traffic.

Reads the same environment as the ingress and the worker (KAFKA_BOOTSTRAP_SERVERS, TOPIC_PREFIX,
PROCESSOR_ID, ...): with `make run`'s defaults no flag is needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.console import Console
from rich.table import Table

from config import kafka_client
from config.settings import Settings, load_or_exit
from config.topics import CATALOGUE
from ivr_cli import kafka
from ivr_cli.render import KIND_OF, TOPICS, matches, open_alerts, summary, topic_base

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

App = Annotated[str | None, typer.Option("--app", help="only records of this app (GUID)")]
Cli = Annotated[str | None, typer.Option("--cli", help="only records of this caller number")]
Json = Annotated[bool, typer.Option("--json", help="raw JSON, one record a line (for jq)")]
Mask = Annotated[bool, typer.Option("--mask", help="show caller numbers' last 4 digits only")]




def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(coro: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run `coro`; Ctrl-C or SIGTERM ends quietly (130), an unreachable broker with one clear line (1)."""
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the consumer closes
    # aiokafka's connection retries would bury the output; an unreachable broker is reported below
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `ivr tail ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except KafkaConnectionError:
        refusal = _refusal(settings)
        if refusal is not None:  # reached, and refused: the line naming the setting at fault
            err.print(f"error: {refusal}")
        else:
            err.print(f"error: cannot reach Kafka at {settings.kafka_bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS); "
                      "is the stack running (`make run`)?")
        raise typer.Exit(1) from None
    except KafkaError as e:
        err.print(f"error: Kafka: {e}")
        raise typer.Exit(1) from None


def _refusal(settings: Settings) -> str | None:
    """Why the broker refused this client (credentials, certificates), if it did; None when it
    could not be reached at all."""
    logging.getLogger("config.kafka").setLevel(logging.CRITICAL)  # its line is printed by the caller
    try:
        asyncio.run(kafka_client.check_connection(settings, timeout_s=5.0))
    except kafka_client.KafkaSetupError as e:
        return str(e.args[0]) if e.args else str(e)
    except Exception:  # nothing more to say than "cannot reach"
        return None
    return None


def _decode(value: bytes | None) -> Any:
    try:
        return orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return None


def _emit_json(value: bytes | None) -> None:
    sys.stdout.write((value or b"null").decode("utf-8", "replace") + "\n")
    sys.stdout.flush()


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(
        metavar="TOPIC", help=f"one of: {', '.join(TOPICS)} (or their full names, with TOPIC_PREFIX or without)",
        show_default=False)],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", "-b",
                                                 help="start at the oldest record kept, not at the end")] = False,
    app_filter: App = None,
    cli: Cli = None,
    as_json: Json = False,
    mask: Mask = False,
    max_records: Annotated[int | None, typer.Option(help="stop after this many records (after the filters)",
                                                    min=1)] = None,
    idle_exit: Annotated[float | None, typer.Option(help="stop after this many seconds without a record",
                                                    min=0)] = None,
) -> None:
    """Follow a topic and print each record as one line (Ctrl-C stops)."""
    settings = load_or_exit()
    try:
        base = topic_base(topic, settings.topic_prefix)
    except KeyError:
        err.print(f"error: unknown topic {topic!r}; one of: {', '.join(TOPICS)} (or their full names)")
        raise typer.Exit(2) from None
    kind = KIND_OF[base]

    async def go() -> None:
        shown = 0
        async for record in kafka.follow(settings, settings.topic(base), from_beginning, idle_exit):
            value = _decode(record.value)
            if not isinstance(value, dict):
                if app_filter is None and cli is None:
                    out.print(f"(not a JSON object) {record.value!r}")
                continue
            if not matches(value, app_filter, cli):
                continue
            if as_json:
                _emit_json(record.value)
            else:
                out.print(summary(kind, value, mask))
            shown += 1
            if max_records is not None and shown >= max_records:
                return

    _run(go(), settings)


@app.command()
def alerts(
    app_filter: App = None,
    cli: Cli = None,
    as_json: Json = False,
    mask: Mask = False,
    limit: Annotated[int | None, typer.Option(help="show at most this many", min=1)] = None,
) -> None:
    """Open missed-call alerts (no resolution yet): the callers to call back, newest first."""
    settings = load_or_exit()

    async def go() -> list[dict[str, Any]]:
        raised = [_decode(r.value) for r in await kafka.read_to_end(settings, settings.topic(TOPICS["alerts"]))]
        done = [_decode(r.value) for r in await kafka.read_to_end(settings, settings.topic(TOPICS["resolved"]))]
        return open_alerts((a for a in raised if isinstance(a, dict)), (d for d in done if isinstance(d, dict)))

    matching = [a for a in _run(go(), settings) if matches(a, app_filter, cli)]
    pending = matching[:limit]
    for alert in pending:
        if as_json:
            _emit_json(orjson.dumps(alert))
        else:
            out.print(summary("alerts", alert, mask))
    if not as_json:
        shown = f"{len(pending)} shown of " if len(pending) < len(matching) else ""
        err.print(f"{shown}{len(matching)} open alert{'s' if len(matching) != 1 else ''}")


@app.command()
def topics() -> None:
    """Each project topic: partitions, records kept (log end minus start) and the worker group's lag."""
    settings = load_or_exit()
    group = f"{settings.topic_prefix}{settings.processor_id}"
    bases = [s.base for s in CATALOGUE] + [b for b in TOPICS.values() if b not in {s.base for s in CATALOGUE}]

    async def go() -> tuple[list[kafka.TopicStats], list[str]]:
        names = [settings.topic(b) for b in bases] + await kafka.group_topics(settings, group)
        return await kafka.topic_stats(settings, names, group)

    stats, missing = _run(go(), settings)
    table = Table(title=f"{settings.kafka_bootstrap_servers}  worker group {group}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("records", justify="right")
    table.add_column("worker lag", justify="right")
    for s in stats:
        table.add_row(s.topic, str(s.partitions), f"{s.records:,}", "-" if s.lag is None else f"{s.lag:,}")
    out.print(table)
    if missing:
        err.print(f"not created yet: {', '.join(missing)}")


@app.command()
def check(
    truth_file: Annotated[Path, typer.Argument(metavar="TRUTH", help="the file `ivr simulate --truth` wrote",
                                               exists=True, dir_okay=False, readable=True)],
    wait: Annotated[float, typer.Option(help="seconds to wait for calls not right yet (a record or revision on "
                                              "its way)", min=0)] = 30.0,
    show: Annotated[int, typer.Option(help="differences to list at most", min=0)] = 20,
) -> None:
    """The completed-call records against a simulation's ground truth: each call's latest revision
    must say what the simulator decided (outcome, missed reason, answering agent, close reason, each
    attempt's result). Exit 0 when every call is right, 1 otherwise."""
    from bench.truth import Checked, latest
    from bench.truth import check as check_truth

    try:
        truth = orjson.loads(truth_file.read_bytes())
        if not isinstance(truth, list) or not all(isinstance(t, dict) and "uniqueid" in t for t in truth):
            raise ValueError("not a list of calls")
    except ValueError as e:
        err.print(f"error: {truth_file}: not a truth file of `ivr simulate --truth` ({e})")
        raise typer.Exit(2) from None
    settings = load_or_exit()
    topic = settings.topic(TOPICS["calls"])

    async def go() -> Checked:
        # until every call is right (a record missing, or a revision still to come, may be on its
        # way) or the wait is over
        deadline = time.monotonic() + wait
        while True:
            records = latest(r for r in (_decode(x.value) for x in await kafka.read_to_end(settings, topic))
                             if isinstance(r, dict))
            checked = check_truth(truth, records)
            if checked.right == checked.calls or time.monotonic() >= deadline:
                return checked
            await asyncio.sleep(1.0)

    checked = _run(go(), settings)
    if checked.differences and show:
        table = Table(title="records that differ from the truth", title_justify="left")
        for column in ("uniqueid", "field", "truth", "record"):
            table.add_column(column)
        for d in checked.differences[:show]:
            table.add_row(d.uniqueid, d.field, str(d.expected), str(d.got))
        out.print(table)
    if checked.missing and show:
        listed = ", ".join(checked.missing[:show]) + (", ..." if len(checked.missing) > show else "")
        out.print(f"no record for: {listed}")
    out.print(f"{checked.calls} calls in the truth: {checked.right} right, {checked.wrong} different, "
              f"{len(checked.missing)} without a record")
    if checked.missing:
        err.print("(a call without its hang-up closes after CALL_IDLE_TIMEOUT_S of quiet; a call whose webhooks "
                  "were all lost is healed by call-log reconciliation, when PROVIDER_API_KEY is set)")
    raise typer.Exit(0 if checked.right == checked.calls else 1)


def _dev_token(settings: Settings) -> str:
    from deploy.run_local import state_dir

    path = state_dir(settings) / "dev-token"
    return path.read_text().strip() if path.exists() else ""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def simulate(ctx: typer.Context) -> None:
    """Simulated IVR traffic (calls, agents, answers, abandons); `ivr simulate --help` for its options.

    Without --url or --kafka it posts to `make run`'s ingress with its token."""
    from bench.simulator import main as simulator_main

    args = list(ctx.args)
    given = {a.split("=", 1)[0] for a in args}
    if not given & {"--url", "--kafka", "-h", "--help"}:
        settings = load_or_exit()
        args += ["--url", f"http://127.0.0.1:{settings.ingress_port}/webhooks/ivr"]
        if "--token" not in given:
            token = settings.webhook_tokens[0] if settings.webhook_tokens else _dev_token(settings)
            if not token:  # every webhook would be refused (401)
                err.print("error: no webhook token: set WEBHOOK_TOKENS, pass --token, or start the stack with "
                          "`make run` (it makes one)")
                raise typer.Exit(2)
            args += ["--token", token]
    try:
        code = simulator_main(args, prog="ivr simulate")
    except KeyboardInterrupt:
        err.print("\ninterrupted")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _guard(fn: Callable[[], object]) -> Callable[[], None]:
    def wrapped() -> None:
        try:
            fn()
        except KeyboardInterrupt:  # between commands' own handling (e.g. while importing)
            raise SystemExit(130) from None

    return wrapped


run = _guard(app)

if __name__ == "__main__":
    run()
