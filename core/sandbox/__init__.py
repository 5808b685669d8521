"""Throw-away restore targets for restore-level validation and drills (see ``sandbox.py``)."""

from core.sandbox.registry import live_sandboxes, sweep
from core.sandbox.sandbox import Sandbox, open_sandbox

__all__ = ["Sandbox", "live_sandboxes", "open_sandbox", "sweep"]
