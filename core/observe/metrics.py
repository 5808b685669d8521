"""A stack's snapshot as Prometheus metrics: a prometheus_client Collector, its registry, and the textfile.

The metric names are the contract the alert rules and the Grafana dashboard use
(deployments/alerts.rules.yml, deployments/grafana-dashboard.json): change one only together with them.
Every metric carries the ``stack`` label. Timestamps are Unix seconds. A source with nothing recoverable
has ``genesis_dr_rpo_seconds`` +Inf, so an RPO alert fires for it too. Counters are read from the vault
(every backup it records, every validation and drill in its history), so they survive restarts of the
exporter and count runs made by any host.

``genesis_dr_vault_total_bytes`` of a local vault is the room the vault has: what it holds plus the free
space of its file system, so ``used / total`` reaches 1 exactly when the disk is full, whatever else
shares it; cloud stores have no total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.chains import parse_iso
from core.errors import DRError
from core.observe.snapshot import StackSnapshot

PREFIX = "genesis_dr_"
SnapshotProvider = Callable[[], StackSnapshot]


def _ts(when: str) -> float:
    return parse_iso(when).timestamp()


class _Families:
    """The metric families of one snapshot, created on first use, in a fixed order."""

    def __init__(self) -> None:
        self.found: dict[str, Metric] = {}

    def add(self, name: str, doc: str, labels: dict[str, str], value: float, counter: bool = False) -> None:
        family = self.found.get(name)
        if family is None:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = self.found[name] = kind(PREFIX + name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), value)


def families(snap: StackSnapshot) -> list[Metric]:
    """Every metric of ``snap`` (the contract's names; see the module)."""
    out = _Families()
    add = out.add
    stack = {"stack": snap.stack}
    for src in snap.sources:
        one = stack | {"source": src.name}
        for backup_type, b in sorted(src.last_success.items()):
            labels = one | {"type": backup_type}
            add("backup_last_success_timestamp_seconds", "End of the newest completed backup.", labels, _ts(b.ended_at))
            add("backup_last_duration_seconds", "Wall time of the newest completed backup.", labels, b.duration_s)
            add("backup_last_size_bytes", "Plain bytes of the newest completed backup.", labels, b.plain_bytes)
            add(
                "backup_last_stored_bytes",
                "Bytes the newest completed backup takes in the vault (compressed and encrypted).",
                labels,
                b.stored_bytes,
            )
        for backup_type, b in sorted(src.last_failure.items()):
            add(
                "backup_last_failure_timestamp_seconds",
                "End of the newest failed backup.",
                one | {"type": backup_type},
                _ts(b.ended_at),
            )
        for backup_type, counts in sorted(src.counts.items()):
            for status, n in sorted(counts.items()):
                add(
                    "backups",
                    "Backups the vault records, by outcome.",
                    one | {"type": backup_type, "status": status},
                    n,
                    counter=True,
                )
        skipped = dict.fromkeys(t for t in src.backup_types if t == "incremental") | src.skipped
        for backup_type, n in sorted(skipped.items()):
            add(
                "backup_skipped",
                "Backups skipped because the previous one of the source was still running.",
                one | {"type": backup_type},
                n or 0,
                counter=True,
            )
        for backup_type, seconds in sorted(src.interval_s.items()):
            add(
                "backup_interval_seconds",
                "Longest gap between two scheduled backups of this type.",
                one | {"type": backup_type},
                seconds,
            )
        if src.captures_log:
            add("capture_running", "1 while a capture of the source's log holds its lease.", one, src.capture_running)
            if src.capture_lag_s is not None:
                add("capture_lag_seconds", "Now minus the end of the newest shipped log piece.", one, src.capture_lag_s)
        add(
            "rpo_seconds",
            "Now minus the newest recoverable point (+Inf: nothing recoverable).",
            one,
            float("inf") if src.rpo_s is None else src.rpo_s,
        )
        add("rpo_objective_seconds", "The source's recovery point objective.", one, src.rpo_objective_s)
        for level, v in sorted(src.validations.items()):
            labels = one | {"level": level}
            add("validation_last_timestamp_seconds", "End of the newest validation.", labels, _ts(v.at))
            add("validation_last_success", "1 if the newest validation passed.", labels, v.passed)
        for backup_type in sorted(src.last_success):
            add(
                "operation_slow",
                "1 if the newest run took more than slow_factor times its recent median.",
                one | {"operation": backup_type},
                backup_type in src.slow,
            )
    add("rto_objective_seconds", "The stack's recovery time objective.", stack, snap.rto_objective_s)
    for replica in snap.replicas:
        if replica.lag_s is not None:
            add(
                "replication_lag_seconds",
                "Age of the oldest backup or log piece the replica lacks (0: in sync).",
                stack | {"replica": replica.name},
                replica.lag_s,
            )
    for tier, d in sorted(snap.drills.items()):
        labels = stack | {"tier": tier}
        add("drill_last_timestamp_seconds", "End of the newest drill of the tier.", labels, _ts(d.at))
        add("drill_last_success", "1 if the newest drill of the tier passed.", labels, d.passed)
        if d.rto_s is not None:
            add("drill_rto_seconds", "Measured RTO of the newest drill of the tier.", labels, d.rto_s)
        if d.rpo_s is not None:
            add("drill_rpo_seconds", "Measured RPO (worst source) of the newest drill.", labels, d.rpo_s)
    for operation in snap.timed_operations:  # stack-wide: no source (as a drill's failure without one)
        add(
            "operation_slow",
            "1 if the newest run took more than slow_factor times its recent median.",
            stack | {"source": "", "operation": operation},
            operation in snap.slow,
        )
    for usage in snap.usage:
        labels = stack | {"vault": usage.vault}
        add("vault_used_bytes", "Bytes of backups and log pieces in the vault.", labels, usage.used_bytes)
        if usage.total_bytes is not None:
            add("vault_total_bytes", "Local vault: used plus the file system's free space.", labels, usage.total_bytes)
    if snap.failover is not None:
        add("healthy_regions", "Regions the failover monitor does not count down.", stack,
            len(snap.failover.healthy_regions))  # fmt: skip
        add("active_region_info", "The active region.", stack | {"region": snap.failover.active_region}, 1)
    for f in snap.failures:
        add(
            "failures",
            "Failed backups, validations and drills the vault records, by error class.",
            stack | {"source": f.source, "activity": f.activity, "error_class": f.error_class},
            f.count,
            counter=True,
        )
    add("holds_active", "Active legal holds.", stack, len(snap.holds))
    add("scrape_timestamp_seconds", "When this snapshot of the vault was taken.", stack, snap.taken.timestamp())
    return list(out.found.values())


class SnapshotCollector(Collector):
    """Collects the metrics of the snapshot ``provider`` returns at each scrape."""

    def __init__(self, provider: SnapshotProvider) -> None:
        self.provider = provider

    def collect(self) -> Iterator[Metric]:
        yield from families(self.provider())

    def describe(self) -> list[Metric]:
        return []  # registering must not read the vault


class CachedSnapshot:
    """``build()`` at most once every ``ttl`` seconds: a burst of scrapes (several Prometheus servers, a
    dashboard refresh) reads the vault once. Thread-safe: the HTTP server answers scrapes in threads.

    A read that fails (the vault out of reach: a DRError) keeps the last good snapshot, told to ``warn``:
    its ``genesis_dr_scrape_timestamp_seconds`` ages, so the stale-metrics alert fires, as it does for a
    textfile the failing command could not rewrite. With no good snapshot yet, the error is raised.
    """

    def __init__(
        self,
        build: SnapshotProvider,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.build, self.ttl, self.clock, self.warn = build, ttl, clock, warn
        self._lock = threading.Lock()
        self._snap: StackSnapshot | None = None
        self._at = 0.0

    def __call__(self) -> StackSnapshot:
        with self._lock:
            if self._snap is None or self.clock() - self._at >= self.ttl:
                try:
                    self._snap = self.build()
                except DRError as exc:
                    if self._snap is None:
                        raise
                    if self.warn is not None:
                        self.warn(f"{exc}; serving the snapshot of {self._snap.taken_at}")
                self._at = self.clock()
            return self._snap


def registry_for(provider: SnapshotProvider) -> CollectorRegistry:
    """A registry holding only the stack's metrics (no process or Python metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(provider))
    return registry


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Write the exposition to ``path`` for node-exporter's textfile collector (temp file + rename: a reader
    never sees half of it). The path should end in ``.prom``."""
    write_to_textfile(path, registry)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port). ``:9464`` (or ``9464``) listens on every interface (node-exporter's convention);
    ``127.0.0.1:9464`` on the loopback only; ``[::]:9464`` on every IPv6 interface. ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep and text.isdigit():
        host, sep, port = "", ":", text  # a bare port: every interface, as ':PORT'
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. ':9464' or '127.0.0.1:9464')")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(registry: CollectorRegistry, host: str, port: int):
    """Serve the metrics over HTTP (any path, as prometheus_client does) in a daemon thread; returns
    (server, thread): ``server.shutdown()`` stops it. A scrape the vault cannot answer gets HTTP 503 and
    the one-line error (no traceback), so Prometheus marks the target down."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        try:
            return metrics_app(environ, start_response)
        except DRError as exc:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"genesis-dr: {exc}\n".encode()]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass  # one line per scrape would drown the service's log

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # '::' is IPv6

    server = make_server(host, port, app, Server, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, name="genesis-dr-metrics", daemon=True)
    thread.start()
    return server, thread
