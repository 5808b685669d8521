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


# The metric names core/observe/metrics.py exports (the contract; tests/test_metrics.py checks the
# collector's output against the same list).
CONTRACT_METRICS = frozenset(
    {
        "genesis_dr_backup_last_success_timestamp_seconds",
        "genesis_dr_backup_last_failure_timestamp_seconds",
        "genesis_dr_backup_last_duration_seconds",
        "genesis_dr_backup_last_size_bytes",
        "genesis_dr_backup_last_stored_bytes",
        "genesis_dr_backups_total",
        "genesis_dr_backup_skipped_total",
        "genesis_dr_backup_interval_seconds",
        "genesis_dr_capture_running",
        "genesis_dr_capture_lag_seconds",
        "genesis_dr_rpo_seconds",
        "genesis_dr_rpo_objective_seconds",
        "genesis_dr_rto_objective_seconds",
        "genesis_dr_replication_lag_seconds",
        "genesis_dr_validation_last_timestamp_seconds",
        "genesis_dr_validation_last_success",
        "genesis_dr_drill_last_timestamp_seconds",
        "genesis_dr_drill_last_success",
        "genesis_dr_drill_rto_seconds",
        "genesis_dr_drill_rpo_seconds",
        "genesis_dr_vault_used_bytes",
        "genesis_dr_vault_total_bytes",
        "genesis_dr_healthy_regions",
        "genesis_dr_active_region_info",
        "genesis_dr_operation_slow",
        "genesis_dr_failures_total",
        "genesis_dr_holds_active",
        "genesis_dr_scrape_timestamp_seconds",
    }
)


def exported_metrics() -> set[str]:
    """The metric names the collector exports; the collector's own list must agree when it has one."""
    import core.observe.metrics as collector

    names = getattr(collector, "METRIC_NAMES", None)
    if names is not None:
        assert set(names) == CONTRACT_METRICS
    return set(CONTRACT_METRICS)


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


def _series(text: str) -> list[dict]:
    """promtool input series from an exposition (each sample as a series)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            value = "+Inf" if s.value == float("inf") else repr(float(s.value))
            out.append({"series": f"{s.name}{{{labels}}}", "values": " ".join([value] * 11)})
    return out


def _expected(alert: str, labels: dict[str, str], rpo_infinite: bool = False) -> dict:
    """An alert as promtool reports it: the rule's labels and its annotations rendered for ``labels``."""
    (rule,) = [r for r in _rules() if r["alert"] == alert]
    notes = {}
    for key, text in rule["annotations"].items():
        if rpo_infinite:  # the rules' own wording for "nothing recoverable"
            text = re.sub(r"\{\{ if gt \$value 1e300 \}\}(.*?)\{\{ else \}\}.*?\{\{ end \}\}", r"\1", text)
        notes[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        assert "{{" not in notes[key], (alert, key)
    return {"exp_labels": labels | rule["labels"], "exp_annotations": notes}


def test_a_real_vaults_metrics_fire_exactly_the_alerts_they_should(tmp_path):
    """The collector's real output for a stack with one source backed up and one whose backup failed (its disk
    is gone), evaluated by promtool at the time it was taken: that source's failure and RPO alerts fire, no
    other alert does (labels and names agree between the collector and the rules)."""
    from prometheus_client import generate_latest

    from core.crypto.keys import Keyring
    from core.engines import engine_for
    from core.errors import DRError
    from core.observe.metrics import registry_for
    from core.observe.snapshot import build_snapshot
    from core.operations import backup_source
    from core.stack import StackConfig

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("kept\n")
    secret = tmp_path / "passphrase"
    secret.write_text("alert-rules-test\n")
    config = StackConfig(
        stack="rules",
        vault={"path": str(tmp_path / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[
            {"kind": "files", "name": "app-files", "root": str(tmp_path / "tree")},
            {"kind": "files", "name": "lost-disk", "root": str(tmp_path / "unmounted")},
        ],
    )
    vault, keyring = config.vault.open(create=True), Keyring(passphrase="alert-rules-test")
    backup_source(vault, keyring, engine_for(config.source("app-files")), "full")
    try:
        backup_source(vault, keyring, engine_for(config.source("lost-disk")), "full")
    except DRError:
        pass  # recorded FAILED in the vault
    snapshot = build_snapshot(config)
    text = generate_latest(registry_for(lambda: snapshot)).decode()

    # eleven samples from 1970 to the scrape, one evaluation each: time() at the last one is the scrape's
    step = int(snapshot.taken.timestamp()) // 10 + 1
    stack = {"stack": "rules"}
    fired = {
        "GenesisDRBackupFailed": [_expected("GenesisDRBackupFailed", stack | {"source": "lost-disk", "type": "full"})],
        "GenesisDRRPOExceeded": [_expected("GenesisDRRPOExceeded", stack | {"source": "lost-disk"}, True)],
        "GenesisDRRPOObjectiveMissed": [
            _expected("GenesisDRRPOObjectiveMissed", stack | {"source": "lost-disk"}, True)
        ],
    }
    checks = [
        {"eval_time": f"{step * 10}s", "alertname": rule["alert"], "exp_alerts": fired.get(rule["alert"], [])}
        for rule in _rules()
    ]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{step}s",
        "tests": [{"interval": f"{step}s", "input_series": _series(text), "alert_rule_test": checks}],
    }
    path = tmp_path / "real.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
