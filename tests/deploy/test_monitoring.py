"""Alert rules and the Grafana dashboard: promtool checks them, and breaks are caught."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import DEPLOY

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "postback-platform.json"


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (make system-packages)"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_alert_rules_pass_promtool() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_when_they_should() -> None:
    """promtool's unit tests: no consumers, an open breaker, outbox lag, dead letters."""
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            "expr: max(click_gateway_outbox_lag_seconds) > 60",
            "expr: max(click_gateway_outbox_lag_seconds > 60",
        ),
        ("for: 10m", "for: ten minutes"),
    ],
)
def test_promtool_rejects_a_broken_rule_file(tmp_path: Path, before: str, after: str) -> None:
    text = (PROMETHEUS / "alerts.yml").read_text()
    assert before in text
    (tmp_path / "alerts.yml").write_text(text.replace(before, after, 1))
    result = _promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    assert result.returncode != 0


def test_the_alert_unit_tests_notice_an_alert_that_no_longer_fires(tmp_path: Path) -> None:
    for name in ("alerts.yml", "alerts.test.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        rules.read_text().replace(
            "postback_work_queue_consumers) == 0", "postback_work_queue_consumers) < 0"
        )
    )
    result = _promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "PostbackNoConsumers" in result.stdout + result.stderr


def test_the_dashboard_is_well_formed_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "postback-platform"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def _dashboard_queries_as_rules(dashboard: dict[str, Any], directory: Path) -> Path:
    """Every panel query as a recording rule, so promtool parses the PromQL."""
    rules = [
        {"record": f"dashboard:query_{index}", "expr": target["expr"]}
        for index, target in enumerate(
            t for panel in dashboard["panels"] for t in panel.get("targets", [])
        )
    ]
    path = directory / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    path = _dashboard_queries_as_rules(dashboard, tmp_path)
    result = _promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_dashboard_query_is_caught(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "sum(rate(postback_attempts_total[5m])"
    path = _dashboard_queries_as_rules(dashboard, tmp_path)
    assert _promtool("check", "rules", path.name, cwd=tmp_path).returncode != 0
