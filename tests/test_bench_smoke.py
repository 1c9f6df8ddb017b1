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
    systems = {"worker", "quix at-least-once", "quix exactly-once", "aiokafka loop", "raw loop"}
    assert systems <= results["median"].keys()
    assert "ours/them speed" in out.stdout


@pytest.mark.parametrize("mode", ["--floor", "--calls-only"])
def test_the_comparisons_that_split_the_gap_run_the_worker_and_quix(tmp_path: Path, mode: str) -> None:
    """--floor: steps that do nothing; --calls-only: the worker doing the peers' work alone."""
    out = subprocess.run([sys.executable, "-m", "bench.peers.compare", "--quick", mode,
                          "--out", str(tmp_path / "f.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    results = orjson.loads((tmp_path / "f.json").read_bytes())
    assert results["floor"] is (mode == "--floor") and results["calls_only"] is (mode == "--calls-only")
    assert {"worker", "quix at-least-once", "quix exactly-once"} <= results["median"].keys()
    assert ("aiokafka loop" in results["median"]) is (mode != "--floor")  # the loops have no floor
