"""The ingress plus a no-op endpoint on the same server: the baseline the benchmark compares to.

    uvicorn bench.ingress_app:app
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.app import create_app

_ACCEPTED = b'{"status":"accepted","id":"noop"}'


async def noop(request: Request) -> Response:
    await request.body()  # read it, as the real handler does, then answer without any work
    return Response(_ACCEPTED, 202, media_type="application/json")


app = create_app()
app.router.routes.append(Route("/bench/noop", noop, methods=["GET", "POST"]))
