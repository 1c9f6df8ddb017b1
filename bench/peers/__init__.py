"""Peers for the worker-speed comparison (`python -m bench.peers`): the same calls step run by
Quix Streams and by a raw client loop, measured beside our worker in one run."""
