"""Starting a throw-away server of each kind inside a sandbox directory.

Each starter fills ``box`` (its marker lists every process and cluster as soon as it
exists, so a crash at any point leaves something the sweep can stop) and returns the
source config pointing at the new server. Servers bind 127.0.0.1 only, on the
sandbox's port; passwords are random per sandbox and go to the servers through 0600
files or the admin socket, never on a command line.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from core.errors import SandboxError
from core.sandbox.processes import HOST, find_binary, log_tail, run_tool, wait_listening
from core.sandbox.registry import as_user, process_start

if TYPE_CHECKING:
    from core.sandbox.sandbox import Sandbox

PG_BINDIRS = ("/usr/lib/postgresql/*/bin/{}",)


def _ids(user: str, source: str) -> tuple[int, int] | None:
    """uid/gid of the server's user when we are root (the servers refuse to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SandboxError(
            f"sandbox for {source}: running as root and there is no '{user}' user to run the server as; create it "
            "(the server package does) or run as another user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _reachable(box: Sandbox, user: str) -> None:
    """Every directory above the sandbox must let the server's user pass (a 0700 home or test dir does not)."""
    for parent in box.path.parents:
        if not parent.stat().st_mode & 0o001:
            raise SandboxError(
                f"sandbox for {box.source}: {parent} is closed to the '{user}' user the server runs as, so it cannot "
                "reach its sandbox; set GENESIS_DR_SANDBOX_DIR to a directory below /tmp or /var/tmp"
            )


def _server_dir(box: Sandbox, name: str, ids: tuple[int, int] | None, user: str = "") -> Path:
    if ids:
        _reachable(box, user)
    path = box.path / name
    path.mkdir(mode=0o700)
    if ids:
        os.chown(path, *ids)
    return path


def _secret_file(path: Path, text: str, ids: tuple[int, int] | None) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if ids:
        os.chown(path, *ids)
    return path


def _spawn(argv: list[str], log: Path, box: Sandbox) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    box.add_process(proc.pid, process_start(proc.pid))
    box.procs.append(proc)
    return proc


# -- PostgreSQL -----------------------------------------------------------------------------


def postgres_tools(source: str) -> dict[str, str]:
    return {
        name: find_binary(name, "postgresql", *(p.format(name) for p in PG_BINDIRS), source=source)
        for name in ("initdb", "pg_ctl", "postgres")
    }


