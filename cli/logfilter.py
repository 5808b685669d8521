"""Logging filter used by cli/logging.yml."""

from __future__ import annotations

import logging

from core.errors import DRError


class QuietExpectedErrors(logging.Filter):
    """Drop the traceback (not the message) of expected failures on the console.

    The message already names the object and the remedy; the traceback of an
    expected failure only buries it. Unexpected exceptions keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DRError):
            record.exc_info = None
            record.exc_text = None
        return True
