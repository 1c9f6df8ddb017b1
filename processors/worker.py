"""The worker assembled: the Faust app with its pipelines wired in, its liveness and its timers.
`processors.app` builds it with every pipeline (`faust -A processors.app worker`); the benchmarks
build it with other steps (`bench.peers.floor_app`, `bench.peers.calls_only_app`)."""

from __future__ import annotations

import gc
import socket
import sys
from collections.abc import Iterable, Sequence

from config.logs import install_filters
from config.settings import Settings
from processors import liveness, reconcile_timer, runtime
from processors.faust_app import IvrApp, create_app
from processors.runtime import Pipeline


def check_web_port(host: str, port: int) -> None:
    """Exit with one line when the worker's web port is taken (another worker on this host):
    Faust would bind it after starting everything else and end with a traceback. The probe
    binds as aiohttp does (SO_REUSEADDR), so a port a worker just left is free here too."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise SystemExit(f"error: the worker's web port {host}:{port} cannot be used ({e.strerror}): another "
                             "worker on this host? Give each its own WORKER_WEB_PORT") from None


def web_address(settings: Settings, argv: Sequence[str]) -> tuple[str, int] | None:
    """Where `faust -A ... worker` will listen (its `--web-bind`/`--web-port` options win over
    the settings); None for Faust's other commands and `--without-web`, which listen nowhere."""
    if "worker" not in argv or "--without-web" in argv:
        return None
    host, port = settings.worker_web_host, settings.worker_web_port
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        given = value if eq else argv[i + 1] if i + 1 < len(argv) else ""
        if name in ("--web-port", "-p") and given.isdigit():
            port = int(given)
        elif name in ("--web-bind", "-b") and given:
            host = given
    return host, port


def build(settings: Settings, pipelines: Iterable[Pipeline]) -> tuple[IvrApp, liveness.LivenessMonitor]:  # type: ignore[type-arg]
    install_filters()
    address = web_address(settings, sys.argv[1:])
    if address is not None:
        check_web_port(*address)
    app = create_app(settings)
    for pipeline in pipelines:
        runtime.run(app, pipeline)
    monitor = liveness.install(app, settings)
    reconcile_timer.register(app, settings)  # only when PROVIDER_API_KEY is set
    return app, monitor


#: the garbage collector's thresholds in a worker (see `collect_less`)
GC_THRESHOLD = (50_000, 10, 10)


def collect_less() -> None:
    """Python's cyclic garbage collector, at its defaults, runs every 700 allocations and now and
    then walks every object the worker holds: 12-16% of the worker's CPU under load (BENCHMARKS.md,
    round five). What start-up made (modules, Faust's app) is frozen out of its walks, and it runs
    every 50,000 allocations: the per-event path frees its objects by reference counting, not by
    cycles. Called once the worker is built."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
