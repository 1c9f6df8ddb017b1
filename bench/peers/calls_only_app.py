"""The worker with its calls pipeline only, writing only completed records, for
`bench.peers.compare` (its "calls-only worker"):

    faust -A bench.peers.calls_only_app worker

The peers run the calls step alone (decode, `lifecycle.apply`, write the completed record); the
worker also makes each completed call's metric contributions and caller facts and runs three more
pipelines on them. Here the contributions are not made, the caller facts (which the core makes)
are dropped before they are sent, and the other pipelines do not run: nearly the peers' work, in
the worker's framework (its state in RocksDB with a changelog, its ticks, its acknowledgements),
to tell the framework's cost from the extra work's.
"""

from __future__ import annotations

import mode.loop

mode.loop.use("uvloop")  # as the worker

from bench.peers.step import no_contributions, worker_calls_only
from config import settings as settings_module
from processors import worker

settings = settings_module.load()
no_contributions().__enter__()  # for the life of the process
app, _ = worker.build(settings, [worker_calls_only(settings)])
worker.collect_less()
