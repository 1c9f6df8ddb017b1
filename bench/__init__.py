"""Traffic simulator and benchmarks (not part of the test suite; a smoke test runs each briefly)."""
