"""A stand-in for the provider's API: app list and call log, served from the simulator's truth.

    python -m bench.fake_provider --truth truth.json --key KEY --port 8090   # truth from ivr-simulate

Implements what the reconciler uses: `GET /app/list` and `GET /app/{guid}/calls?since=&pg=`
(oldest first, calls whose `time` is at or after `since`, `page.totalPages`), the API key in the
`X-APIKey` header (or the `apikey` query parameter, which the real API also accepts for GETs), and
faults on demand: the next N requests answer 429 (with `Retry-After`) or 500, every request
slowed down, a call shown `active: true` for its first N listings. It counts what it served, so
that tests can check how the client behaved (request spacing, where the key was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.simulator import APP, Truth, TruthAttempt

IST = timezone(timedelta(hours=5, minutes=30))


def iso(t: float) -> str:
    """The call log's time format: ISO 8601 with the provider's offset, whole seconds."""
    return datetime.fromtimestamp(int(t), IST).isoformat(timespec="seconds")


def log_entry(tr: Truth) -> dict[str, Any]:
    """One call as the call log shows it (attempts newest first, as in the provider's example).
    An attempt the caller hung up on while it rang has no disposition of the four: empty."""
    transfers = [{
        "attemptId": a.attemptid, "du": str(a.du if a.du is not None else int(a.ring_s)), "name": a.agent_name,
        "seq": str(2 * n + 3), "time": iso(a.start), "to": a.agent, "group": a.group,
        "disposition": a.result if a.result != "caller_hangup" else "",
    } for n, a in enumerate(tr.attempts)]
    return {"log": [], "hot": 0, "cli": tr.cli, "uid": tr.uniqueid, "time": iso(tr.start), "active": False,
            "duration": str(tr.duration), "transfer": list(reversed(transfers))}


@dataclass
class Faults:
    fail: list[tuple[int, float | None]] = field(default_factory=list)  # next requests: status, Retry-After
    slow_s: float = 0.0
    active: dict[str, int] = field(default_factory=dict)  # uid -> listings left showing it active


@dataclass
class Served:
    at: float  # monotonic
    path: str
    status: int
    key_in_query: bool
    params: dict[str, str]  # the query parameters (without any API key)


class FakeProvider:
    def __init__(self, calls: dict[str, list[Truth]], api_key: str, page_size: int = 50,
                 clock: Any = time.time) -> None:
        self.calls = {app: sorted(trs, key=lambda t: (t.start, t.uniqueid)) for app, trs in calls.items()}
        self.api_key = api_key
        self.page_size = page_size
        self.clock = clock
        self.faults = Faults()
        self.served: list[Served] = []
        self.app = Starlette(routes=[
            Route("/app/list", self.app_list),
            Route("/app/{guid}/calls", self.call_log),
        ])

    # --- faults on demand ---
    def fail_next(self, status: int, n: int = 1, retry_after: float | None = None) -> None:
        self.faults.fail += [(status, retry_after)] * n

    def hold_active(self, uid: str, listings: int = 1) -> None:
        self.faults.active[uid] = listings

    # --- the API ---
    async def _gate(self, request: Request) -> Response | None:
        if self.faults.slow_s:
            await asyncio.sleep(self.faults.slow_s)
        key = request.headers.get("x-apikey") or request.query_params.get("apikey") or ""
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return JSONResponse({"error": "invalid api key"}, status_code=401)
        if self.faults.fail:
            status, retry_after = self.faults.fail.pop(0)
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return JSONResponse({"error": "fault on demand"}, status_code=status, headers=headers)
        return None

    def _record(self, request: Request, response: Response) -> Response:
        params = {k: v for k, v in request.query_params.items() if k != "apikey"}
        self.served.append(Served(time.monotonic(), request.url.path, response.status_code,
                                  "apikey" in request.query_params, params))
        return response

    def _page(self, request: Request, items: list[Any]) -> tuple[list[Any], dict[str, Any]] | Response:
        try:
            pg = int(request.query_params.get("pg", "1"))
        except ValueError:
            return JSONResponse({"error": "pg must be a number"}, status_code=400)
        total_pages = max(1, -(-len(items) // self.page_size))
        chunk = items[(pg - 1) * self.page_size: pg * self.page_size] if pg >= 1 else []
        base = str(request.url.remove_query_params(["pg", "apikey"]))
        start = (pg - 1) * self.page_size + 1
        page = {"totalItems": len(items), "pageItems": len(chunk), "pageNumber": pg, "totalPages": total_pages,
                "startIndex": start, "endIndex": start + len(chunk) - 1, "cur": base,
                "first": f"{base}&pg=1" if "?" in base else f"{base}?pg=1",
                "last": f"{base}&pg={total_pages}" if "?" in base else f"{base}?pg={total_pages}"}
        return chunk, page

    async def app_list(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return self._record(request, denied)
        apps = [{"guid": guid, "number.virtual": "33047316", "number.physical": "33047316", "name": f"app {n}"}
                for n, guid in enumerate(self.calls)]
        paged = self._page(request, apps)
        if isinstance(paged, Response):
            return self._record(request, paged)
        chunk, page = paged
        return self._record(request, JSONResponse({"page": page, "data": chunk}))

    async def call_log(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return self._record(request, denied)
        guid = request.path_params["guid"]
        if guid not in self.calls:
            return self._record(request, JSONResponse({"error": "no such app"}, status_code=404))
        since = 0.0
        if "since" in request.query_params:
            try:
                dt = datetime.fromisoformat(request.query_params["since"])
            except ValueError:
                return self._record(request, JSONResponse({"error": "since: not ISO 8601"}, status_code=400))
            since = (dt if dt.tzinfo else dt.replace(tzinfo=IST)).timestamp()
        now = self.clock()
        listed = [tr for tr in self.calls[guid] if since <= int(tr.start) <= now]
        paged = self._page(request, listed)
        if isinstance(paged, Response):
            return self._record(request, paged)
        chunk, page = paged
        data = []
        for tr in chunk:
            entry = log_entry(tr)
            held = self.faults.active.get(tr.uniqueid, 0)
            if held > 0:  # held active by a fault, for this many listings
                self.faults.active[tr.uniqueid] = held - 1
            if held > 0 or tr.end > now:  # not finished yet
                entry = {**entry, "active": True}
            data.append(entry)
        return self._record(request, Response(orjson.dumps({"page": page, "data": data}),
                                              media_type="application/json"))


def truth_from_json(items: Iterable[dict[str, Any]]) -> list[Truth]:
    return [Truth(**{**t, "attempts": [TruthAttempt(**a) for a in t["attempts"]]}) for t in items]


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", required=True, help="ground truth JSON written by ivr-simulate --truth")
    ap.add_argument("--key", required=True, help="the API key it accepts")
    ap.add_argument("--app", default=APP)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--page-size", type=int, default=50)
    args = ap.parse_args(argv)
    with open(args.truth, "rb") as f:
        truth = truth_from_json(orjson.loads(f.read()))
    provider = FakeProvider({args.app: truth}, args.key, args.page_size)
    print(f"the call log of {len(truth)} calls of app {args.app}; for the workers: "
          f"PROVIDER_API_URL=http://127.0.0.1:{args.port} PROVIDER_API_KEY=<--key>", file=sys.stderr, flush=True)
    uvicorn.run(provider.app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
