"""The alert rules under `promtool test rules`: each fires on a series that should fire it, and stays
quiet on one that should not (in the same evaluation, or in a group of its own for global rules)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring_exprs import RULES, dashboard_exprs, metric_names, rule_exprs

W = 'job="ivr-worker"'
I = 'job="ivr-ingress", instance="ingress-0:8080"'  # noqa: E741


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("IVR_REQUIRE_DEPLOY_TOOLS"):
            pytest.fail("promtool is missing (Debian: apt-get install prometheus)")
        pytest.skip("promtool is missing (Debian: apt-get install prometheus; .ci/run installs it)")
    return found


def rules_by_name() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


# alert -> test groups: (input series, eval time, expected alerts as (extra labels, summary))
Case = tuple[list[tuple[str, str]], str, list[tuple[dict[str, str], str]]]
CASES: dict[str, list[Case]] = {
    "IvrWorkerDown": [(
        [(f'up{{{W}, instance="w0:6066"}}', "1x5 0x10"),
         (f'up{{{W}, instance="w1:6066"}}', "1x15"),
         (f'up{{{W}, instance="w2:6066"}}', "1x5 0 1x9")],  # one missed scrape: no alert
        "10m", [({"job": "ivr-worker", "instance": "w0:6066"},
                 "Worker w0:6066 is down (its /metrics does not answer)")],
    )],
    "IvrWorkersAbsent": [
        ([(f"up{{{I}}}", "1x15")], "10m", [({"job": "ivr-worker"}, "No ivr-stream worker is being scraped at all")]),
        ([(f"up{{{I}}}", "1x15"), (f'up{{{W}, instance="w0:6066"}}', "0x15")], "10m", []),
    ],
    "IvrIngressDown": [(
        [(f"up{{{I}}}", "1x5 0x10"), ('up{job="ivr-ingress", instance="ingress-1:8080"}', "1x15")],
        "10m", [({"job": "ivr-ingress", "instance": "ingress-0:8080"}, "Ingress ingress-0:8080 is down")],
    )],
    "IvrIngressCannotWrite": [
        # ingress-0 loses the brokers after 5 min; ingress-1 blips once (one check), which is not an outage
        ([(f'ivr_ingress_kafka_writable{{{I}}}', "1x5 0x10"),
          ('ivr_ingress_kafka_writable{job="ivr-ingress", instance="ingress-1:8080"}', "1x7 0 1x7")],
         "10m", [({"instance": "ingress-0:8080"}, "Ingress ingress-0:8080 cannot make webhooks durable for 2 min")]),
        # a new pod: its first check runs before its producer has connected
        ([('ivr_ingress_kafka_writable{job="ivr-ingress", instance="ingress-2:8080"}', "_x4 0 1x10")], "2m15s", []),
    ],
    "IvrWorkerNotConsuming": [(
        [(f'ivr_worker_consumer_lag{{{W}, instance="w0:6066", topic="ivr.events", partition="0"}}', "500x20"),
         (f'ivr_worker_events_total{{{W}, instance="w0:6066", event="IN"}}', "100x20"),
         (f'ivr_worker_consumer_lag{{{W}, instance="w1:6066", topic="ivr.events", partition="1"}}', "500x20"),
         (f'ivr_worker_events_total{{{W}, instance="w1:6066", event="IN"}}', "0+60x20")],
        "20m", [({"instance": "w0:6066"}, "Worker w0:6066 has 500 events waiting and processes none")],
    )],
    "IvrConsumerLagGrowing": [(
        [(f'ivr_worker_consumer_lag{{{W}, instance="w0:6066", topic="ivr.events", partition="0"}}', "0+100x40"),
         (f'ivr_worker_consumer_lag{{{W}, instance="w1:6066", topic="ivr.events", partition="1"}}', "0+100x40"),
         # a large backlog that is shrinking or steady is not this alert
         (f'ivr_worker_consumer_lag{{{W}, instance="w0:6066", topic="other.ivr.events", partition="0"}}',
          "5000x40")],
        "40m", [({"topic": "ivr.events"}, "ivr.events: 8000 events behind, and the backlog kept growing for 15 min")],
    )],
    "IvrBatchDeliverySlow": [(
        [(f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w0:6066", le="1"}}', "0x30"),
         (f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w0:6066", le="2.5"}}', "0+10x30"),
         (f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w0:6066", le="+Inf"}}', "0+10x30"),
         (f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w1:6066", le="1"}}', "0+10x30"),
         (f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w1:6066", le="2.5"}}', "0+10x30"),
         (f'ivr_worker_deliver_seconds_bucket{{{W}, instance="w1:6066", le="+Inf"}}', "0+10x30")],
        "30m", [({"instance": "w0:6066"}, "Worker w0:6066: p99 batch delivery 2.485s")],
    )],
    "IvrTimerErrors": [(
        [(f'ivr_worker_timer_errors_total{{{W}, instance="w0:6066", timer="close_idle"}}', "0+1x20"),
         (f'ivr_worker_timer_errors_total{{{W}, instance="w0:6066", timer="report_lag"}}', "0 1x19")],
        "20m", [({"instance": "w0:6066", "timer": "close_idle"},
                 "Worker w0:6066: timer close_idle failed 15 times in 15 min")],
    )],
    "IvrWorkerStoreFailing": [(
        [(f'ivr_worker_store_errors_total{{{W}, instance="w0:6066"}}', "0x5 170+170x10"),
         (f'ivr_worker_store_errors_total{{{W}, instance="w1:6066"}}', "0x15")],
        "15m", [({"instance": "w0:6066"}, "Worker w0:6066: 1.7k writes to its local store failed in 10 min")],
    )],
    "IvrLateEventsSpiking": [
        ([(f'ivr_worker_events_total{{{W}, instance="w0:6066", event="TE"}}', "0+600x30"),
          (f'ivr_worker_late_events_total{{{W}, instance="w0:6066"}}', "0+60x30")],
         "30m", [({}, "1 late events/s: more than 5% of events arrive for calls already closed")]),
        ([(f'ivr_worker_events_total{{{W}, instance="w0:6066", event="TE"}}', "0+600x30"),
          (f'ivr_worker_late_events_total{{{W}, instance="w0:6066"}}', "0+6x30")], "30m", []),
    ],
    "IvrLateMetricContributions": [
        ([(f'ivr_worker_late_attempts_total{{{W}, instance="w0:6066"}}', "0+1x40"),
          (f'ivr_worker_late_calls_total{{{W}, instance="w0:6066"}}', "0+1x40")],
         "40m", [({}, "60 calls/attempts reached a metrics window after its final record")]),
        ([(f'ivr_worker_late_attempts_total{{{W}, instance="w0:6066"}}', "0x40"),
          (f'ivr_worker_late_calls_total{{{W}, instance="w0:6066"}}', "0 1x39")], "40m", []),
    ],
    "IvrUnprocessableEvents": [(
        [(f'ivr_worker_unprocessable_events_total{{{W}, instance="w0:6066", pipeline="calls"}}', "0x10 10x10"),
         (f'ivr_worker_unprocessable_events_total{{{W}, instance="w1:6066", pipeline="calls"}}', "3x20")],
        "15m", [({"instance": "w0:6066", "pipeline": "calls"},
                 "Worker w0:6066, calls: 10 records could not be processed")],
    )],
    "IvrReconciliationFailing": [
        # every pass fails (one each 10 min, RECONCILE_INTERVAL_S=600): nothing is being healed
        ([(f'ivr_reconcile_passes_failed_total{{{W}, instance="w0:6066"}}', "0+0.1x90")],
         "90m", [({}, "Call-log reconciliation: 6 passes or polls failed in the last hour, none read a call log")]),
        # the provider fails every poll (a pass every 10 min): no pass failed, none read a call log
        ([(f'ivr_reconcile_passes_failed_total{{{W}, instance="w0:6066"}}', "0x90"),
          (f'ivr_reconcile_polls_total{{{W}, instance="w0:6066", result="failed"}}', "0+0.1x90")],
         "90m", [({}, "Call-log reconciliation: 6 passes or polls failed in the last hour, none read a call log")]),
        # one pass failed (a leader change), the next ones read the call log
        ([(f'ivr_reconcile_passes_failed_total{{{W}, instance="w0:6066"}}', "0x30 1x60"),
          (f'ivr_reconcile_polls_total{{{W}, instance="w0:6066", result="ok"}}', "0x35 0+1x55")], "90m", []),
    ],
    "IvrIngress503Rate": [
        ([(f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "0+600x20"),
          (f'ivr_ingress_requests_total{{{I}, event="IN", status="503"}}', "0+60x20")],
         "20m", [({}, "1 webhooks/s answered 503 (more than 1%)")]),
        ([(f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "0+600x20"),
          (f'ivr_ingress_requests_total{{{I}, event="IN", status="503"}}', "0+3x20")], "20m", []),
    ],
    "IvrWebhookRejectSpike": [(
        [(f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "0+600x30"),
         (f'ivr_ingress_requests_total{{{I}, event="unknown", status="401"}}', "0+120x30"),
         (f'ivr_ingress_requests_total{{{I}, event="TE", status="422"}}', "0+3x30")],
        "30m", [({"status": "401"}, "More than 5% of webhooks answered 401")],
    ), (  # the provider switched to multipart: every webhook refused (and kept)
        [(f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "0+600x10 6000x20"),
         (f'ivr_ingress_requests_total{{{I}, event="unknown", status="415"}}', "0x10 0+600x20")],
        "30m", [({"status": "415"}, "More than 5% of webhooks answered 415")],
    )],
    "IvrNoWebhooks": [
        ([(f"up{{{I}}}", "1x80"), (f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "100x80")],
         "50m", [({}, "No webhook accepted for 45 minutes")]),
        ([(f"up{{{I}}}", "1x80"), (f'ivr_ingress_requests_total{{{I}, event="IN", status="202"}}', "0+10x80")],
         "50m", []),
        # ingress not scraped: IvrIngressDown says so, not this rule
        ([(f"up{{{I}}}", "0x80")], "50m", []),
    ],
    "IvrAppMissedRateHigh": [(
        [(f'ivr_worker_app_window_offered{{{W}, instance="w0:6066", app="A"}}', "100x180"),
         (f'ivr_worker_app_window_missed{{{W}, instance="w0:6066", app="A"}}', "10x120 60x60"),
         # always high: that is its usual
         (f'ivr_worker_app_window_offered{{{W}, instance="w0:6066", app="B"}}', "100x180"),
         (f'ivr_worker_app_window_missed{{{W}, instance="w0:6066", app="B"}}', "50x180"),
         # a spike on too few calls to mean anything
         (f'ivr_worker_app_window_offered{{{W}, instance="w0:6066", app="C"}}', "10x180"),
         (f'ivr_worker_app_window_missed{{{W}, instance="w0:6066", app="C"}}', "1x120 8x60")],
        "160m", [({"app": "A"}, "App A: 60% of this hour's calls missed, over twice its usual")],
    )],
}


def test_every_rule_has_a_test_and_says_what_to_check() -> None:
    rules = rules_by_name()
    assert set(CASES) == set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        assert "Check first" in rule["annotations"]["description"], name
        assert "{{" not in rule["annotations"]["description"], f"{name}: keep descriptions static"


def test_rules_under_promtool(tmp_path: Path) -> None:
    tool = promtool()
    rules = rules_by_name()
    tests = []
    for name, groups in CASES.items():
        rule = rules[name]
        for series, at, expected in groups:
            tests.append({
                "name": name,
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [{
                    "eval_time": at,
                    "alertname": name,
                    "exp_alerts": [{
                        "exp_labels": {**rule["labels"], **labels},
                        "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]},
                    } for labels, summary in expected],
                }],
            })
    shutil.copy(RULES, tmp_path / RULES.name)
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": tests}))
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([tool, "test", "rules", str(test_file)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_and_rule_expressions_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule) and every rule; so does promql-parser."""
    tool = promtool()
    exprs = {**dashboard_exprs(), **rule_exprs()}
    names = set().union(*(metric_names(e) for e in exprs.values()))
    assert "ivr_worker_app_window_offered" in names and "ivr_ingress_requests_total" in names
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(dashboard_exprs().values())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(rules)} rules found" in run.stdout
