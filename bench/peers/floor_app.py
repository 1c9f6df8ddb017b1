"""The worker with steps that do nothing, for `bench.peers.compare --floor`:

    faust -A bench.peers.floor_app worker

Every pipeline reads its records, decodes them, looks up each key's state and acknowledges them,
and nothing is written: what the worker costs around its pipelines' work (Faust, aiokafka, the
runtime, the tables' reads), to set against the same floor of the peers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mode.loop

mode.loop.use("uvloop")  # as the worker

from config import settings as settings_module
from processors import worker
from processors.pipelines import all_pipelines


def nothing(key: str, state: Any, item: Any, now: float) -> None:
    return None  # no change, no output


settings = settings_module.load()
app, _ = worker.build(settings, [dataclasses.replace(p, step=nothing) for p in all_pipelines(settings)])
worker.collect_less()