def start_postgres(box: Sandbox, config: Any, port: int) -> Any:
    """initdb + pg_ctl start of a new cluster (as ``postgres`` when root); superuser ``postgres``
    with a random password over TCP, no Unix socket."""
    tools = postgres_tools(config.name)
    ids = _ids("postgres", config.name)
    home = _server_dir(box, "pg", ids, "postgres")
    data_dir = home / "data"
    password = secrets.token_urlsafe(24)
    pwfile = _secret_file(home / "pwfile", password + "\n", ids)
    try:
        run_tool(
            as_user(
                "postgres",
                [
                    tools["initdb"],
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",  # thrown away after the check: a crash loses nothing worth syncing
                    "--no-instructions",
                ],
            ),
            "initdb",
            config.name,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    box.add_cluster(data_dir, "postgres", tools["pg_ctl"])
    log = home / "server.log"
    options = f"-c port={port} -c listen_addresses={HOST} -c unix_socket_directories=''"
    proc = subprocess.run(
        as_user(
            "postgres",
            [tools["pg_ctl"], "-D", str(data_dir), "-l", str(log), "-o", options, "-w", "-t", "120", "start"],
        ),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise SandboxError(f"sandbox for {config.name}: postgres did not start on {HOST}:{port}: {log_tail(log)}")
    return config.model_copy(
        update={
            "host": HOST,
            "port": port,
            "user": "postgres",
            "password": SecretStr(password),
            # A throw-away server on this host, reached over loopback: no TLS (it has no certificate).
            "sslmode": None,
            "tls": None,
            "data_dir": None,
        }
    )


def physical_postgres(box: Sandbox, config: Any, port: int) -> Any:
    """No server yet: the restore builds the cluster in ``data`` and starts it on ``port`` as the
    source's own roles (it is a copy of the source cluster). Recorded so teardown stops it."""
    if _ids("postgres", config.name):
        _reachable(box, "postgres")
    pg_ctl = shutil.which("pg_ctl")
    box.add_cluster(box.path / "data", "postgres", pg_ctl)
    return config.model_copy(
        update={"host": HOST, "port": port, "data_dir": str(box.path / "data"), "sslmode": None, "tls": None}
    )


# -- MariaDB / MySQL ------------------------------------------------------------------------

SANDBOX_MYSQL_USER = "genesis_dr"


def start_mysql(box: Sandbox, config: Any, port: int) -> Any:
    install = find_binary("mariadb-install-db", "mariadb-server", "/usr/bin/mysql_install_db", source=config.name)
    server = find_binary("mariadbd", "mariadb-server", "/usr/sbin/mariadbd", "/usr/sbin/mysqld", source=config.name)
    ids = _ids("mysql", config.name)
    home = _server_dir(box, "mysql", ids, "mysql")
    run_as = ["--user=mysql"] if ids else []
    run_tool(
        [
            install,
            "--no-defaults",
            f"--datadir={home / 'data'}",
            *run_as,
            "--auth-root-authentication-method=normal",  # root: no password, socket only, set just below
            "--skip-test-db",
        ],
        "mariadb-install-db",
        config.name,
        # Its bootstrap server names temporary tables after its pid in TMPDIR: two sandboxes set up at once
        # in a shared /tmp collided ("Can't find file '/tmp/#sql-temptable-...MAI'"), so each gets its own.
        env={"TMPDIR": str(home)},
    )
    sock = home / "mysqld.sock"
    log = home / "error.log"
    _spawn(
        [
            server,
            "--no-defaults",
            f"--datadir={home / 'data'}",
            f"--socket={sock}",
            f"--tmpdir={home}",
            f"--port={port}",
            f"--bind-address={HOST}",
            *run_as,
            f"--pid-file={home / 'mysqld.pid'}",
            f"--log-error={log}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--event-scheduler=OFF",  # restored events must not change the data before it is compared
            "--max-allowed-packet=1G",  # the largest row a dump may hold
        ],
        home / "stdout.log",
        box,
    )
    wait_listening(box.procs[-1], port, log, "mariadbd", config.name)
    password = secrets.token_urlsafe(24)
    import pymysql  # only here: the sandbox module is imported by code that never starts MariaDB

    admin = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
    with admin, admin.cursor() as cur:
        cur.execute(f"CREATE USER '{SANDBOX_MYSQL_USER}'@'{HOST}' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{SANDBOX_MYSQL_USER}'@'{HOST}' WITH GRANT OPTION")
        cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (secrets.token_urlsafe(24),))
    return config.model_copy(
        update={
            "host": HOST,
            "port": port,
            "socket": None,
            "user": SANDBOX_MYSQL_USER,
            "password": SecretStr(password),
            "tls": None,
        }
    )


# -- Redis ----------------------------------------------------------------------------------


def start_redis(box: Sandbox, config: Any, port: int) -> Any:
    binary = find_binary("redis-server", "redis-server", source=config.name)
    home = _server_dir(box, "redis", None)
    password = secrets.token_urlsafe(24)
    log = home / "redis.log"
    lines = [
        f"port {port}",
        f"bind {HOST}",
        'save ""',  # no persistence: the sandbox is thrown away
        "appendonly no",
        f"dir {home}",
        "repl-diskless-sync-delay 0",
        "loglevel notice",
        f"logfile {log}",
        f"requirepass {password}",
    ]
    conf = _secret_file(home / "redis.conf", "\n".join(lines) + "\n", None)
    _spawn([binary, str(conf)], home / "stdout.log", box)
    wait_listening(box.procs[-1], port, log, "redis-server", config.name)
    return config.model_copy(
        update={"host": HOST, "port": port, "username": None, "password": SecretStr(password), "tls": None}
    )


# -- files ----------------------------------------------------------------------------------


def files_root(box: Sandbox, config: Any) -> Any:
    root = box.path / "root"
    root.mkdir(mode=0o700)
    return config.model_copy(update={"root": str(root)})
