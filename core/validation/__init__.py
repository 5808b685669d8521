"""Validation of backups: quick (catalog), integrity (every byte read back) and restore (into a sandbox).

Plain Python over a vault; no Prefect here. Each check yields a ``CheckResult``; a run's
results form a ``ValidationRecord``, kept in the vault's history (``core.history``).
"""
