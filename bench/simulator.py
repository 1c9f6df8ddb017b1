"""Simulated IVR traffic with its ground truth.

    ivr simulate                         # 1000 calls over the last hour, posted to `make run`'s ingress
    ivr simulate --calls 5000 --span-s 86400 --rate 500      # a day of a small call centre
    ivr simulate --calls 2000 --rate 300 --url http://127.0.0.1:8080/webhooks/ivr --token T --truth truth.json
    ivr simulate --calls 100000 --kafka 127.0.0.1:9092 --topic-prefix bench.   # straight to ivr.events
    ivr simulate --calls 300 --lose 0.1 --outage 900:120 --truth t.json   # a lossy half hour

Calls: an agent pool tried round robin; each attempt is answered, noanswer, busy or congestion
with given probabilities (or the caller hangs up while it rings); talk times; abandonment in the
IVR. Delivery: optional duplicates, reordering within a call and missing hang-ups. The ground
truth (what each call's completed record must say) comes from the generator's own decisions.
Loss (`Loss`, `lose`): webhooks the provider sent that never arrive, at random (single events,
hang-ups, whole calls) and all of them during an outage; the provider's call log
(`bench.fake_provider`) still has every call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

APP = "4e11fe2082b044b4a3b55718c79c29d5"
IST = timezone(timedelta(hours=5, minutes=30))


@dataclass(frozen=True)
class Profile:
    agents: int = 5
    p_ivr_abandon: float = 0.1
    p_answer: float = 0.6
    p_busy: float = 0.1
    p_congestion: float = 0.05  # the rest of an attempt is noanswer
    p_caller_hangup: float = 0.05  # the caller leaves while an attempt rings
    max_attempts: int = 3
    ring_s: float = 15.0  # ring timeout before noanswer
    mean_talk_s: float = 120.0
    p_duplicate: float = 0.0
    p_reorder: float = 0.0
    p_missing_hangup: float = 0.0


@dataclass
class TruthAttempt:
    attemptid: str
    agent: str
    start: float
    result: str
    ring_s: float
    du: int | None = None  # the TE's duration (the call log's `du`); None: no TE (caller hung up)
    agent_name: str | None = None  # as the call log names the agent
    group: str | None = None


@dataclass
class Truth:
    uniqueid: str
    cli: str
    start: float
    end: float
    outcome: str
    missed_reason: str | None
    answered_by: str | None
    close_reason: str
    attempts: list[TruthAttempt] = field(default_factory=list)
    duration: int = 0  # the H's duration (the call log's `duration`)


def _fmt_time(t: float, rng: random.Random) -> str:
    """The provider's formats, mixed: ISO with offset, naive Asia/Kolkata, epoch s or ms."""
    kind = rng.random()
    dt = datetime.fromtimestamp(t, IST)
    if kind < 0.5:
        return dt.isoformat(timespec="seconds")
    if kind < 0.8:
        return dt.strftime("%Y-%m-%d %H:%M:%S")
    if kind < 0.9:
        return str(int(t))
    return str(int(t) * 1000)


def agent_label(agent: str) -> tuple[str, str]:
    """The agent's name and group, as the provider's call log gives them."""
    n = int(agent[-3:])
    return f"Agent {n}", "sales" if n % 2 == 0 else "support"


def generate(calls: int, start: float, span_s: float, profile: Profile, seed: int = 1,
             app: str = APP, prefix: str = "", first_seq: int = 0) -> tuple[list[dict[str, str]], list[Truth]]:
    """Events in delivery order (each the provider's fields) and the ground truth per call."""
    timed, truth = generate_timed(calls, start, span_s, profile, seed, app, prefix, first_seq)
    return [e for _, e in timed], truth


