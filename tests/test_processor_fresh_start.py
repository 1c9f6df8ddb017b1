"""Workers started at once on fresh topic prefixes: no crash, no PartitionsMismatch, outputs flow."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.simulator import Profile, generate, write_events
from deploy.local_kafka import KafkaBroker
from tests.conftest import STACK_TIMINGS, TOKEN, start_worker, wait_worker_ready
from tests.helpers import Service, new_prefix, read_all

pytestmark = pytest.mark.kafka

WORKERS = 4


def test_fresh_workers_on_fresh_prefixes_start_cleanly_and_emit(kafka: KafkaBroker, tmp_path: Path) -> None:
    envs = [{"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3",
             "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / f"w{i}"),
             **STACK_TIMINGS} for i in range(WORKERS)]
    workers: list[Service] = []
    try:
        # all at once, nothing created beforehand: each worker creates its topics and changelogs
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(WORKERS) as pool:
            started = list(pool.map(lambda i: start_worker(envs[i], tmp_path / f"w{i}.log"), range(WORKERS)))
        workers = [w for w, _ in started]
        for w in workers:
            wait_worker_ready(w, timeout=120)
        profile = Profile(agents=3, p_duplicate=0.0, p_reorder=0.0, p_missing_hangup=0.0, mean_talk_s=20)
        events, truth = generate(5, time.time() - 600, 60, profile, seed=3, prefix="fresh")
        for env in envs:
            asyncio.run(write_events(kafka.bootstrap, f"{env['TOPIC_PREFIX']}ivr.events", events, progress=False))
        for env in envs:
            for topic, want in (("ivr.calls.completed", len(truth)), ("ivr.metrics.apps", 1),
                                ("ivr.metrics.agents", 1)):
                deadline = time.monotonic() + 90
                got: list[tuple[bytes | None, Any]] = []
                while len(got) < want:
                    assert time.monotonic() < deadline, f"{env['TOPIC_PREFIX']}{topic}: {len(got)} of {want}"
                    got = read_all(kafka.bootstrap, f"{env['TOPIC_PREFIX']}{topic}", settle=0.5)
        for w in workers:
            assert w.alive()
        # `kill -USR1`: the worker logs where it waits (each task's stack), and goes on
        assert workers[0].proc is not None
        workers[0].proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "flow: consumer True, app True" not in workers[0].log():
            assert time.monotonic() < deadline, workers[0].log()[-3000:]
            time.sleep(0.2)
        assert "_drain_messages" in workers[0].log() and workers[0].alive()
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        log = w.log()
        assert "PartitionsMismatch" not in log and "Traceback" not in log, log[-3000:]
        assert "crashed" not in log.lower(), log[-3000:]
