"""What a backup prints: each result, and restore commands that work as printed.

Each suggested restore goes to a target that exists or can exist: a new
database beside the source (PostgreSQL, MariaDB/MySQL), a new directory beside
the source's root (files), a sibling prefix in the source's bucket (bucket).
A Redis restore loads into a *running* server; when none answers on the
suggested port, the line before it starts a spare one.
"""

from __future__ import annotations

import shlex
import shutil
import socket

from cli.invocation import command
from core.units import human_bytes  # noqa: F401  (cli.main imports it from here)

REDIS_SPARE_PORTS = range(6380, 6400)
_LOCAL = {"127.0.0.1", "localhost", "::1"}


def _redis_state(port: int) -> str:
    """'redis' if a Redis answers PING on 127.0.0.1:port, 'free' if nothing listens, else 'other'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except ConnectionRefusedError:
        return "free"
    except OSError:
        return "other"
    return "redis" if reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR")) else "other"


def redis_lines(name: str, source, has_password: bool, backup_id: str, stack: str) -> list[str]:
    """Commands to restore a Redis backup into a spare server (started first if none runs)."""
    host_arg = [] if source is None or source.host in _LOCAL else ["--target", "host=127.0.0.1"]
    own = source.port if source is not None and source.host in _LOCAL else None
    for port in REDIS_SPARE_PORTS:
        if port == own:
            continue
        state = _redis_state(port)
        if state == "other":
            continue
        restore = command(
            "restore", "--source", name, "--backup-id", backup_id, *host_arg,
            "--target", f"port={port}", stack=stack,
        )  # fmt: skip
        if state == "redis":
            return [
                f"# a Redis answers on 127.0.0.1:{port} (an empty one is needed; one holding data is refused)",
                restore,
            ]
        if has_password:
            return [
                f"# a Redis restore loads into a running server: start a spare one on port {port} that accepts "
                f"{name}'s password (requirepass), then:",
                restore,
            ]
        server = shutil.which("redis-server") or "redis-server"
        home = f"/tmp/genesis-dr-redis-{port}"  # private: a replica keeps what it loads there
        start = (
            f"mkdir -p -m 700 {home} && {shlex.quote(server)} --port {port} --dir {home} --save '' --appendonly no "
            f"--repl-diskless-load on-empty-db --daemonize yes --pidfile {home}/redis.pid --logfile {home}/redis.log"
        )
        return [
            f"# a Redis restore loads into a running server; none runs on 127.0.0.1:{port}, so start a spare one "
            f"(stop it later: redis-cli -p {port} shutdown nosave):",
            start,
            restore,
        ]
    return ["# start a spare Redis (e.g. redis-server --port 6400) and restore into it with --target port=PORT"]


def restore_lines(result: dict, stack: str, description=None) -> list[str]:
    """Pasteable commands that restore ``result`` (a backup) into a fresh target beside its source.

    ``description`` (the stack's local description, if any) gives the source's database, root or port.
    """
    name, backup_id, kind = result["source"], result["id"], result["kind"]
    source = next((s for s in description.sources if s.name == name), None) if description else None
    base = ["--source", name, "--backup-id", backup_id]
    if kind == "redis":
        has_password = bool(description and description.needs_secret(name))
        return redis_lines(name, source, has_password, backup_id, stack)
    if kind in ("postgres", "mysql"):
        database = getattr(source, "database", None) or name.replace("-", "_")
        target = [f"database={database}_restored"]
    elif kind == "files":
        root = getattr(source, "root", None)
        target = [f"root={root.rstrip('/')}-restored" if root else f"root=/tmp/{name}-restored"]
    elif kind == "bucket":
        prefix = (getattr(source, "prefix", "") or "").strip("/")
        if prefix:  # beside the source in the same bucket: a sibling prefix the source does not cover
            target = [f"prefix={prefix}-restored/"]
        else:  # a whole bucket: another bucket (a restore never creates one)
            bucket = getattr(source, "bucket", None) or name
            args = base + ["--target", shlex.quote(f"bucket={bucket}-restored")]
            return [
                f"# create the bucket {bucket}-restored first (a restore never creates buckets), then:",
                command("restore", *args, stack=stack),
            ]
    else:
        target = []
    args = base + [arg for t in target for arg in ("--target", shlex.quote(t))]
    return [command("restore", *args, stack=stack)]


def print_backups(results: list[dict], stack: str, description=None) -> None:
    """Print each backup taken and how to restore it (``description``: the stack's local description, if any)."""
    for r in results:
        if r.get("status") == "SKIPPED":  # an incremental that would have overlapped the previous backup
            why = (r.get("reason") or "no reason recorded").removeprefix("skipped: ")
            print(f"{r['source']}: SKIPPED {r['type']} backup ({why})")
            continue
        print(
            f"{r['source']}: {r['status']} {r['id']}  {human_bytes(r['plain_bytes'])} -> "
            f"{human_bytes(r['stored_bytes'])} stored in {r['vault']}"
        )
        for entry in r.get("skipped") or []:
            print(f"  SKIPPED (the stack allows it): {entry}")
    taken = [r for r in results if r.get("status") != "SKIPPED"]
    if not taken:
        return
    print("\nTo restore into a new target beside the source (add --dry-run to see the plan first):")
    for r in taken:
        for line in restore_lines(r, stack, description):
            print(f"  {line}")