def generate_timed(calls: int, start: float, span_s: float, profile: Profile, seed: int = 1,
                   app: str = APP, prefix: str = "", first_seq: int = 0,
                   ) -> tuple[list[tuple[float, dict[str, str]]], list[Truth]]:
    """Events in delivery order with the time each is sent, and the ground truth per call. Call
    ids are `<start second>.<first_seq + n>` (the provider's form)."""
    rng = random.Random(seed)
    agents = [f"9000000{i:03d}" for i in range(profile.agents)]
    next_agent = 0
    timed: list[tuple[float, int, dict[str, str]]] = []  # (delivery time, seq, fields)
    truth: list[Truth] = []
    seq = 0
    for n in range(calls):
        t0 = float(int(start + rng.random() * span_s))
        uid = f"{prefix}{int(t0)}.{first_seq + n}"
        cli = f"98{rng.randrange(10**8):08d}"
        events: list[tuple[float, dict[str, str]]] = [
            (t0, {"app": app, "event": "IN", "uniqueid": uid, "cli": cli, "time": _fmt_time(t0, rng)})]
        t = t0 + rng.uniform(3, 20)  # IVR menu
        tr = Truth(uid, cli, t0, t0, "missed", None, None, "hangup")
        if rng.random() < profile.p_ivr_abandon:
            tr.missed_reason = "abandoned_in_ivr"
        else:
            answer_at = None
            for k in range(1, profile.max_attempts + 1):
                agent = agents[next_agent % len(agents)]
                next_agent += 1
                aid = f"{uid}.{k}"
                events.append((t, {"app": app, "event": "TA", "uniqueid": uid, "cli": cli, "attemptid": aid,
                                   "to": agent, "time": _fmt_time(t, rng)}))
                roll = rng.random()
                if rng.random() < profile.p_caller_hangup:
                    ring = rng.uniform(1, profile.ring_s)
                    tr.attempts.append(TruthAttempt(aid, agent, t, "caller_hangup", ring, None, *agent_label(agent)))
                    t += ring
                    break
                if roll < profile.p_answer:
                    ring = round(rng.uniform(2, 10))
                    talk = round(rng.expovariate(1 / profile.mean_talk_s)) + 1
                    events.append((t + ring, {"app": app, "event": "TC", "uniqueid": uid, "cli": cli,
                                              "attemptid": aid, "to": agent, "time": _fmt_time(t + ring, rng)}))
                    events.append((t + ring + talk, {"app": app, "event": "TE", "uniqueid": uid, "cli": cli,
                                                     "attemptid": aid, "to": agent, "result": "answered",
                                                     "duration": str(ring + talk)}))
                    tr.attempts.append(TruthAttempt(aid, agent, t, "answered", ring, int(ring + talk),
                                                    *agent_label(agent)))
                    answer_at = t + ring
                    t += ring + talk
                    break
                result, ring = (("busy", 1.0) if roll < profile.p_answer + profile.p_busy else
                                ("congestion", 0.0) if roll < profile.p_answer + profile.p_busy + profile.p_congestion
                                else ("noanswer", profile.ring_s))
                events.append((t + ring, {"app": app, "event": "TE", "uniqueid": uid, "cli": cli, "attemptid": aid,
                                          "to": agent, "result": result, "duration": str(int(ring))}))
                tr.attempts.append(TruthAttempt(aid, agent, t, result, ring, int(ring), *agent_label(agent)))
                t += ring + 1
            if answer_at is not None:
                tr.outcome, tr.answered_by = "answered", next(a.agent for a in tr.attempts if a.result == "answered")
            else:
                tr.missed_reason = "no_answer"
        t = float(int(t) + 1)
        tr.end = t
        tr.duration = int(t - t0)
        if rng.random() < profile.p_missing_hangup:
            tr.close_reason = "timeout"
            tr.end = max(et for et, _ in events)  # the call ends with the last thing known of it
        else:
            events.append((t, {"app": app, "event": "H", "uniqueid": uid, "cli": cli, "duration": str(int(t - t0))}))
        if rng.random() < profile.p_reorder and len(events) > 1:
            i = rng.randrange(len(events) - 1)  # two neighbours swap their delivery
            (ta, ea), (tb, eb) = events[i], events[i + 1]
            events[i], events[i + 1] = (ta, eb), (tb, ea)
        for et, e in events:
            timed.append((et, seq, e))
            seq += 1
            if rng.random() < profile.p_duplicate:
                timed.append((et + rng.uniform(0, 5), seq, e))  # a retry, a little later
                seq += 1
        truth.append(tr)
    timed.sort(key=lambda x: (x[0], x[1]))
    return [(t, e) for t, _, e in timed], truth


@dataclass(frozen=True)
class Loss:
    """Webhooks lost on their way: each at random, the hang-up, every event of a call, and every
    event sent within the outage interval (epoch seconds, start inclusive)."""

    p_event: float = 0.0
    p_hangup: float = 0.0
    p_call: float = 0.0
    outage: tuple[float, float] | None = None


