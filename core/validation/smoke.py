"""The stack's smoke queries, run on a restored source after its data checks.

One ``CheckResult`` per query, named after it: PostgreSQL and MariaDB run the SQL and
take the first column of the first row; Redis runs the command (``DBSIZE``,
``GET key``); a files source checks that the path exists below the root (and, with
``expect``, that the file holds that text). Without ``expect`` any successful answer
passes. A value is shown only when it differs from the ``expect`` the stack wrote.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from core import tls
from core.errors import redact
from core.validation.config import SmokeQuery
from core.validation.results import CheckResult

CONNECT_TIMEOUT_S = 10


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _short(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "NULL"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _secret(config: Any, name: str) -> str | None:
    value = getattr(config, name, None)
    return value.get_secret_value() if value is not None else None


def _postgres(config: Any, query: str) -> str | None:
    import psycopg

    kwargs = dict(
        host=config.host,
        port=config.port,
        user=config.user,
        password=_secret(config, "password"),
        dbname=config.database,
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )
    # As the engine does: a cluster the restore started itself (data_dir) is reached over loopback without TLS.
    if not getattr(config, "data_dir", None):
        kwargs.update(tls.libpq_params(config.tls, config.host, config.sslmode))
    with psycopg.connect(**kwargs) as conn:
        cur = conn.execute(query)
        row = cur.fetchone() if cur.description else None
        return _text(row[0]) if row else None


def _mysql(config: Any, query: str) -> str | None:
    import pymysql

    kwargs: dict[str, Any] = dict(
        user=config.user,
        password=_secret(config, "password") or "",
        database=config.database,
        charset="utf8mb4",
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )
    if config.socket:
        kwargs["unix_socket"] = config.socket
    else:
        kwargs.update(
            host=config.host,
            port=config.port,
            **tls.pymysql_ssl(config.tls, f"mysql '{config.name}' at {config.host}:{config.port}"),
        )
    conn = pymysql.connect(**kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone() if cur.description else None
            return _text(row[0]) if row else None
    finally:
        conn.close()


def _redis(config: Any, query: str) -> str | None:
    client = tls.redis_client(
        config.tls,
        config.name,
        host=config.host,
        port=config.port,
        username=config.username,
        password=_secret(config, "password"),
        db=config.db or 0,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
    try:
        reply = client.execute_command(*shlex.split(query))
    finally:
        client.close()
    if isinstance(reply, list):
        reply = reply[0] if reply else None
    return _text(reply)


def _files(config: Any, query: str) -> str | None:
    root = Path(config.root).resolve()
    path = (root / query).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {query!r} leaves the root; give a path below it")
    if not path.exists():
        raise FileNotFoundError(f"{query} does not exist below the restored root")
    return path.read_text(errors="replace").strip() if path.is_file() else ""


_RUNNERS = {"postgres": _postgres, "mysql": _mysql, "redis": _redis, "files": _files}


def run_smoke(engine_config: Any, queries: list[SmokeQuery | str]) -> list[CheckResult]:
    """Run ``queries`` against the restored ``engine_config``; one result per query, never raising."""
    out = []
    kind, source = engine_config.kind, engine_config.name
    for raw in queries:
        query = raw if isinstance(raw, SmokeQuery) else SmokeQuery.model_validate(raw)
        name = f"smoke: {_short(query.query)}"
        started = time.monotonic()
        runner = _RUNNERS.get(kind)
        if runner is None:
            out.append(CheckResult(name, True, f"no smoke queries for {kind} sources", source=source, checked=False))
            continue
        try:
            value = runner(engine_config, query.query)
        except Exception as exc:  # the query's own failure is the check's result
            detail = redact(
                _short(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 160),
                engine_config.secrets(),
            )
            out.append(
                CheckResult(
                    name,
                    False,
                    f"failed: {detail}",
                    remedy="the restored data does not answer the stack's smoke query; investigate the backup, or fix "
                    "the query in validation.smoke_queries",
                    source=source,
                    seconds=round(time.monotonic() - started, 3),
                )
            )
            continue
        seconds = round(time.monotonic() - started, 3)
        if query.expect is not None and value != query.expect:
            out.append(
                CheckResult(
                    name,
                    False,
                    f"returned {_short(value)!s}, expected {_short(query.expect)}",
                    remedy="the restored data differs from what the stack expects; investigate the backup, or update "
                    "the expected value in validation.smoke_queries",
                    source=source,
                    seconds=seconds,
                )
            )
            continue
        detail = f"returned the expected {_short(query.expect)}" if query.expect is not None else "answered"
        out.append(CheckResult(name, True, detail, source=source, seconds=seconds))
    return out
