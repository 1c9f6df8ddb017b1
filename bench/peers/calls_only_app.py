"""The worker with its calls pipeline only, writing only completed records, for
`bench.peers.compare` (its "calls-only worker"):

    faust -A bench.peers.calls_only_app worker

The peers run the calls step alone (decode, `lifecycle.apply`, write the completed record); the
worker also makes each completed call's metric contributions and caller facts and runs three more
pipelines on them. Here the contributions are not made, the caller facts (which the core makes,
for the peers too) are not sent, and the other pipelines do not run (`step.extra_work_aside`): the
peers' work, in the worker's framework (its state in RocksDB with a changelog, its ticks, its
acknowledgements), to tell the framework's cost from the extra work's.
"""

from __future__ import annotations

import mode.loop

mode.loop.use("uvloop")  # as the worker

from bench.peers.step import extra_work_aside
from config import settings as settings_module
from processors import worker
from processors.pipelines import calls

settings = settings_module.load()
extra_work_aside()  # for the life of the process
app, _ = worker.build(settings, [calls.pipeline(settings)])
worker.collect_less()
