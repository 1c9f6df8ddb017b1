"""Each benchmark runs for a few seconds so that none can rot (figures are not checked: speed is
measured by `make bench`, never asserted in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.kafka


def test_all_benchmarks_run_quickly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "1. ingress max" in out.stdout and "5. worker RSS" in out.stdout
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    assert results["processor"]["truth_mismatches"] == 0
    assert results["e2e"]["completed"] == results["e2e"]["calls"] > 0
    assert results["ingress"]["webhook"]["max"]["statuses"].keys() == {"202"}
    assert (tmp_path / "benchmarks.png").stat().st_size > 0


def test_peer_comparison_runs_quickly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.peers.compare", "--quick", "--out", str(tmp_path / "p.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    results = orjson.loads((tmp_path / "p.json").read_bytes())
    systems = {"worker", "calls-only worker", "quix at-least-once", "quix exactly-once", "aiokafka loop", "raw loop"}
    assert systems <= results["median"].keys()
    assert "ours/them speed" in out.stdout
    # where the gap is: the work beyond the peers', the headroom, that work's steps alone
    assert {"beyond_peers", "headroom", "extra_steps"} <= results["gap"].keys()
    assert results["extra_work"]["total_cpu_s_per_100k"] > 0
    assert "where the gap is" in out.stdout


def test_the_floor_comparison_runs_the_worker_and_quix_with_steps_that_do_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.peers.compare", "--quick", "--floor",
                          "--out", str(tmp_path / "f.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    results = orjson.loads((tmp_path / "f.json").read_bytes())
    assert results["floor"] is True
    assert {"worker", "quix at-least-once", "quix exactly-once"} == results["median"].keys()  # no loops: no floor
