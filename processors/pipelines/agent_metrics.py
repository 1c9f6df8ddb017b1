"""Agent metrics: attempts re-keyed by app:agent -> windows -> ivr.metrics.agents.
The figures are `processors.core.call_metrics.agent_record`."""

from __future__ import annotations

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.call_metrics import agent_record
from processors.core.windows import Windowed
from processors.pipelines.windows import windowed
from processors.runtime import Pipeline


def pipeline(s: Settings) -> Pipeline[Windowed]:
    size = float(s.agent_window_s)
    return windowed("agent_metrics", "agent_windows", s.topic(topics.ATTEMPTS_BY_AGENT),
                    s.topic(topics.AGENT_WINDOW_TICKS), s.topic(topics.METRICS_AGENTS), s,
                    lambda key, start, w: agent_record(key, start, size, w), m.LATE_ATTEMPTS)
