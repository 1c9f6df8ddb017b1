"""The worker's business gauges, fed by the window records it emits."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from processors.worker_metrics import WindowGauges
from schemas.records import AgentWindowMetrics, AppWindowMetrics

APP = "a" * 32
H = "2026-11-27T10:00:00.000Z", "2026-11-27T11:00:00.000Z"
H2 = "2026-11-27T11:00:00.000Z", "2026-11-27T12:00:00.000Z"


def agent_rec(agent: str, offered: int, answered: int, window: tuple[str, str] = H) -> AgentWindowMetrics:
    return AgentWindowMetrics(
        app=APP, agent=agent, window_start=window[0], window_end=window[1], offered=offered, answered=answered,
        noanswer=offered - answered, busy=0, congestion=0, caller_hangup=0,
        answer_rate=answered / offered if offered else None, answer_rate_excl_caller_hangup=None,
        avg_ring_s=None, talk_s=0.0, final=False,
    )


def app_rec(offered: int, answered: int, sl: float | None, window: tuple[str, str] = H) -> AppWindowMetrics:
    return AppWindowMetrics(
        app=APP, window_start=window[0], window_end=window[1], offered=offered, answered=answered,
        missed=offered - answered, abandoned_in_ivr=0, short_abandons=0, avg_speed_of_answer_s=None,
        service_level=sl, service_level_s=20.0, missed_reached_again=0, reached_again_share=None, final=False,
    )


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_app_figures_follow_the_latest_window_and_ignore_an_older_one() -> None:
    reg = CollectorRegistry()
    g = WindowGauges(reg, agent_label=True)
    g.observe(app_rec(10, 7, 0.6), now=0)
    assert value(reg, "ivr_worker_app_window_offered", app=APP) == 10
    assert value(reg, "ivr_worker_app_window_missed", app=APP) == 3
    assert value(reg, "ivr_worker_app_window_service_level", app=APP) == 0.6
    g.observe(app_rec(2, 2, None, H2), now=10)
    assert value(reg, "ivr_worker_app_window_offered", app=APP) == 2
    assert math.isnan(value(reg, "ivr_worker_app_window_service_level", app=APP) or 0.0)
    g.observe(app_rec(11, 7, 0.6), now=20)  # the earlier window's late final
    assert value(reg, "ivr_worker_app_window_offered", app=APP) == 2


def test_agent_label_on_gives_one_series_per_agent() -> None:
    reg = CollectorRegistry()
    g = WindowGauges(reg, agent_label=True)
    g.observe(agent_rec("100", 4, 3), now=0)
    g.observe(agent_rec("200", 2, 0), now=0)
    assert value(reg, "ivr_worker_agent_window_answer_rate", app=APP, agent="100") == 0.75
    assert value(reg, "ivr_worker_agent_window_answer_rate", app=APP, agent="200") == 0.0
    assert value(reg, "ivr_worker_agent_window_offered", app=APP, agent="200") == 2


def test_agent_label_off_sums_the_apps_agents_of_the_same_window() -> None:
    reg = CollectorRegistry()
    g = WindowGauges(reg, agent_label=False)
    g.observe(agent_rec("100", 4, 3), now=0)
    g.observe(agent_rec("200", 2, 0), now=0)
    g.observe(agent_rec("100", 5, 4), now=1)
    assert value(reg, "ivr_worker_agent_window_offered", app=APP) == 7
    assert value(reg, "ivr_worker_agent_window_answered", app=APP) == 4
    assert value(reg, "ivr_worker_agent_window_answer_rate", app=APP, agent="100") is None
    g.observe(agent_rec("100", 1, 1, H2), now=2)  # a new window: the old one's agents no longer count
    assert value(reg, "ivr_worker_agent_window_offered", app=APP) == 1


def test_keys_not_updated_for_two_windows_are_dropped() -> None:
    reg = CollectorRegistry()
    g = WindowGauges(reg, agent_label=True)
    g.observe(agent_rec("100", 4, 3), now=0)
    g.observe(app_rec(10, 7, 0.6), now=0)
    g.observe(agent_rec("200", 1, 1), now=7300)  # 2 h + later: agent 100 and the app were quiet
    assert value(reg, "ivr_worker_agent_window_offered", app=APP, agent="100") is None
    assert value(reg, "ivr_worker_app_window_offered", app=APP) is None
    assert value(reg, "ivr_worker_agent_window_offered", app=APP, agent="200") == 1


def test_metrics_agent_label_setting() -> None:
    from config.settings import load

    assert load({}).metrics_agent_label is True
    assert load({"METRICS_AGENT_LABEL": "off"}).metrics_agent_label is False
    assert load({"METRICS_AGENT_LABEL": "on"}).metrics_agent_label is True


def test_counters_the_alert_rules_read_are_at_zero_before_their_first_event() -> None:
    """A series that first appears at 1 hides that first increase from `increase()` (the rule
    IvrUnprocessableEvents missed a new build's first dead letters), and a rule over a series that
    does not exist (no event since a restart: IvrWorkerNotConsuming) cannot fire."""
    from prometheus_client import CollectorRegistry, generate_latest

    from processors import reconcile_metrics  # noqa: F401  (registers its counters)
    from processors.runtime import survives
    from processors.worker_metrics import REGISTRY, UNPROCESSABLE, Tally

    async def tick() -> None:
        return None

    survives("unit_timer", tick)
    UNPROCESSABLE.labels("unit_pipeline")  # as `runtime.run` does for each pipeline
    text = generate_latest(REGISTRY).decode()
    for series in ('ivr_worker_timer_errors_total{timer="unit_timer"} 0.0',
                   'ivr_worker_unprocessable_events_total{pipeline="unit_pipeline"} 0.0'):
        assert series in text, series
    for series in ('ivr_worker_events_total{event="H"} ', 'ivr_reconcile_polls_total{result="failed"} '):
        assert series in text, series  # (other tests may have counted some by now)
    fresh = CollectorRegistry()
    Tally("unit_events_total", "doc", "event", registry=fresh, values=("IN", "H"))
    assert 'unit_events_total{event="IN"} 0.0' in generate_latest(fresh).decode()
