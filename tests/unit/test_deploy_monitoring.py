"""The Prometheus rules and the Grafana dashboard in deploy/ only name metrics that the workers export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (registers the metrics)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = re.compile(r"\b(soma_[a-z_]+)")


def _exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    names.update(f"{name}{suffix}" for name in list(names) for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def _expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "soma-streams.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return exprs


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    exported = _exported()
    used = {name for expr in _expressions() for name in _METRIC.findall(expr)}
    assert used, "no metrics found in deploy/"
    assert used <= exported, f"not exported by any worker: {sorted(used - exported)}"


def test_every_alert_has_a_summary_and_a_severity() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
