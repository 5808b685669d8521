"""prefect.yaml as an operator uses it: the README's recipe run verbatim against a fresh
server and a worker, and the restore deployment's approval over a live target."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def readme_recipe() -> list[str]:
    """The commands of the README's deployment recipe, in order, as written (comments included)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Deployments") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md, Deployments: no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process group we started (a backgrounded worker ignores SIGTERM for a while; SIGINT works)."""
    # The group outlives its leader (the recipe's shell exits with its worker still running).
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def clean_env(**extra: str) -> dict[str, str]:
    """This test run's environment without pytest's or Prefect's settings (a fresh shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PREFECT_", "GENESIS_DR_APPLY"))}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1"} | extra
    return env


def wait_for_state(flow_run_id, done, timeout: float = 240):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and done(state):
                return state
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {state and state.name}"
            time.sleep(1)


# The source documents' cadence (UTC): what prefect.yaml deploys when the stack file says nothing.
DOCUMENTS_CADENCE = {
    "full": ("0 */6 * * *", True, 1, "ENQUEUE"),
    "differential": ("0 * * * *", True, 1, "CANCEL_NEW"),
    "incremental": ("*/5 * * * *", True, 1, "CANCEL_NEW"),
    "redis": ("*/15 * * * *", True, 1, "CANCEL_NEW"),
    # Kept alive: due every 5 minutes, cancelled at once while the live capture holds the one slot.
    "capture": ("*/5 * * * *", True, 1, "CANCEL_NEW"),
    # Every 5 minutes, and after every completed backup (its trigger); one run at a time.
    "replicate": ("*/5 * * * *", True, 1, "CANCEL_NEW"),
    # Daily integrity validation and weekly restore tests; daily, weekly and monthly drills; queued, never dropped.
    "validate-integrity": ("0 2 * * *", True, 1, "ENQUEUE"),
    "validate-restore": ("0 3 * * 0", True, 1, "ENQUEUE"),
    "drill-daily": ("30 2 * * *", True, 1, "ENQUEUE"),
    "drill-weekly": ("0 4 * * 0", True, 1, "ENQUEUE"),
    "drill-monthly": ("0 5 1 * *", True, 1, "ENQUEUE"),
    # The health monitor every minute; a run still probing a hung region is not doubled.
    "monitor": ("* * * * *", True, 1, "CANCEL_NEW"),
    # The retention sweep daily, queued (two sweeps never delete side by side); the audit trail verified after it.
    "retention": ("0 3 * * *", True, 1, "ENQUEUE"),
    "audit-verify": ("45 3 * * *", True, 1, "CANCEL_NEW"),
    # genesis-dr itself into the vault daily (after the sweep and the audit), queued.
    "self-backup": ("15 4 * * *", True, 1, "ENQUEUE"),
    # On demand: a paused placeholder schedule each (a stack file's cron turns it on).
    "drill-full": ("0 0 1 1 *", False, 1, "ENQUEUE"),
    "restore": ("0 0 1 1 *", False, None, None),
    "failover": ("0 0 1 1 *", False, 1, "ENQUEUE"),
    "failback": ("0 0 1 1 *", False, 1, "ENQUEUE"),
    "hold": ("0 0 1 1 *", False, 1, "ENQUEUE"),
    "erase": ("0 0 1 1 *", False, 1, "ENQUEUE"),
}


def yaml_deployments() -> list[str]:
    import yaml

    return [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]


def check_deployed(by_name: dict, pool: str = "genesis-dr", suffix: str = "") -> None:
    """Every deployment has exactly one schedule of ours, a valid cron in UTC, and its pool and queue."""
    from prefect._vendor.croniter import croniter  # the parser Prefect's scheduler uses

    from deployments.queues import QUEUE_OF

    for name, deployment in by_name.items():
        base = name.removesuffix(suffix)
        ours = [s for s in deployment.schedules if s.slug == "genesis-dr-stack"]
        assert len(ours) == 1 and croniter.is_valid(ours[0].schedule.cron), (name, ours)
        assert croniter(ours[0].schedule.cron).get_next(float) > time.time(), (name, ours)
        assert ours[0].schedule.timezone == "UTC", (name, ours)
        assert (deployment.work_pool_name, deployment.work_queue_name) == (pool, QUEUE_OF[base]), name


def deployed_schedules(by_name: dict) -> dict:
    """Deployment name -> (cron, active, concurrency limit, collision strategy) of our schedule (slug
    genesis-dr-stack), for every deployment that has one."""
    out = {}
    for name, deployment in by_name.items():
        ours = [s for s in deployment.schedules if s.slug == "genesis-dr-stack"]
        if not ours:
            continue
        assert len(ours) == 1 and ours[0].schedule.timezone == "UTC", (name, ours)
        options = deployment.concurrency_options
        out[name] = (
            ours[0].schedule.cron,
            ours[0].active,
            deployment.global_concurrency_limit.limit if deployment.global_concurrency_limit else None,
            getattr(options.collision_strategy, "value", options.collision_strategy) if options else None,
        )
    return out


def test_readme_deployment_recipe_works_verbatim(pg_server, mysql_server, redis_factory, tmp_path):
    """Every line of the README's recipe, in one bash, against a fresh Prefect home and server.

    The only changes: the server's port (4200 -> a free one, so a developer's own server is safe) and
    the environment a fresh machine's shell would have, pointing the example stack at this test's
    servers through the variables examples/dr.yaml reads.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.repository.manifest import COMPLETED
    from core.stack import VaultConfig
    from tests.servers import free_port

    recipe = readme_recipe()
    assert any("export PREFECT_API_URL=http://127.0.0.1:4200/api" in line for line in recipe)
    assert any(line.startswith("genesis-dr apply examples/dr.yaml") for line in recipe)
    port = free_port()
    script = "set -euo pipefail\n" + "\n".join(recipe).replace("127.0.0.1:4200", f"127.0.0.1:{port}") + "\n"

    pg_db = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        conn.execute("INSERT INTO orders VALUES (1, 'paid'), (2, 'shipped')")
    my_db = mysql_server.create_database("recipe")
    cache = redis_factory()
    cache.client().set("session:1", "alive")
    passphrase = REPO / ".genesis-dr" / "passphrase"  # what `make demo` leaves; created here if absent
    made_passphrase, made_dir = not passphrase.exists(), not passphrase.parent.exists()
    if made_passphrase:
        passphrase.parent.mkdir(mode=0o700, exist_ok=True)
        passphrase.write_text(secrets.token_urlsafe(32) + "\n")
        passphrase.chmod(0o600)
    vault = tmp_path / "vault"
    env = clean_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # a fresh machine: no database, no profile
        PREFECT_SERVER_API_PORT=str(port),
        # The schedules are live (every 5 minutes): without this a capture or an incremental could start on the
        # test's servers in the middle of the recipe. Checked below from the deployments themselves instead.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        BACKUP_ROOT_DIR=str(vault),
        DB_HOST=pg_server.host,
        DB_PORT=str(pg_server.port),
        DB_USERNAME=pg_server.user,
        DB_PASSWORD=pg_server.password,
        DB_DATABASE=pg_db,
        MYSQL_HOST="127.0.0.1",
        MYSQL_PORT=str(mysql_server.port),
        MYSQL_USERNAME=mysql_server.config().user,
        MYSQL_PASSWORD=mysql_server.password,
        MYSQL_DATABASE=my_db,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(cache.port),
    )
    log = tmp_path / "recipe.log"
    with log.open("w") as out:
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            code = shell.wait(timeout=600)
        except subprocess.TimeoutExpired:
            code = None
        output = log.read_text()
        assert code == 0, f"the recipe failed (exit {code}):\n{output[-6000:]}"

        # What the recipe did, read back from its server and its vault.
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            with get_client(sync_client=True) as client:
                deployments = {d.id: d for d in client.read_deployments()}
                by_name = {d.name: d for d in deployments.values()}
                assert sorted(by_name) == sorted(yaml_deployments()) == sorted(DOCUMENTS_CADENCE)
                assert deployed_schedules(by_name) == DOCUMENTS_CADENCE
                check_deployed(by_name)
                # The completed full also triggers the replicate deployment (the stack has no replica: it
                # finds nothing to copy); wait for that run to finish before reading the outcome.
                deadline = time.monotonic() + 120
                while True:
                    started = [r for r in client.read_flow_runs() if r.start_time is not None]
                    outcome = {deployments[r.deployment_id].name: r.state_type.value for r in started}
                    if (
                        outcome.get("replicate") in (None, "COMPLETED", "FAILED", "CRASHED")
                        or time.monotonic() > deadline
                    ):
                        break
                    time.sleep(1)
                if outcome.get("replicate") == "COMPLETED":
                    del outcome["replicate"]
                assert outcome == {"full": "COMPLETED", "drill-daily": "COMPLETED", "restore": "COMPLETED"}, outcome
                restore_run = next(r for r in started if deployments[r.deployment_id].name == "restore")
                logs = [
                    x.message
                    for x in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[restore_run.id])))
                ]
        assert any("plan: Restore plan for app-files" in m for m in logs), logs
        assert any("dry run: nothing was changed" in m for m in logs), logs
        manifests = VaultConfig(path=str(vault)).open().list_backups()
        assert sorted((m.source, m.status) for m in manifests) == [
            ("app-db", COMPLETED),
            ("app-files", COMPLETED),
            ("app-mysql", COMPLETED),
            ("cache", COMPLETED),
        ]
        # The daily drill's record is in the vault: every source's newest backup validated, all passed.
        (drill,) = [json.loads(p.read_text()) for p in (vault / "history/drills").glob("drill_*.json")]
        assert drill["tier"] == "daily" and drill["passed"] is True, drill
        validated = {r["source"] for r in drill["results"] if r["name"] == "read back" and r["passed"]}
        assert validated == {"app-db", "app-files", "app-mysql", "cache"}, drill["results"]
    finally:
        stop_group(shell)
        if made_passphrase:
            passphrase.unlink()
        if made_dir:
            passphrase.parent.rmdir()