def lose(timed: list[tuple[float, dict[str, str]]], loss: Loss, seed: int = 1) -> list[dict[str, str]]:
    """The events that arrive (in delivery order)."""
    rng = random.Random(seed)
    lost_calls = {uid for uid in dict.fromkeys(e["uniqueid"] for _, e in timed) if rng.random() < loss.p_call}
    kept = []
    for t, e in timed:
        if e["uniqueid"] in lost_calls or rng.random() < loss.p_event:
            continue
        if e["event"] == "H" and rng.random() < loss.p_hangup:
            continue
        if loss.outage is not None and loss.outage[0] <= t < loss.outage[1]:
            continue
        kept.append(e)
    return kept


def expected_agent_windows(events: Iterable[dict[str, str]], window_s: int,
                           parse_time: Any) -> dict[tuple[str, str, int], dict[str, int]]:
    """Agent counts per window, computed from the *posted events* alone (independent of the processor)."""
    attempts: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["event"] in ("TA", "TC", "TE"):
            a = attempts.setdefault(e["attemptid"], {"app": e["app"], "agent": e["to"]})
            if e["event"] == "TA":
                a["start"] = parse_time(e["time"])
            elif e["event"] == "TC":
                a["connected"] = True
            else:
                a["result"] = e["result"].lower()
    out: dict[tuple[str, str, int], dict[str, int]] = {}
    for a in attempts.values():
        result = a.get("result") or ("answered" if a.get("connected") else "caller_hangup")
        key = (a["app"], a["agent"], int(a["start"] // window_s * window_s))
        counts = out.setdefault(key, {"offered": 0, "answered": 0, "noanswer": 0, "busy": 0, "congestion": 0,
                                      "caller_hangup": 0})
        counts["offered"] += 1
        counts[result] += 1
    return out


class Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.t0, self._last = total, label, 0, time.monotonic(), 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        tty = sys.stderr.isatty()  # redirected to a file: a line every few seconds, not a \r bar
        if now - self._last > (0.2 if tty else 5.0) or self.done >= self.total:
            self._last = now
            width = 30
            filled = int(width * self.done / max(1, self.total))
            rate = self.done / max(1e-9, now - self.t0)
            sys.stderr.write(f"{chr(13) if tty else ''}{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {rate:,.0f}/s")
            if self.done >= self.total or not tty:
                sys.stderr.write("\n")
            sys.stderr.flush()


#: how long a poster rides through an ingress that stopped answering (a restart of `make run`
#: takes about half a minute) before the run stops
NO_ANSWER_S = 120.0


class NoAnswer(Exception):
    """The ingress does not answer (not running, or gone for longer than `NO_ANSWER_S`)."""


#: call ids a seed's runs use (`--calls` past it would reach the next seed's)
SEQ_PER_SEED = 1_000_000


async def post_events(url: str, token: str, events: list[dict[str, str]], rate: float, concurrency: int = 32,
                      progress: bool = True, transport: Any = None) -> dict[int, int]:
    """POST each event (form) at about `rate` per second; returns a count per HTTP status. Retries 503
    and, once the ingress has answered, a connection refused (the ingress restarting) or cut, for
    up to `NO_ANSWER_S`; past that, or if the ingress never answered, raises `NoAnswer` at once.

    A call's events are posted one after the other, in the order given (by the same poster): with
    the posts in flight together, a TA could overtake its call's hang-up by a few milliseconds, and
    with an hour of calls played in a minute that is many seconds of the calls' own time, enough
    for the worker to close the call without it and revise it later. (`--reorder` swaps
    neighbours in the list itself: that reordering is kept.)"""
    import httpx

    statuses: dict[int, int] = {}
    answered = [False]  # the ingress has answered a request (so a refusal now is a restart)
    bar = Progress(len(events), "posting") if progress else None
    queues: list[asyncio.Queue[dict[str, str] | None]] = [asyncio.Queue() for _ in range(concurrency)]
    # an idle connection is dropped here well before the ingress closes it (5 s): a request sent on
    # one as the server closed it failed (ReadError) and stopped the run
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)

    resent = [0]  # requests cut off mid-way and sent again
    failed: list[BaseException] = []  # a poster that gave up: the run stops at once, not at its end

    async def post(client: httpx.AsyncClient, e: dict[str, str]) -> httpx.Response:
        unanswered = time.monotonic()
        while True:
            try:
                r = await client.post(url, data=e, headers={"X-Webhook-Token": token})
                answered[0] = True
                return r
            except httpx.TransportError as error:
                # refused, the server closed a kept-alive connection before answering, or reset it
                # mid-request (an ingress frozen past its keep-alive): sent again while the ingress
                # has answered before, for up to NO_ANSWER_S. A request cut off mid-way may have been
                # taken: then it is delivered twice, as a provider sometimes does (the pipeline
                # absorbs it; the record's `duplicates` counts it), and counted in `resent`
                if not answered[0] or time.monotonic() - unanswered > NO_ANSWER_S:
                    raise NoAnswer(f"no answer from {url} ({type(error).__name__})") from None
                if not isinstance(error, httpx.ConnectError):  # (never sent: refused)
                    resent[0] += 1
                await asyncio.sleep(1.0)

    async def worker(client: httpx.AsyncClient, queue: asyncio.Queue[dict[str, str] | None]) -> None:
        try:
            while (e := await queue.get()) is not None:
                for _ in range(20):
                    r = await post(client, e)
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if bar:
                    bar.step()
        except Exception as error:
            failed.append(error)
            raise

    async with httpx.AsyncClient(limits=limits, timeout=30, transport=transport) as client:
        tasks = [asyncio.create_task(worker(client, q)) for q in queues]
        try:
            t0 = time.monotonic()
            for i, e in enumerate(events):
                if failed:  # its queue would never drain: stop now, with its error
                    break
                if rate > 0:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                call = e.get("uniqueid")
                queues[zlib.crc32(call.encode()) % concurrency if call else i % concurrency].put_nowait(e)
            if failed:
                raise failed[0]
            for q in queues:
                q.put_nowait(None)
            await asyncio.gather(*tasks)
        finally:  # interrupted (Ctrl-C) or failed: the posters stop before the client closes under them
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if resent[0] and progress:
        print(f"{resent[0]} webhook(s) sent again after their connection was cut mid-request (any the ingress had "
              "taken are duplicates: absorbed, counted in the records' `duplicates`)", file=sys.stderr)
    return statuses


def as_ingress_writes(events: Iterable[dict[str, str]], tz: str = "Asia/Kolkata") -> Iterator[tuple[bytes, bytes]]:
    """Each event normalised as the ingress does (received now): its `ivr.events` key and value."""
    from zoneinfo import ZoneInfo

    from schemas.codec import dumps
    from schemas.webhook import normalise

    zone = ZoneInfo(tz)
    for e in events:
        ev = normalise(e, time.time(), zone)
        yield ev.uniqueid.encode(), dumps(ev)


async def write_events(bootstrap: str | Mapping[str, Any], topic: str, events: list[dict[str, str]],
                       tz: str = "Asia/Kolkata", progress: bool = True) -> None:
    """Normalise like the ingress does and produce straight to ivr.events (acks=all)."""
    from aiokafka import AIOKafkaProducer

    bar = Progress(len(events), "writing") if progress else None
    from deploy.topic_reader import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", enable_idempotence=True, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        pending = []
        for key, value in as_ingress_writes(events, tz):
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                if bar:
                    bar.step(len(pending))
                pending = []
        await asyncio.gather(*pending)
        if bar:
            bar.step(len(pending))
    finally:
        await producer.stop()


def _share(text: str) -> float:
    value = float(text)  # argparse says "invalid _share value" for a ValueError
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share from 0 to 1")
    return value


def _at_least(low: float, kind: type = float) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= low:  # (nan too)
            raise argparse.ArgumentTypeError(f"{text} must be at least {low:g}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid ... value"
    return parse


def _outage(text: str) -> tuple[float, float]:
    begin, sep, length = text.partition(":")
    try:
        values = float(begin), float(length)
        if not sep or not values[1] >= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FROM:SECONDS (e.g. 900:120)") from None
    return values


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=_at_least(1, int), default=1000, help="calls to generate (default: %(default)s)")
    ap.add_argument("--agents", type=_at_least(1, int), default=5,
                    help="agents the calls are transferred to (default: %(default)s)")
    ap.add_argument("--span-s", type=_at_least(0), default=3600.0,
                    help="event-time span the calls start in, in seconds (default: %(default)s)")
    ap.add_argument("--start", type=float, default=None, help="epoch of the first call (default: now - span)")
    ap.add_argument("--rate", type=_at_least(0), default=200.0,
                    help="webhooks per second when posting (0: unlimited; default: %(default)s)")
    ap.add_argument("--duplicates", type=_share, default=0.0, help="share of webhooks delivered twice (0-1)")
    ap.add_argument("--reorder", type=_share, default=0.0, help="share of calls with two webhooks swapped (0-1)")
    ap.add_argument("--missing-hangups", type=_share, default=0.0,
                    help="share of calls whose hang-up is never sent (0-1): they close by timeout")
    ap.add_argument("--seed", type=int, default=1,
                    help="random seed: the same seed, the same calls; other seeds, other call ids (default: 1)")
    ap.add_argument("--url", help="ingress webhook URL")
    ap.add_argument("--token", default="", help="webhook token (`ivr simulate` fills it in)")
    ap.add_argument("--kafka", help="bootstrap servers: write straight to ivr.events instead")
    ap.add_argument("--topic-prefix", default="")
    ap.add_argument("--truth", help="write the ground truth (JSON) here")
    ap.add_argument("--lose", type=_share, default=0.0, help="share of webhooks lost at random")
    ap.add_argument("--lose-hangups", type=_share, default=0.0, help="share of hang-ups lost")
    ap.add_argument("--lose-calls", type=_share, default=0.0, help="share of calls whose webhooks are all lost")
    ap.add_argument("--outage", type=_outage, default=None, metavar="FROM:SECONDS",
                    help="every webhook lost from FROM seconds after --start, for SECONDS")
    args = ap.parse_args(argv)
    profile = Profile(agents=args.agents, p_duplicate=args.duplicates, p_reorder=args.reorder,
                      p_missing_hangup=args.missing_hangups)
    start = args.start if args.start is not None else time.time() - args.span_s
    # a call id per seed: runs of other seeds over the same hour never share one (`<second>.<n>`
    # alone did, now and then: the second run's events revised the first run's call)
    timed, truth = generate_timed(args.calls, start, args.span_s, profile, args.seed,
                                  first_seq=abs(args.seed) * SEQ_PER_SEED)
    outage = None
    if args.outage:
        begin, length = args.outage
        outage = (start + begin, start + begin + length)
    events = lose(timed, Loss(args.lose, args.lose_hangups, args.lose_calls, outage), args.seed)
    print(f"{len(truth)} calls, {len(events)} webhooks ({len(timed) - len(events)} lost)", file=sys.stderr)
    truth_file = None
    part = f"{args.truth}.part"  # the truth, until the run has finished (a file of that name is kept till then)
    if args.truth:  # opened first: a path that cannot be written stops the run before anything is sent
        try:
            truth_file = open(part, "wb")  # noqa: SIM115  (written once the run is over)
        except OSError as e:
            print(f"error: --truth {args.truth}: {e.strerror}", file=sys.stderr)
            return 2
    finished = False
    try:
        code = _deliver(args, events)
        finished = True
    except NoAnswer as e:
        print(f"error: {e}: is the ingress running? (`make run` starts it)", file=sys.stderr)
        code = 1
    finally:
        if truth_file is not None:
            if finished:  # what the run sent; a run cut short would leave a truth it did not play
                truth_file.write(orjson.dumps([asdict(t) for t in truth], option=orjson.OPT_INDENT_2))
            truth_file.close()
            if finished:
                os.replace(part, args.truth)
            else:
                os.unlink(part)
                print(f"(no truth written to {args.truth}: the run did not finish)", file=sys.stderr)
    return code


#: what a status other than 202 most likely means, for the run's last lines
HINTS = {401: "the ingress refused the token (--token; the ingress's WEBHOOK_TOKENS)",
         404: "nothing answers at that URL's path (the ingress's is /webhooks/ivr)",
         422: "refused as invalid and kept (`ivr tail invalid -b` says why)",
         503: "not made durable: Kafka did not acknowledge in time, even after retries"}


def _deliver(args: argparse.Namespace, events: list[dict[str, str]]) -> int:
    if args.url:
        statuses = asyncio.run(post_events(args.url, args.token, events, args.rate))
        print(f"HTTP statuses: {statuses}", file=sys.stderr)
        for status in sorted(set(statuses) & HINTS.keys()):
            print(f"  {status}: {HINTS[status]}", file=sys.stderr)
        return 0 if set(statuses) == {202} else 1
    if args.kafka:
        from config.kafka_client import aiokafka_kwargs
        from config.settings import load

        # the security settings (KAFKA_SECURITY_PROTOCOL, ...) from the environment, like every client
        kafka = aiokafka_kwargs(load(), bootstrap=args.kafka)
        asyncio.run(write_events(kafka, f"{args.topic_prefix}ivr.events", events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
