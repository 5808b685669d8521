"""Beyond one machine, with Prefect's own pieces: a Prefect server on a throw-away PostgreSQL, a work pool per
site, and a worker per site (`genesis-dr serve --pool`, one against its own server, one against the central
one as a second machine would); the stack routes each source to its site's pool, and backups started at once
run on their site's worker and land in the vault."""

from __future__ import annotations

import secrets
import socket

from core.repository.manifest import COMPLETED
from core.stack import load_stack_file
from tests.servers import free_port
from tests.test_serve import GENESIS_DR, Served, all_off, client_at, secret_file, serve_env, wait_final, write_stack


def test_sources_routed_to_two_sites_run_on_their_sites_workers(pg_server, tmp_path):
    from prefect.client.schemas.objects import StateType

    roots = {}
    for site in ("a", "b"):
        roots[site] = tmp_path / f"files-{site}"
        (roots[site] / "etc").mkdir(parents=True)
        (roots[site] / "etc" / "site.conf").write_text(f"site={site}\n")
    stack_file = write_stack(
        tmp_path / "dr.yaml",
        {
            "stack": "default",
            "vault": {"type": "local", "path": str(tmp_path / "vault")},
            "encryption": {"passphrase_from": secret_file(tmp_path / "passphrase")},
            "operations": {"work_pool": "site-a"},
            "sources": [
                {"name": "files-a", "kind": "files", "root": str(roots["a"]), "paths": ["etc"]},
                {"name": "files-b", "kind": "files", "root": str(roots["b"]), "paths": ["etc"], "work_pool": "site-b"},
            ],
            "schedules": all_off(),
        },
    )
    database = pg_server.create_database(f"prefect_{secrets.token_hex(4)}")
    db_url = f"postgresql+asyncpg://{pg_server.user}:{pg_server.password}@{pg_server.host}:{pg_server.port}/{database}"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    host = socket.gethostname()

    # Site A's machine runs the central server (on PostgreSQL) and site A's worker; site B's machine only a
    # worker for its pool, against the central server.
    central = Served(
        [GENESIS_DR, "serve", "--apply", str(stack_file), "--port", str(port), "--pool", "site-a"],
        serve_env(tmp_path / "home-a", PREFECT_API_DATABASE_CONNECTION_URL=db_url),
        tmp_path / "site-a.log",
    )
    site_b = None
    try:
        central.wait_ready()
        assert "workers for pool(s) site-a;" in central.output()
        site_b = Served(
            [GENESIS_DR, "serve", "--stack", "default", "--pool", "site-b"],
            serve_env(tmp_path / "home-b", PREFECT_API_URL=api),
            tmp_path / "site-b.log",
        )
        site_b.wait_ready()
        assert f"using the Prefect server at {api}" in site_b.output()
        assert "starting a Prefect server" not in site_b.output()

        with client_at(port) as client:
            full_a = client.read_deployment_by_name("backup/full")
            full_b = client.read_deployment_by_name("backup/full-site-b")
            assert (full_a.work_pool_name, full_a.parameters.get("sources")) == ("site-a", ["files-a"])
            assert (full_b.work_pool_name, full_b.parameters.get("sources")) == ("site-b", ["files-b"])
            # Both started at once, as their schedules would when due together.
            started = [client.create_flow_run_from_deployment(d.id) for d in (full_a, full_b)]
            run_a, run_b = (wait_final(client, run.id, timeout=180) for run in started)
        for run, site in ((run_a, "site-a"), (run_b, "site-b")):
            assert run.state_type == StateType.COMPLETED, (site, run.state)
            assert run.work_pool_name == site
            assert run.labels["prefect.worker.name"] == f"{host}-{site}"

        vault = load_stack_file(stack_file).vault.open()
        for source in ("files-a", "files-b"):
            assert [(b.type, b.status) for b in vault.list_backups(source)] == [("full", COMPLETED)]

        assert site_b.terminate()[0] == 0
        assert central.terminate()[0] == 0
    finally:
        for served in (site_b, central):
            if served is not None:
                served.kill()
