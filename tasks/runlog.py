"""What runs write to Prefect's logs: expected errors in one line, and core's progress.

Prefect logs a failed task or flow with ``exc_info`` ("Task run failed with
exception ...", "Encountered exception during execution ..."), and every handler it
configures - the console (worker and CLI output), the API (what the UI shows) - prints
the traceback. For an expected failure (``core.errors.DRError``) that traceback only
buries the one line that names the object and the remedy, so the record factory
installed here drops it from every log record, whatever handler, logger or logging
configuration: nothing of Prefect's configuration is copied, so nothing needs
re-syncing on an upgrade. Unexpected exceptions keep their tracebacks.

Installed when ``tasks`` is imported, which every flow module does (a worker loads
a flow from its file, so the ``flows`` package itself may never be imported).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prefect import get_run_logger
from prefect.exceptions import CancelledRun

from core.errors import DRError

# A declined restore ends Cancelled; Prefect's engine then raises CancelledRun and logs it with a traceback.
EXPECTED = (DRError, CancelledRun)

_MARK = "_genesis_dr_quiet_expected_errors"


def quiet_expected_errors() -> None:
    """Install (once per process) a log record factory that drops the traceback of a DRError."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _MARK, False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, EXPECTED):
            record.exc_info = None
            record.exc_text = None
        return record

    setattr(factory, _MARK, True)
    logging.setLogRecordFactory(factory)
    logging.getLogger("prefect.task_runs").addFilter(_worker_thread_timeout_notice)


def _worker_thread_timeout_notice(record: logging.LogRecord) -> bool:
    """Drop Prefect's warning, on every task submitted to a thread, that its timeout cannot interrupt a
    blocking call: our tasks stream in chunks, so the timeout takes effect at the next chunk (README,
    "Deployments"); repeated in every run, the warning would only teach operators to ignore warnings."""
    return not (isinstance(record.msg, str) and record.msg.startswith("Timeout of %s seconds configured for this task"))


def progress(source: str | None = None, subject: str | Callable[[], str | None] | None = None) -> Callable[[str], None]:
    """A sink for core's one-line progress messages, writing to this task run's log (from any thread).

    Every line names what it is about: ``source`` and ``subject`` (the backup id; a callable when the backup
    learns its id as it starts) are put in front of a message that does not already name them, so
    "target files root /srv: empty" is logged as "app-files: backup_2026...: target files root /srv: empty"."""
    logger = get_run_logger()  # an adapter carrying the run ids, so core's worker threads log to this run too
    if source is None and subject is None:
        return logger.info

    def say(message: str) -> None:
        about = subject() if callable(subject) else subject
        named = "".join(f"{tag}: " for tag in (source, about) if tag and tag not in message)
        logger.info("%s%s", named, message)

    return say