def test_restore_deployment_over_data_pauses_for_approval(make_stack, redis_factory, tmp_path):
    """From a deployment (here the harness's server and a worker), a restore with force over a target
    that holds data waits for an operator: approved it restores, declined nothing changes; a refused
    restore is one line in the worker's output. The deployment is the stack's own, as `genesis-dr apply`
    registers it (register_deployments), in a pool of its own."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    from core.stack import SchedulesConfig
    from deployments.register import register_deployments
    from flows.backup import backup

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}

    src, empty, live = redis_factory(), redis_factory(), redis_factory()
    src.client().mset({"order:1": "paid", "order:2": "shipped"})
    live.client().set("precious", "keep me")
    # Its own pool (no other test's scheduled run reaches this worker) and every schedule off (none of its own).
    pool = f"t{secrets.token_hex(3)}-restore"
    stack = make_stack(
        [src.config("cache", "logical")],
        operations={"work_pool": pool},
        schedules=dict.fromkeys(SchedulesConfig.model_fields, "off"),
    )
    backup_id = backup(stack=stack.name)[0]["id"]
    lines = register_deployments(stack.config)
    restore = f"restore/restore-{stack.name}"
    assert f"created deployment {restore} (pool {pool}, queue failover, schedule off (paused))" in lines, lines

    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as sink:
        # Started elsewhere than the project: the pull step finds the project at run time.
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(target_port: int, **params):
        parameters = {"source": "cache", "stack": stack.name, "backup_id": backup_id, "target": {"port": target_port}}
        return run_deployment(restore, parameters=parameters | params, timeout=0).id

    try:
        # Into an empty target: no approval needed.
        state = wait_for_state(run(empty.port, dry_run=False), lambda s: s.is_final())
        assert state.is_completed(), state.message
        assert empty.client().get("order:1") == b"paid"

        # Over data without force: refused, in one line.
        state = wait_for_state(run(live.port, dry_run=False), lambda s: s.is_final())
        assert state.is_failed() and "already holds data" in state.message

        # Over data with force: paused, the plan shown in the form; declined -> Cancelled, nothing changed.
        declined = run(live.port, dry_run=False, force=True)
        paused = wait_for_state(declined, lambda s: s.is_paused() or s.is_final())
        assert paused.is_paused(), paused.message
        with get_client(sync_client=True) as client:
            description = client.read_flow_run_input(declined, paused.state_details.run_input_keyset["description"])
        assert "Restore plan for cache" in description and "holds data" in description
        resume_flow_run(declined, run_input={"approve": False})
        state = wait_for_state(declined, lambda s: s.is_final())
        assert state.is_cancelled() and "not approved" in state.message
        assert live.client().get("precious") == b"keep me" and live.client().get("order:1") is None

        # Approved -> restored (after a rollback backup of what the target held).
        approved = run(live.port, dry_run=False, force=True)
        assert wait_for_state(approved, lambda s: s.is_paused() or s.is_final()).is_paused()
        resume_flow_run(approved, run_input={"approve": True})
        state = wait_for_state(approved, lambda s: s.is_final())
        assert state.is_completed(), state.message
        assert live.client().get("order:1") == b"paid" and live.client().get("precious") is None
        rollbacks = [m for m in stack.vault().list_backups() if m.labels.get("purpose") == "rollback"]
        assert len(rollbacks) == 1
    finally:
        stop_group(worker)
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments():
                if deployment.work_pool_name == pool:
                    client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
                    client.delete_deployment(deployment.id)
            client.delete_work_pool(pool)
    output = worker_log.read_text()
    assert "already holds data" in output and "Traceback" not in output, output[-4000:]


def test_stack_file_schedules_reach_the_deployments_in_either_order(prefect_api, tmp_path):
    """A stack file's `schedules:` override prefect.yaml's cadence without editing it: applied before
    `prefect deploy` (the build step reads them back) and after it (apply rewrites the deployed schedules);
    a schedule an operator added beside ours is left alone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL

    from core.stack import load_stack_file
    from deployments.register import register_deployments
    from deployments.schedules import apply_schedules

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    # The whole apply (the suite's other applies save blocks only: tests/conftest.py).
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO), "GENESIS_DR_APPLY_BLOCKS_ONLY": "0"}

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    (tmp_path / "app").mkdir()
    stack = tmp_path / "default.yaml"

    def write(schedules: str) -> None:
        stack.write_text(
            f"stack: default\nvault: {{path: {tmp_path / 'vault'}}}\nencryption: {{passphrase_from: env:NOPE}}\n"
            f"sources:\n  - {{name: app-files, kind: files, root: {tmp_path / 'app'}}}\nschedules:\n{schedules}"
        )

    def deployed() -> dict:
        with get_client(sync_client=True) as client:
            return deployed_schedules({d.name: d for d in client.read_deployments()})

    # Before the deployments exist (another test of this session may have deployed them: gone first): apply
    # registers them with the stack's schedules and stores those, and `prefect deploy` templates the same from it.
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            client.delete_deployment(deployment.id)
    write("  incremental: '*/10 * * * *'\n  capture: 'off'\n")
    out = run(sys.executable, "-m", "cli.main", "apply", str(stack))
    # apply registers the deployments itself (deployments/register.py), with the stack's schedules.
    assert "created deployment backup/incremental (pool genesis-dr, queue incremental, cron '*/10 * * * *' UTC)" in out
    assert "created deployment capture/capture (pool genesis-dr, queue capture, schedule off (paused))" in out, out
    run(PREFECT, "work-pool", "create", "genesis-dr", "--type", "process", "--overwrite")
    run(PREFECT, "--no-prompt", "deploy", "--all")
    assert deployed() == DOCUMENTS_CADENCE | {
        "incremental": ("*/10 * * * *", True, 1, "CANCEL_NEW"),
        "capture": ("*/5 * * * *", False, 1, "CANCEL_NEW"),  # off: paused, its default cron kept
    }
    with get_client(sync_client=True) as client:
        check_deployed({d.name: d for d in client.read_deployments() if d.name in DOCUMENTS_CADENCE})
    # register_deployments (apply, serve) and `prefect deploy` make the same deployments: nothing to change
    # (but the queues' priorities, when `prefect deploy` made the queues).
    lines = register_deployments(load_stack_file(stack))
    assert [line for line in lines if "work queue" not in line] == [], lines

    # After: apply rewrites our schedule of each deployment of that stack, and nothing else.
    with get_client(sync_client=True) as client:
        full = client.read_deployment_by_name("backup/full")
        client.create_deployment_schedules(full.id, [(CronSchedule(cron="30 3 * * 0", timezone="UTC"), True)])
    write("  incremental: '*/20 * * * *'\n  full: '15 */4 * * *'\n")
    out = run(sys.executable, "-m", "cli.main", "apply", str(stack))
    assert "schedule of deployment backup/incremental: cron '*/20 * * * *' UTC" in out, out
    assert "schedule of deployment capture/capture: cron '*/5 * * * *' UTC" in out, out
    assert deployed() == DOCUMENTS_CADENCE | {
        "incremental": ("*/20 * * * *", True, 1, "CANCEL_NEW"),
        "full": ("15 */4 * * *", True, 1, "ENQUEUE"),
    }
    with get_client(sync_client=True) as client:
        crons = sorted(s.schedule.cron for s in client.read_deployment_by_name("backup/full").schedules)
    assert crons == ["15 */4 * * *", "30 3 * * 0"]

    # Leave the shared server's deployments of 'default' paused (other tests run workers on it).
    from deployments.schedules import DEPLOYMENTS

    off = "".join(f"  {key}: 'off'\n" for key in DEPLOYMENTS)  # the stack file's keys (validate_integrity, ...)
    write(off)
    apply_schedules(load_stack_file(stack))
    assert {name: active for name, (_, active, _, _) in deployed().items()} == dict.fromkeys(DOCUMENTS_CADENCE, False)
    # The replicate deployment's trigger (a completed backup run) would stay live on the shared server.
    with get_client(sync_client=True) as client:
        client.delete_deployment(client.read_deployment_by_name("replicate/replicate").id)


