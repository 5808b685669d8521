"""prefect.yaml as an operator uses it: deploy every deployment to a work pool,
start a worker, and run the restore deployment with `prefect deployment run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_deploy_all_then_run_restore_deployment_on_a_worker(make_stack, redis_factory):
    from prefect.settings import PREFECT_API_URL

    from flows.backup import backup

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}

    def prefect(*args: str, timeout: float = 180) -> str:
        proc = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"prefect {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    src, dst = redis_factory(), redis_factory()
    src.client().mset({"order:1": "paid", "order:2": "shipped"})
    stack = make_stack([src.config("cache", "logical")])
    backup_id = backup(stack=stack.name)[0]["id"]

    prefect("work-pool", "create", "genesis-dr", "--type", "process", "--overwrite")
    out = prefect("--no-prompt", "deploy", "--all")
    assert "backup/full" in out and "restore/restore" in out

    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "genesis-dr"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        prefect(
            "deployment",
            "run",
            "restore/restore",
            "-p",
            'source="cache"',
            "-p",
            f'stack="{stack.name}"',
            "-p",
            f'backup_id="{backup_id}"',
            "-p",
            f"target={json.dumps({'port': dst.port})}",
            "-p",
            "dry_run=false",
            "--watch",
            "--watch-timeout",
            "240",
            timeout=300,
        )
    finally:
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
    assert dst.client().get("order:1") == b"paid" and dst.client().get("order:2") == b"shipped"
