"""Prefect flows: each reads like a runbook; the work is in core."""
