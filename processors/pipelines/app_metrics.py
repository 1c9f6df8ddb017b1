"""App metrics: calls re-keyed by app -> windows -> ivr.metrics.apps.
The figures are `processors.core.call_metrics.app_record`."""

from __future__ import annotations

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.call_metrics import app_record
from processors.core.windows import Windowed
from processors.pipelines.windows import windowed
from processors.runtime import Pipeline


def pipeline(s: Settings) -> Pipeline[Windowed]:
    size = float(s.agent_window_s)
    return windowed("app_metrics", "app_windows", s.topic(topics.CALLS_BY_APP),
                    s.topic(topics.APP_WINDOW_TICKS), s.topic(topics.METRICS_APPS), s,
                    lambda key, start, w: app_record(key, start, size, w, s.service_level_s), m.LATE_CALLS)
