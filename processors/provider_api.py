"""A small, polite client of the provider's API (app list and call log).

At most PROVIDER_MAX_RPS requests per second (retries included); a 429 waits what `Retry-After`
asks; a 5xx, a timeout or a network error backs off exponentially (with jitter) and retries, up to
PROVIDER_MAX_ATTEMPTS; any other non-200 is an error at once. The API key travels in the
`X-APIKey` header only (never in a URL, which servers and proxies log) and is never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from processors import reconcile_metrics as m

log = logging.getLogger("processors.provider_api")

MAX_RETRY_AFTER_S = 300.0
MAX_BACKOFF_S = 60.0


class ProviderError(Exception):
    """The provider did not answer usefully (after retries where retrying makes sense)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def retry_after(value: str | None, now: float, default: float) -> float:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; capped."""
    if value is None:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return default
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class Pacer:
    """Request starts at least 1/rps apart."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.gap = 1.0 / rps
        self._next = 0.0
        self._clock, self._sleep = clock, sleep
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._next > now:
                await self._sleep(self._next - now)
                now = self._clock()
            self._next = max(now, self._next) + self.gap


class ProviderApi:
    def __init__(self, base_url: str, api_key: str, max_rps: float, timeout_s: float = 10.0,
                 max_attempts: int = 6, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers={"X-APIKey": api_key},
                                         timeout=timeout_s, transport=transport, follow_redirects=False)
        self._pacer = Pacer(max_rps, sleep=sleep)
        self._sleep = sleep
        self._max_attempts = max_attempts

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET a JSON object, retrying what is worth retrying."""
        backoff = 1.0
        for attempt in range(1, self._max_attempts + 1):
            await self._pacer.wait()
            wait: float
            try:
                r = await self._client.get(path, params=params)
            except httpx.TimeoutException:
                status, wait = "timeout", backoff
            except httpx.TransportError as e:
                status, wait = "network", backoff
                log.debug("provider API %s: %s", path, type(e).__name__)
            else:
                if r.status_code == 200:
                    try:
                        # a decimal as written ("uid": 1796000001.10 is not .1, another call's id)
                        body = json.loads(r.content, parse_float=str)
                    except ValueError:
                        m.API_ERRORS.labels("bad_json").inc()
                        raise ProviderError(f"{path}: not JSON", 200) from None
                    if not isinstance(body, dict):
                        m.API_ERRORS.labels("bad_json").inc()
                        raise ProviderError(f"{path}: not a JSON object", 200)
                    return body
                status = str(r.status_code)
                if r.status_code == 429:
                    wait = retry_after(r.headers.get("Retry-After"), time.time(), backoff)
                elif r.status_code >= 500:
                    wait = backoff
                else:
                    m.API_ERRORS.labels(status).inc()
                    raise ProviderError(f"{path}: HTTP {r.status_code}", r.status_code)
            m.API_ERRORS.labels(status).inc()
            if attempt == self._max_attempts:
                break
            wait = wait if status == "429" else wait * random.uniform(0.5, 1.0)
            log.warning("provider API %s: %s (attempt %d of %d); retrying in %.1fs",
                        path, status, attempt, self._max_attempts, wait)
            await self._sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise ProviderError(f"{path}: no answer after {self._max_attempts} attempts (last: {status})")

    async def apps(self) -> list[str]:
        """Every app GUID of the account (app list API, all pages)."""
        guids: list[str] = []
        pg, total = 1, 1
        while pg <= total:
            body = await self.get("app/list", {"pg": pg})
            guids += [str(a["guid"]) for a in body.get("data") or [] if isinstance(a, dict) and a.get("guid")]
            total = _total_pages(body)
            pg += 1
        return guids

    async def calls(self, app: str, since: str, pg: int) -> tuple[list[dict[str, Any]], int]:
        """One page of an app's call log from `since` (oldest first), and the number of pages."""
        body = await self.get(f"app/{app}/calls", {"since": since, "pg": pg})
        data = body.get("data") or []
        if not isinstance(data, list):
            raise ProviderError(f"calls of {app}: data is not a list", 200)
        return [c for c in data if isinstance(c, dict)], _total_pages(body)


def _total_pages(body: dict[str, Any]) -> int:
    page = body.get("page")
    try:
        return int(float(page["totalPages"])) if isinstance(page, dict) else 1  # decimals are read as text
    except (KeyError, TypeError, ValueError, OverflowError):
        return 1
