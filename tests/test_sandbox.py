"""Sandboxes: real throw-away servers started by our code, gone after the block whatever happened.

Each kind starts and answers on 127.0.0.1; an exception or KeyboardInterrupt inside the
block still stops it; a port taken and a binary missing are one-line SandboxErrors; a
run killed with SIGKILL inside a sandbox leaves it to the next start's sweep, which
stops its server. After every test no sandbox and no server process is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pymysql
import pytest
import redis

from core.errors import SandboxError
from core.sandbox import live_sandboxes, open_sandbox, sweep
from core.sandbox.registry import ROOT_ENV, read_marker
from core.sources import (
    BucketSourceConfig,
    FilesSourceConfig,
    MySQLSourceConfig,
    PostgresSourceConfig,
    RedisSourceConfig,
)
from tests.fixtures_sandbox import assert_no_sandbox_left

PG = PostgresSourceConfig(name="app-db", host="db.internal", port=5432, database="app", password="prod-secret")
MY = MySQLSourceConfig(name="shop-db", host="mysql.internal", database="shop", password="prod-secret")
RD = RedisSourceConfig(name="cache", host="redis.internal", password="prod-secret")


@pytest.fixture(autouse=True)
def _nothing_left(sandbox_root):
    yield
    assert_no_sandbox_left(sandbox_root)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_sandbox_answers_on_loopback_and_is_gone_after():
    with open_sandbox(PG) as box:
        c = box.config
        assert (c.kind, c.name, c.host, c.database, c.data_dir) == ("postgres", "app-db", "127.0.0.1", "app", None)
        assert c.password.get_secret_value() != "prod-secret"
        with psycopg.connect(
            host=c.host, port=c.port, user=c.user, password=c.password.get_secret_value(), dbname="postgres"
        ) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert box.started_s > 0
        assert box.describe().startswith(f"sandbox postgres on 127.0.0.1:{c.port}")
        assert live_sandboxes() == [box.path.name]
        port, path = c.port, box.path
    assert not _listening(port)
    assert not path.exists()


def test_mysql_sandbox_answers_with_its_own_user():
    with open_sandbox(MY) as box:
        c = box.config
        assert (c.host, c.socket, c.database) == ("127.0.0.1", None, "shop")
        conn = pymysql.connect(host=c.host, port=c.port, user=c.user, password=c.password.get_secret_value())
        with conn, conn.cursor() as cur:
            cur.execute("SELECT @@bind_address, @@event_scheduler")
            assert cur.fetchone() == ("127.0.0.1", "OFF")
        port = c.port
    assert not _listening(port)


def test_redis_sandbox_has_no_persistence_and_a_password():
    with open_sandbox(RD) as box:
        c = box.config
        client = redis.Redis(host=c.host, port=c.port, password=c.password.get_secret_value())
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=c.host, port=c.port).ping()
        client.close()


def test_files_sandbox_is_a_fresh_root(tmp_path):
    src = FilesSourceConfig(name="uploads", root=str(tmp_path), paths=["a", "b"])
    with open_sandbox(src) as box:
        root = Path(box.config.root)
        assert root.is_dir() and list(root.iterdir()) == []
        assert box.config.paths == ["a", "b"]
        (root / "restored.txt").write_text("x")
    assert not root.exists()


def test_physical_postgres_sandbox_has_a_data_dir_and_a_port_but_no_server():
    with open_sandbox(PG, physical=True) as box:
        c = box.config
        assert c.data_dir == str(box.path / "data") and not Path(c.data_dir).exists()
        assert c.host == "127.0.0.1" and not _listening(c.port)
        assert c.user == PG.user and c.password.get_secret_value() == "prod-secret"  # a copy of the source cluster


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_torn_down_when_the_block_raises(error):
    with pytest.raises(error):
        with open_sandbox(RD) as box:
            port = box.config.port
            assert _listening(port)
            raise error("boom")
    assert not _listening(port)


def test_port_taken_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SandboxError) as caught:
            with open_sandbox(RD, port=port):
                pass
    assert str(caught.value) == (
        f"sandbox for cache: port 127.0.0.1:{port} is taken; choose another port, or none to use a free one"
    )
    assert caught.value.exit_code == 23


def test_binary_missing_names_it_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError) as caught:
        with open_sandbox(RD):
            pass
    assert str(caught.value) == (
        "sandbox for cache: redis-server not found on PATH; install the Debian package redis-server "
        "(or put redis-server on PATH)"
    )


def test_bucket_sources_have_no_sandbox():
    with pytest.raises(SandboxError, match="no sandbox for bucket sources"):
        with open_sandbox(BucketSourceConfig(name="assets", bucket="b")):
            pass


def test_sandbox_of_a_killed_run_is_swept_with_its_server(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, sys
        from core.sandbox import open_sandbox
        from core.sources import RedisSourceConfig, PostgresSourceConfig
        with open_sandbox(RedisSourceConfig(name="cache")) as r, open_sandbox(PostgresSourceConfig(name="db")) as p:
            print(r.config.port, p.config.port, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    redis_port, pg_port = map(int, proc.stdout.split())
    assert _listening(redis_port) and _listening(pg_port)  # the killed run left them running
    left = live_sandboxes()
    assert len(left) == 2 and all(read_marker(Path(os.environ[ROOT_ENV]) / n) for n in left)
    assert sorted(n.split("-")[0] for n in sweep()) == ["postgres", "redis"]
    deadline = time.monotonic() + 10
    while (_listening(redis_port) or _listening(pg_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _listening(redis_port) and not _listening(pg_port)


def test_next_sandbox_sweeps_leftovers_first():
    script = textwrap.dedent(
        """
        import os, signal
        from core.sandbox import open_sandbox
        from core.sources import RedisSourceConfig
        with open_sandbox(RedisSourceConfig(name="cache")) as r:
            print(r.config.port, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60
    )
    port = int(proc.stdout)
    with open_sandbox(RD) as box:
        assert live_sandboxes() == [box.path.name]
        assert not _listening(port)
