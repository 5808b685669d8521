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
