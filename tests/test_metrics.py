"""``genesis-dr metrics``: the Prometheus exposition of a real vault, scraped over HTTP and parsed with
prometheus_client's own parser; every value is compared with what the vault records.

The stack is test_status's (``build_observed_stack``): backups, a failed one, a captured log, a quick
validation, a monthly drill, a replica one backup behind, a hold and a failover state.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.chains import parse_iso
from core.errors import VaultError
from core.observe.metrics import CachedSnapshot, registry_for, serve
from core.observe.snapshot import build_snapshot
from core.repository.manifest import COMPLETED
from tests.servers import free_port
from tests.test_status import build_observed_stack, newest, run_cli

STACK = "observe-metrics"
REPO = Path(__file__).resolve().parents[1]
CONTRACT = {
    "genesis_dr_backup_last_success_timestamp_seconds", "genesis_dr_backup_last_failure_timestamp_seconds",
    "genesis_dr_backup_last_duration_seconds", "genesis_dr_backup_last_size_bytes",
    "genesis_dr_backup_last_stored_bytes", "genesis_dr_backups_total", "genesis_dr_backup_skipped_total",
    "genesis_dr_backup_interval_seconds", "genesis_dr_capture_running", "genesis_dr_capture_lag_seconds",
    "genesis_dr_rpo_seconds", "genesis_dr_rpo_objective_seconds", "genesis_dr_rto_objective_seconds",
    "genesis_dr_replication_lag_seconds", "genesis_dr_validation_last_timestamp_seconds",
    "genesis_dr_validation_last_success", "genesis_dr_drill_last_timestamp_seconds", "genesis_dr_drill_last_success",
    "genesis_dr_drill_rto_seconds", "genesis_dr_drill_rpo_seconds", "genesis_dr_vault_used_bytes",
    "genesis_dr_vault_total_bytes", "genesis_dr_healthy_regions", "genesis_dr_active_region_info",
    "genesis_dr_operation_slow", "genesis_dr_failures_total", "genesis_dr_holds_active",
    "genesis_dr_scrape_timestamp_seconds",
}  # fmt: skip
# The commands' own parser entries, as 'genesis-dr' runs them (SIGTERM stops a command cleanly).
CLI = """
import argparse, sys
from cli.metrics import register
from core import cancel
p = argparse.ArgumentParser(prog="genesis-dr")
register(p.add_subparsers(dest="command", required=True))
args = p.parse_args(sys.argv[1:])
with cancel.stop_on_signals():
    sys.exit(args.func(args))
