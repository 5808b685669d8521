"""capture: ship the log (WAL, binlog, Redis stream) of every source that has one, until stopped."""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core import cancel
from core.cancel import InterruptedRunError
from core.errors import EngineError
from flows.reporting import raise_failures
from tasks.capture import capture_source_task, select_capture_sources

# How often the flow looks for a stop request (a signal, a cancelled run) or a failed capture.
POLL_SECONDS = 0.5


@flow(name="capture", log_prints=True)
def capture(stack: str = "default", sources: list[str] | None = None) -> list[dict]:
    """Capture the log of the stack's sources (all that have one, or the named ones) until stopped.

    One task per source, all at once. SIGINT/SIGTERM (an operator, or Prefect cancelling the
    run) stop every capture after the piece it is shipping: everything shipped stays in the
    vault, and the next capture resumes where it ended, without a gap. A capture that fails
    (the server dropped log it had not shipped: LogGapError, a new full backup is needed)
    stops the others the same way and fails the run, naming it: a capture that carries on
    beside a broken one would hide the failure in a run that never ends.
    """
    logger = get_run_logger()
    with cancel.stop_on_signals(print):
        chosen = select_capture_sources(stack, sources)
        names = [entry["source"] for entry in chosen]
        kinds = {entry["source"]: entry["kind"] for entry in chosen}
        stop = threading.Event()
        futures = {name: capture_source_task.submit(stack, name, stop) for name in names}
        failures: dict[str, BaseException] = {}
        results: list[dict] = []
        changed = threading.Event()  # a capture ended
        for future in futures.values():
            future.add_done_callback(lambda _future: changed.set())
        pending = dict(futures)
        while pending:
            changed.wait(POLL_SECONDS)
            changed.clear()
            for name, future in list(pending.items()):
                if not future.wrapped_future.done():
                    continue
                del pending[name]
                try:
                    result = future.result()
                    if not stop.is_set():
                        # A capture runs until it is stopped: one that ended by itself no longer captures, and
                        # a run that went on for the others would never restart it.
                        raise EngineError(
                            f"{name}: its capture ended without a stop request; the capture deployment's next run "
                            "(or 'genesis-dr capture') starts it again, resuming where the vault's log ends"
                        )
                    results.append(result)
                except InterruptedRunError as exc:
                    if cancel.requested():  # stopped in the middle of a piece: the next capture ships it again
                        logger.info("%s: capture stopped (the piece it was shipping is shipped by the next run)", name)
                        results.append({"source": name, "kind": kinds[name], "interrupted": str(exc)})
                    else:
                        failures[name] = exc
                except BaseException as exc:  # collected and re-raised below, never swallowed
                    failures[name] = exc
                if name in failures and not stop.is_set():
                    logger.error("%s: capture failed (%s); stopping the other captures", name, failures[name])
                    stop.set()
            if cancel.requested() and not stop.is_set():
                logger.info("stop requested: each capture ships what it holds, then ends")
                stop.set()
    rows = ["| source | outcome |", "|---|---|"]
    rows += [f"| {r['source']} | stopped |" for r in results]
    rows += [f"| {name} | FAILED: {str(exc)[:300]} |" for name, exc in failures.items()]
    create_markdown_artifact("\n".join(rows), key="capture-summary", description="Log captures of this run")
    raise_failures(failures, "source captures")
    return results
