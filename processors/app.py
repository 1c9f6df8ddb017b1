"""The stream processor: `faust -A processors.app worker`.

One consumer group (the app id, prefixed by TOPIC_PREFIX); run as many workers as needed.
"""

from __future__ import annotations

import gc
from typing import Any

import mode.loop

mode.loop.use("uvloop")  # before any event loop exists: ~25% more events/s through Faust's stream here

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config import settings as settings_module
from config.logs import install_filters
from processors import liveness, reconcile_timer, runtime
from processors.faust_app import create_app
from processors.pipelines import all_pipelines
from processors.worker_metrics import REGISTRY

settings = settings_module.load()
install_filters()
app = create_app(settings)
for pipeline in all_pipelines(settings):
    runtime.run(app, pipeline)
monitor = liveness.install(app, settings)
reconcile_timer.register(app, settings)  # only when PROVIDER_API_KEY is set

# Python's cyclic garbage collector, at its defaults, runs every 700 allocations and now and then
# walks every object the worker holds: 12-16% of the worker's CPU under load (BENCHMARKS.md, round
# five). What start-up made (modules, Faust's app) is frozen out of its walks, and it runs every
# 50,000 allocations: the per-event path frees its objects by reference counting, not by cycles.
gc.freeze()
gc.set_threshold(50_000, 10, 10)


@app.page("/metrics")
async def metrics(self: Any, request: Any) -> Any:
    # aiohttp refuses a charset inside content_type; Prometheus reads the exposition format without it
    return self.bytes(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/healthz")
async def healthz(self: Any, request: Any) -> Any:
    """Liveness: 503 (with the reason) when stalled with lag or out of the consumer group too long."""
    verdict = monitor.verdict()
    return self.json(verdict.as_json(), status=200 if verdict.healthy else 503)


@app.page("/readyz")
async def readyz(self: Any, request: Any) -> Any:
    """Readiness: in the group, partitions assigned, tables restored."""
    ready, body = monitor.readiness()
    return self.json(body, status=200 if ready else 503)
