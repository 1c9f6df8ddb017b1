"""The PromQL of the alert rules and the Grafana dashboard, and the metric names it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "ivr-stream.rules.yml"
DASHBOARD = MONITORING / "grafana" / "ivr-stream.json"

# Grafana's variables, replaced by what they stand for at query time
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$app": ".*"}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """Every panel query, Grafana variables replaced; the `label_values(metric, label)` of template
    variables as the metric alone."""
    dash = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}

    def panels(items: list[dict[str, Any]]) -> Any:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"panel {p['title']!r}: unknown variable in {expr!r}"
            out[f"{p['title']} ({t['refId']})"] = expr
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", v["definition"])
            assert m, v["definition"]
            out[f"variable {v['name']}"] = m.group(1)
    return out


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list | tuple) else [child]:
                if isinstance(c, promql_parser.Expr):
                    walk(c)

    walk(promql_parser.parse(expr))
    return names
