"""The worker's keyed pipelines, one module each, declared for `processors.runtime`:

calls          ivr.events            -> calls table   -> completed records, missed-call facts,
                                                         metric contributions
callers        missed-call facts     -> callers table -> missed-call alerts (with repeat counts)
agent_metrics  attempts by agent     -> windows       -> ivr.metrics.agents
app_metrics    calls by app          -> windows       -> ivr.metrics.apps
"""

from __future__ import annotations

from config.settings import Settings
from processors.pipelines import agent_metrics, app_metrics, callers, calls
from processors.runtime import Pipeline


def all_pipelines(s: Settings) -> list[Pipeline]:  # type: ignore[type-arg]
    return [calls.pipeline(s), callers.pipeline(s), agent_metrics.pipeline(s), app_metrics.pipeline(s)]
