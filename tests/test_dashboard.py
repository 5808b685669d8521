"""The Grafana dashboard (deployments/grafana-dashboard.json): loads, picks its data source through the
`${datasource}` variable, uses only exported metrics, and every query parses as PromQL (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.test_alert_rules import exported_metrics, metrics_in, promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deployments" / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the issue asks the dashboard to show: a panel title -> the metrics it must use.
REQUIRED_PANELS = {
    "Backup age vs RPO per source": {
        "genesis_dr_backup_last_success_timestamp_seconds",
        "genesis_dr_rpo_seconds",
        "genesis_dr_rpo_objective_seconds",
    },
    "Last successful backup per source and type": {
        "genesis_dr_backup_last_success_timestamp_seconds",
        "genesis_dr_backup_last_failure_timestamp_seconds",
        "genesis_dr_backup_interval_seconds",
    },
    "Backup durations": {"genesis_dr_backup_last_duration_seconds"},
    "Backup sizes: stored vs plain": {"genesis_dr_backup_last_size_bytes", "genesis_dr_backup_last_stored_bytes"},
    "Backup success rate": {"genesis_dr_backups_total"},
    "Capture lag": {"genesis_dr_capture_lag_seconds"},
    "Capture running": {"genesis_dr_capture_running"},
    "Replication lag per replica": {"genesis_dr_replication_lag_seconds"},
    "Validation results": {
        "genesis_dr_validation_last_success",
        "genesis_dr_validation_last_timestamp_seconds",
    },
    "Drill results": {
        "genesis_dr_drill_last_success",
        "genesis_dr_drill_last_timestamp_seconds",
        "genesis_dr_drill_rto_seconds",
        "genesis_dr_drill_rpo_seconds",
    },
    "Measured RTO vs objective": {"genesis_dr_drill_rto_seconds", "genesis_dr_rto_objective_seconds"},
    "Measured RPO vs objective": {"genesis_dr_drill_rpo_seconds", "genesis_dr_rpo_objective_seconds"},
    "Vault usage": {"genesis_dr_vault_used_bytes", "genesis_dr_vault_total_bytes"},
    "Failures by error class": {"genesis_dr_failures_total"},
    "Slow operations": {"genesis_dr_operation_slow"},
    "Healthy regions": {"genesis_dr_healthy_regions"},
    "Active region": {"genesis_dr_active_region_info"},
    "Legal holds active": {"genesis_dr_holds_active"},
    "Metrics age": {"genesis_dr_scrape_timestamp_seconds"},
    "Backups per hour by outcome": {"genesis_dr_backups_total", "genesis_dr_backup_skipped_total"},
}
# Grafana's variables, as a Prometheus would see them once Grafana substituted them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m", "$stack": "prod", "$source": ".*"}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def _queries(dashboard: dict) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in _panels(dashboard) for target in panel.get("targets", [])]


def test_dashboard_loads_with_its_variables():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "genesis-dr"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert sorted(variables) == ["datasource", "source", "stack"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("stack", "source"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        query = variable["query"]["query"]
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert found and found.group(2) == name, query
        assert metrics_in(found.group(1)) <= exported_metrics()
    assert variables["source"]["includeAll"] is True


def test_panel_ids_unique_and_panels_do_not_overlap():
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_the_datasource_variable_and_the_stack():
    queries = _queries(_dashboard())
    assert len(queries) >= 30
    for panel, target in queries:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert target["datasource"] == DATASOURCE, panel["title"]
        # every selector is narrowed to the chosen stack (one Prometheus often scrapes several)
        for selector in re.findall(r"genesis_dr_\w+(\{[^}]*\})?", target["expr"]):
            assert 'stack=~"$stack"' in selector, (panel["title"], target["expr"])


def test_dashboard_uses_only_exported_metrics_and_covers_the_issue():
    dashboard = _dashboard()
    used_by: dict[str, set[str]] = {}
    for panel, target in _queries(dashboard):
        used_by.setdefault(panel["title"], set()).update(metrics_in(target["expr"]))
    everything = set().union(*used_by.values())
    assert everything - exported_metrics() == set()
    for title, metrics in REQUIRED_PANELS.items():
        assert metrics <= used_by.get(title, set()), title


def test_every_query_parses_as_promql(tmp_path):
    """promtool parses each query (Grafana's variables substituted) as a recording rule."""
    rules = []
    for panel, target in _queries(_dashboard()):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, (panel["title"], expr)
        rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
