"""Prefect flows: each reads like a runbook; the work is in core.

Every flow imports ``tasks``, which makes expected failures (``core.errors.DRError``)
log as one line, without a traceback, in the worker's and the CLI's console and in
the run logs the UI shows (see ``tasks.runlog``).
"""
