"""Retries and timeouts of every task, in one place (overridable from the environment).

Only a failure an engine marked *transient* is retried (connection refused or reset,
a timeout, a server still starting or loading: ``core.errors.is_transient``), with
exponential backoff and jitter. Everything else - a refused login, a wrong key, an
integrity error, a bad stack file, a target that holds data - fails at once:
retrying it could only repeat the damage or hide the cause.

Environment (seconds unless said otherwise; read when the task modules are imported,
i.e. once per worker flow-run process or CLI command):

    GENESIS_DR_TASK_RETRIES        retries of a transient failure (default 4)
    GENESIS_DR_RETRY_DELAY         first backoff delay, doubled each retry (default 2: 2, 4, 8, 16)
    GENESIS_DR_BACKUP_TIMEOUT      one source's backup (default 21600, 6 h)
    GENESIS_DR_RESTORE_TIMEOUT     one restore, verification included (default 21600)
    GENESIS_DR_PLAN_TIMEOUT        reading the stack, the vault and the target to plan (default 600)
"""

from __future__ import annotations

import os
from typing import Any

from prefect.logging.loggers import task_run_logger
from prefect.tasks import exponential_backoff

from core.errors import ConfigError, DRError, is_transient


def seconds_from_env(name: str, default: float, *, minimum: float = 0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds; unset it or give a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


RETRIES = int(seconds_from_env("GENESIS_DR_TASK_RETRIES", 4))
RETRY_DELAY = seconds_from_env("GENESIS_DR_RETRY_DELAY", 2)
TIMEOUTS: dict[str, float | None] = {
    # A capture runs until it is stopped (a signal, a cancelled run): no timeout.
    "capture": None,
    "backup": seconds_from_env("GENESIS_DR_BACKUP_TIMEOUT", 6 * 3600, minimum=1),
    "restore": seconds_from_env("GENESIS_DR_RESTORE_TIMEOUT", 6 * 3600, minimum=1),
    "plan": seconds_from_env("GENESIS_DR_PLAN_TIMEOUT", 600, minimum=1),
}


def failure_of(state: Any) -> BaseException | None:
    """The exception a Failed state carries (in memory while the task engine decides on a retry)."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read is not a transient failure we know of
        return None
    return result if isinstance(result, BaseException) else None


def retry_transient(task, task_run, state) -> bool:
    """``retry_condition_fn``: retry only what an engine marked transient; say why not otherwise."""
    exc = failure_of(state)
    if exc is not None and is_transient(exc):
        return True
    # Prefect logs nothing when the condition refuses a retry: say what failed and that it is final
    # (one line for an expected failure, the traceback for anything else).
    logger = task_run_logger(task_run, task)
    if isinstance(exc, DRError):
        logger.error("%s: %s (not retried: it does not pass by waiting)", type(exc).__name__, exc)
    elif exc is not None and not isinstance(exc, TimeoutError):  # Prefect reports its own timeouts
        logger.error("Task run failed with exception: %r (not retried: unexpected)", exc, exc_info=exc)
    return False


def task_options(kind: str) -> dict[str, Any]:
    """``@task`` keyword arguments: retries of transient failures with backoff + jitter, and a timeout."""
    return {
        "retries": RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=RETRY_DELAY)(RETRIES) if RETRIES else 0,
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
        "timeout_seconds": TIMEOUTS[kind],
    }