"""


@pytest.fixture(scope="module")
def observed(tmp_path_factory, redis_session, sandbox_root) -> SimpleNamespace:
    return build_observed_stack(tmp_path_factory.mktemp("observe-metrics"), redis_session("observe"), STACK)


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted label pairs without stack) -> value, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.pop("stack") == STACK
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def names(found: dict) -> set[str]:
    return {key[0] for key in found}


def check_vault_facts(found: dict, observed) -> None:
    vault = observed.vault
    full, incr = newest(vault, "app-files", "full"), newest(vault, "app-files", "incremental")
    failed = newest(vault, "broken-files", "full", "FAILED")
    scraped = found[("genesis_dr_scrape_timestamp_seconds",)]

    def one(name: str, **labels) -> float:
        return found[(name, *sorted(labels.items()))]

    stamp = "genesis_dr_backup_last_success_timestamp_seconds"
    assert one(stamp, source="app-files", type="full") == parse_iso(full.ended_at).timestamp()
    assert one(stamp, source="app-files", type="incremental") == parse_iso(incr.ended_at).timestamp()
    assert one("genesis_dr_backup_last_stored_bytes", source="app-files", type="full") == full.stored_bytes
    assert one("genesis_dr_backup_last_size_bytes", source="app-files", type="incremental") == incr.plain_bytes
    assert one("genesis_dr_backup_last_duration_seconds", source="app-files", type="full") == round(
        (parse_iso(full.ended_at) - parse_iso(full.started_at)).total_seconds(), 3
    )
    assert one("genesis_dr_backups_total", source="app-files", type="incremental", status="completed") == 2
    assert one("genesis_dr_backups_total", source="broken-files", type="full", status="failed") == 1
    assert one("genesis_dr_backup_last_failure_timestamp_seconds", source="broken-files", type="full") == (
        parse_iso(failed.ended_at).timestamp()
    )
    assert (
        one("genesis_dr_failures_total", source="broken-files", activity="backup", error_class="SourceUnavailableError")
        == 1
    )
    assert one("genesis_dr_backup_skipped_total", source="app-files", type="incremental") == 1
    assert one("genesis_dr_operation_slow", source="app-files", operation="incremental") == 0

    last_log = parse_iso(vault.log_pieces("cache")[-1].last_time).timestamp()
    assert one("genesis_dr_capture_running", source="cache") == 0
    assert one("genesis_dr_capture_lag_seconds", source="cache") == pytest.approx(scraped - last_log, abs=1e-3)
    assert one("genesis_dr_rpo_seconds", source="cache") == pytest.approx(scraped - last_log, abs=1e-3)
    assert math.isinf(one("genesis_dr_rpo_seconds", source="broken-files"))  # nothing recoverable
    assert one("genesis_dr_rpo_objective_seconds", source="cache") == 600
    assert found[("genesis_dr_rto_objective_seconds",)] == 900

    assert one("genesis_dr_validation_last_success", source="app-files", level="quick") == 1
    assert one("genesis_dr_validation_last_success", source="broken-files", level="quick") == 0
    drill = observed.drill
    assert one("genesis_dr_drill_last_success", tier="monthly") == 1
    assert one("genesis_dr_drill_rto_seconds", tier="monthly") == drill.rto_s
    assert one("genesis_dr_drill_rpo_seconds", tier="monthly") == drill.sources["app-files"]["rpo_s"]
    assert one("genesis_dr_drill_last_timestamp_seconds", tier="monthly") == parse_iso(drill.ended_at).timestamp()
    behind = parse_iso(observed.behind.ended_at).timestamp()
    assert one("genesis_dr_replication_lag_seconds", replica="dr-copy") == pytest.approx(scraped - behind, abs=1e-3)

    completed = [m for m in vault.list_backups() if m.status == COMPLETED]
    used = sum(m.stored_bytes for m in completed) + sum(p.stream.stored_bytes for p in vault.log_pieces("cache"))
    assert one("genesis_dr_vault_used_bytes", vault="primary") == used
    assert one("genesis_dr_vault_used_bytes", vault="dr-copy") == used - observed.behind.stored_bytes
    assert one("genesis_dr_vault_total_bytes", vault="primary") >= used
    assert found[("genesis_dr_healthy_regions",)] == 2
    assert one("genesis_dr_active_region_info", region="us-east-1") == 1
    assert found[("genesis_dr_holds_active",)] == 1


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        return answer.read().decode()


def test_listen_serves_the_vaults_facts_over_http(observed):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "metrics", "--stack", STACK, "--listen", f"127.0.0.1:{port}"],
        cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.strip() == (
            f"serving the metrics of stack '{STACK}' on http://127.0.0.1:{port}/metrics (Ctrl-C stops)"
        ), proc.stderr.read() if proc.poll() is not None else line
        first, second = samples(scrape(port)), samples(scrape(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out.strip() == "stopped serving the metrics" and "Traceback" not in err, err
    check_vault_facts(first, observed)
    # a burst of scrapes reads the vault once (the snapshot is kept --cache-seconds)
    assert first == second
    assert names(first) == CONTRACT  # every name: the description carries the schedules (the intervals)


def test_textfile_and_stdout_hold_the_same_metrics(observed, tmp_path):
    path = tmp_path / "genesis_dr.prom"
    assert run_cli("metrics", "--stack", STACK, "--textfile", str(path)) == ""
    written = samples(path.read_text())
    check_vault_facts(written, observed)
    assert [p.name for p in tmp_path.iterdir()] == ["genesis_dr.prom"]  # written through a temp file, renamed
    printed = samples(run_cli("metrics", "--stack", STACK))
    assert names(printed) == names(written)
    # With the whole stack (blocks), the schedules give each type's interval: every name of the contract.
    full = samples(generate_latest(registry_for(lambda: build_snapshot(observed.config))).decode())
    assert names(full) == CONTRACT
    interval = "genesis_dr_backup_interval_seconds"
    assert full[(interval, ("source", "app-files"), ("type", "full"))] == 6 * 3600  # '0 */6 * * *'
    assert full[(interval, ("source", "app-files"), ("type", "incremental"))] == 300  # '*/5 * * * *'
    assert full[(interval, ("source", "cache"), ("type", "full"))] == 900  # the redis deployment, every 15 min


def test_cached_snapshot_reads_the_vault_once_per_ttl_and_keeps_the_last_good_one(observed):
    built, now, warned, fail = [], [100.0], [], [False]

    def build():
        if fail[0]:
            raise VaultError("vault local:/gone is out of reach")
        built.append(build_snapshot(observed.config))
        return built[-1]

    cached = CachedSnapshot(build, ttl=5.0, clock=lambda: now[0], warn=warned.append)
    assert cached() is cached() and len(built) == 1
    now[0] += 5.0
    assert cached() is built[1] and len(built) == 2
    # the vault out of reach: the last good snapshot (its scrape timestamp ages: the stale alert fires)
    fail[0], now[0] = True, now[0] + 5.0
    assert cached() is built[1]
    assert warned == [f"vault local:/gone is out of reach; serving the snapshot of {built[1].taken_at}"]


def test_a_vault_out_of_reach_from_the_start_answers_503_in_one_line():
    def build():
        raise VaultError("vault local:/gone is out of reach; check the stack's vault settings")

    port = free_port()
    server, _thread = serve(registry_for(CachedSnapshot(build)), "127.0.0.1", port)
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert caught.value.code == 503
        assert caught.value.read().decode() == (
            "genesis-dr: vault local:/gone is out of reach; check the stack's vault settings\n"
        )
    finally:
        server.shutdown()
        server.server_close()
