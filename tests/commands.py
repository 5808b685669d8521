"""The `genesis-dr` command as an operator types it, in a subprocess against the test harness's API."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

Run = Callable[..., subprocess.CompletedProcess]


def command_runner(cwd: Path, env: dict[str, str], *, timeout: float = 300, no_traceback: bool = True) -> Run:
    """``run(*args, expect=0, extra_env=None)``: ``python -m cli.main ARGS`` in ``cwd`` with ``env`` (plus the
    harness's PREFECT_API_URL and this checkout on PYTHONPATH); asserts the exit code and, unless told not to,
    that no traceback reached stderr."""
    from prefect.settings import PREFECT_API_URL

    base = env | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}

    def run(*args: str, expect: int = 0, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=cwd,
            env=base | (extra_env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == expect, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        if no_traceback:
            assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without pytest's variables, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | extra


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one 'genesis-dr: error:' line an expected failure prints (and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("genesis-dr: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]
