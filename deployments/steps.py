"""Deployment steps used by prefect.yaml."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def set_project_directory() -> dict[str, str]:
    """Pull step: run the flow from the installed genesis-dr project, wherever the worker was started.

    Prefect resolves ``{{ $PWD }}`` in ``prefect.yaml`` when it deploys, so a deployment made
    that way runs only where the deploying shell stood. This step looks the project up at run
    time instead, from the ``genesis-dr`` package the worker's Python imports (the entrypoints
    ``flows/*.py`` are relative to it).
    """
    os.chdir(PROJECT)
    return {"directory": str(PROJECT)}


def stack_schedules(stack: str = "default") -> dict[str, dict]:
    """Build step (at ``prefect deploy``): the schedules of ``stack`` as its stack file sets them.

    ``genesis-dr apply`` stores them in a Prefect variable; without one (the stack not applied yet)
    the source documents' cadence. prefect.yaml templates each deployment's schedule from this:
    ``{{ schedules.incremental.cron }}``, ``{{ schedules.incremental.active }}``.
    """
    from deployments.schedules import stored_schedules

    return stored_schedules(stack).deployment_schedules()
