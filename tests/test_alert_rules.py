"""The Prometheus alert rules (deployments/alerts.rules.yml): promtool checks and unit-tests them, and they use
only metrics that `genesis-dr metrics` exports.

promtool is Debian's `prometheus` package (scripts/test-tools.sh installs it); a missing promtool fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deployments" / "alerts.rules.yml"
RULE_TESTS = ROOT / "deployments" / "alerts.test.yml"

# Every alert of the source documents (and the issue), by the alert that covers it.
SOURCE_DOCUMENT_ALERTS = {
    "any backup failure": "GenesisDRBackupFailed",
    "backup_last_success_timestamp < time() - 86400": "GenesisDRNoBackup24h",
    "no completed backup within 2x its interval": "GenesisDRBackupOverdue",
    "an operation taking over 2x its normal time": "GenesisDROperationSlow",
    "failures by error class": "GenesisDRFailures",
    "RPO > 5 min": "GenesisDRRPOExceeded",
    "RPO over the stack's objective": "GenesisDRRPOObjectiveMissed",
    "capture not running": "GenesisDRCaptureNotRunning",
    "RTO > 15 min": "GenesisDRDrillRTOExceeded",
    "RPO measured by a drill > 5 min": "GenesisDRDrillRPOExceeded",
    "recovery test (drill) failure": "GenesisDRDrillFailed",
    "validation failure": "GenesisDRValidationFailed",
    "no healthy region": "GenesisDRNoHealthyRegion",
    "replication lag > 10 min": "GenesisDRReplicationLag",
    "storage > 85 %": "GenesisDRVaultStorageHigh",
    "backup_storage_used_bytes / backup_storage_total_bytes > 0.9": "GenesisDRVaultStorageCritical",
    "metrics no longer computed": "GenesisDRMetricsStale",
}

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, grouping labels, matchers and ranges left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings first: they may hold braces
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}


def exported_metrics() -> set[str]:
    """The metric names the collector exports (H1's list: the single source of truth)."""
    from core.observe.metrics import METRIC_NAMES

    return set(METRIC_NAMES)


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run scripts/test-tools.sh (installs Debian's prometheus package)"
    return path


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_each_alert_and_stay_quiet_when_healthy():
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet():
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts - firing == set()
    assert alerts - quiet == set()


def test_every_source_document_alert_is_a_rule():
    assert sorted(rule["alert"] for rule in _rules()) == sorted(SOURCE_DOCUMENT_ALERTS.values())


def test_alerts_carry_a_severity_a_threshold_and_a_command():
    for rule in _rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}, rule["alert"]
        assert "Threshold:" in notes["description"], rule["alert"]
        assert notes["runbook"].startswith("genesis-dr "), rule["alert"]


def test_rules_use_only_exported_metrics():
    used = set().union(*(metrics_in(rule["expr"]) for rule in _rules()))
    assert used - exported_metrics() == set()
    # the parser found the metrics, not nothing: a spot check of what the rules must select
    assert {"genesis_dr_backup_last_success_timestamp_seconds", "genesis_dr_vault_total_bytes"} <= used


def test_metric_names_are_found_in_promql():
    expr = (
        'sum by (source) (increase(genesis_dr_backups_total{stack=~"$stack",status="completed"}[$__range])) / '
        "on (stack, vault) group_left () genesis_dr_vault_total_bytes > bool 0.9 or time() - 1e15"
    )
    assert metrics_in(expr) == {"genesis_dr_backups_total", "genesis_dr_vault_total_bytes"}