def test_register_deployments_pools_queues_routing_and_an_operators_pause(prefect_api, tmp_path):
    """register_deployments (what `genesis-dr apply` and `serve` call): the stack's pools with the queues at the
    contract's priorities, every prefect.yaml deployment with the stack's schedules (another stack's named
    `-<stack>`), per-pool copies of the backup and capture deployments for routed sources; a second call
    changes nothing; a schedule paused in the UI stays paused; sources routed back remove their copies."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    from core.stack import StackConfig
    from deployments.queues import QUEUES
    from deployments.register import pools_of, register_deployments

    tag = secrets.token_hex(3)
    stack, main, eu = f"reg{tag}", f"t{tag}-main", f"t{tag}-eu"  # pools no worker of another test serves
    (tmp_path / "app").mkdir()

    def config(routed: bool, **schedules: str) -> StackConfig:
        eu_pool = {"work_pool": eu} if routed else {}
        return StackConfig(
            stack=stack,
            vault={"path": str(tmp_path / "vault")},
            encryption={"passphrase_from": "env:NOPE"},
            operations={"work_pool": main},
            sources=[
                {"name": "db", "kind": "postgres", "host": "127.0.0.1", "database": "app", "user": "app"},
                {"name": "cache", "kind": "redis", **eu_pool},
                {"name": "files", "kind": "files", "root": str(tmp_path / "app"), **eu_pool},
            ],
            schedules={"incremental": "*/10 * * * *", "monitor": "off", "restore": "0 6 * * *"} | schedules,
        )

    def deployed() -> dict:
        with get_client(sync_client=True) as client:
            found = client.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["dr"])))
            return {d.name: d for d in found if d.parameters.get("stack") == stack}

    routed = config(True)
    assert pools_of(routed) == [main, eu]
    started = time.monotonic()
    lines = register_deployments(routed)
    first = time.monotonic() - started
    try:
        with get_client(sync_client=True) as client:
            for pool in (main, eu):
                assert client.read_work_pool(pool).type == "process"
                queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name=pool)}
                assert queues == QUEUES | {"default": 8}, queues
        by_name = deployed()
        copies = {n: d for n, d in by_name.items() if f"-{eu}-" in n}
        check_deployed({n: d for n, d in by_name.items() if n not in copies}, main, f"-{stack}")
        check_deployed({n.replace(f"-{eu}", ""): d for n, d in copies.items()}, eu, f"-{stack}")
        # Every deployment, for this stack; redis has no source left in the main pool: its copy only.
        names = {f"{n}-{stack}" for n in yaml_deployments()} - {f"redis-{stack}"}
        assert set(by_name) == names | {f"{n}-{eu}-{stack}" for n in ROUTABLE}
        # the stack's runs carry its tag (its failed-run automations match it), never the default stack's
        assert {n for n, d in by_name.items() if f"genesis-dr-stack:{stack}" in d.tags} == set(by_name)
        assert [n for n, d in by_name.items() if "genesis-dr-stack:default" in d.tags] == []
        sources = {n: d.parameters.get("sources") for n, d in by_name.items() if n.split("-")[0] in ROUTABLE}
        assert sources == {
            f"full-{stack}": ["db"],
            f"full-{eu}-{stack}": ["cache", "files"],
            f"differential-{stack}": ["db"],
            f"differential-{eu}-{stack}": ["files"],
            f"incremental-{stack}": ["db"],
            f"incremental-{eu}-{stack}": ["files"],
            f"redis-{eu}-{stack}": ["cache"],
            f"capture-{stack}": ["db"],
            f"capture-{eu}-{stack}": ["cache"],
        }
        assert by_name[f"redis-{eu}-{stack}"].parameters == {
            "stack": stack,
            "backup_type": "full",
            "kinds": ["redis"],
            "sources": ["cache"],
        }
        schedules = deployed_schedules(by_name)
        assert (
            schedules[f"incremental-{stack}"]
            == schedules[f"incremental-{eu}-{stack}"]
            == (
                "*/10 * * * *",
                True,
                1,
                "CANCEL_NEW",
            )
        )
        assert schedules[f"monitor-{stack}"][:2] == ("* * * * *", False)
        assert schedules[f"restore-{stack}"][:2] == ("0 6 * * *", True)
        assert schedules[f"full-{stack}"][:2] == ("0 */6 * * *", True)
        assert f"created deployment backup/full-{eu}-{stack} (pool {eu}, queue full, cron '0 */6 * * *' UTC)" in lines

        # Again: nothing to do, nothing written.
        started = time.monotonic()
        assert register_deployments(routed) == []
        again = time.monotonic() - started
        print(f"register_deployments: {len(by_name)} deployments created in {first:.2f} s, checked in {again:.2f} s")

        # Paused in the UI: stays paused through a re-registration and a cron change from the stack file.
        incremental = by_name[f"incremental-{stack}"]
        (ours,) = [s for s in incremental.schedules if s.slug == "genesis-dr-stack"]
        with get_client(sync_client=True) as client:
            client.update_deployment_schedule(incremental.id, ours.id, active=False)
        assert register_deployments(routed) == []
        lines = register_deployments(config(True, incremental="*/20 * * * *"))
        assert set(lines) == {
            f"schedule of deployment backup/incremental-{eu}-{stack}: cron '*/20 * * * *' UTC",
            f"schedule of deployment backup/incremental-{stack}: off (paused; cron '*/20 * * * *' UTC)",
        }
        assert deployed_schedules(deployed())[f"incremental-{stack}"][:2] == ("*/20 * * * *", False)

        # Routed back: the copies go, the defaults take every source again (no `sources`), redis's comes back.
        lines = register_deployments(config(False, incremental="*/20 * * * *"))
        by_name = deployed()
        assert set(by_name) == names | {f"redis-{stack}"}
        assert all("sources" not in d.parameters for d in by_name.values())
        assert {line for line in lines if line.startswith("deleted")} == {
            f"deleted deployment {'capture' if n == 'capture' else 'backup'}/{n}-{eu}-{stack} (no source of it is in "
            "that pool)"
            for n in ROUTABLE
        }
        assert deployed_schedules(by_name)[f"incremental-{stack}"][:2] == ("*/20 * * * *", False)  # still paused
    finally:
        with get_client(sync_client=True) as client:
            for deployment in deployed().values():
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
                client.delete_deployment(deployment.id)
            for pool in (main, eu):
                client.delete_work_pool(pool)


ROUTABLE = ("full", "differential", "incremental", "redis", "capture")
