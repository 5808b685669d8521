"""Capture tasks: one long-running task per source whose engine ships a log."""

from __future__ import annotations

import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core import operations
from core.engines import engine_class, engine_for
from core.errors import ConfigError
from tasks.policy import task_options
from tasks.run_stack import run_stack
from tasks.runlog import progress


@task(name="select-capture-sources", cache_policy=NO_CACHE, **task_options("plan"))
def select_capture_sources(stack: str, sources: list[str] | None) -> list[dict]:
    """The sources to capture (``source``, ``kind``): the named ones (each must have a log), or every source
    whose kind ships one."""
    config = run_stack(stack).config
    if sources:
        chosen = [config.source(name) for name in sources]  # ConfigError names an unknown one
        without = [f"{s.name} ({s.kind})" for s in chosen if not engine_class(s.kind).captures_log]
        if without:
            raise ConfigError(
                f"{', '.join(without)}: no log to capture (only full backups); leave it out of --source, "
                "'genesis-dr backup full' backs it up"
            )
        return [{"source": s.name, "kind": s.kind} for s in chosen]
    names = [{"source": s.name, "kind": s.kind} for s in config.sources if engine_class(s.kind).captures_log]
    if not names:
        kinds = ", ".join(sorted({s.kind for s in config.sources}))
        raise ConfigError(
            f"stack '{config.stack}' has no source with a log to capture (its kinds: {kinds}); "
            "scheduled backups cover it, no capture is needed"
        )
    return names


# Never retried but for a transient failure (the server restarting): then the next attempt resumes where the
# vault's log ends, so a retry never leaves a gap. No timeout: a capture runs until it is stopped.
@task(
    name="capture-source",
    task_run_name="capture-{source}",
    cache_policy=NO_CACHE,
    **task_options("capture"),
)
def capture_source_task(stack: str, source: str, stop: threading.Event) -> dict:
    """Ship ``source``'s log into the vault until ``stop`` is set; returns what the capture reports."""
    opened = run_stack(stack)
    config = opened.config
    logger = get_run_logger()
    logger.info("%s: capturing its log into %s until stopped", source, config.vault.location())
    engine = engine_for(config.source(source))
    outcome = operations.capture_source(
        config.vault.open(create=True), opened.keyring, engine, stop, progress=progress()
    )
    logger.info("%s: capture stopped", source)
    return {"source": source, "kind": engine.kind, **(outcome or {})}
