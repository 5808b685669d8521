"""Commands printed for the operator to paste: spelt the way this one was invoked.

A printed command must work as printed: in the operator's shell (where the
venv may not be active), for the stack in use (``--stack`` unless it is
``default``). Messages from ``core`` name their remedies as
``'genesis-dr SUBCOMMAND ...'``; ``render_remedies`` rewrites those for the
invocation at the one place errors are printed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys

# Subcommands that take --stack (a remedy naming one of them gets the stack in use).
STACK_COMMANDS = {
    "backup",
    "capture",
    "list",
    "restore",
    "unlock",
    "repair-vault",
    # Single-level commands only: '--stack' after 'hold' would land before 'list' and miss the sub-command's flag.
    "erase",
    "classify",
    "delete",
}


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (``.venv/bin/genesis-dr``), else absolute."""
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    if absolute.startswith(cwd + os.sep):
        return os.path.relpath(absolute, cwd)
    return absolute


def program() -> str:
    """How to run genesis-dr again from the operator's shell.

    ``genesis-dr`` only when that name finds this very program on PATH and the
    PATH entry is not a venv the operator has not activated (``make demo`` puts
    ``.venv/bin`` on *its own* PATH, not on the operator's); otherwise the path
    it was run by. ``python -m cli.main`` prints as such.
    """
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "genesis-dr"
    if argv0.endswith(os.path.join("cli", "main.py")) or argv0 == "-m":
        return f"{shlex.quote(sys.executable)} -m cli.main"
    if os.sep not in argv0:
        return argv0
    found = shutil.which("genesis-dr")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        in_venv = sys.prefix != sys.base_prefix
        found_in_prefix = os.path.abspath(found).startswith(os.path.abspath(sys.prefix) + os.sep)
        activated = os.environ.get("VIRTUAL_ENV") and os.path.realpath(os.environ["VIRTUAL_ENV"]) == os.path.realpath(
            sys.prefix
        )
        if not in_venv or not found_in_prefix or activated:
            return "genesis-dr"
    return shlex.quote(_display_path(argv0))


def command(subcommand: str, *args: str, stack: str | None = None) -> str:
    """A pasteable command line: ``program() subcommand [--stack S] args...``."""
    parts = [program(), subcommand]
    if stack and stack != "default" and subcommand.split()[0] in STACK_COMMANDS:
        parts += ["--stack", shlex.quote(stack)]
    parts += list(args)
    return " ".join(parts)


SUBCOMMANDS = (
    "apply",
    "backup",
    "capture",
    "list",
    "restore",
    "unlock",
    "repair-vault",
    "key",
    "stacks",
    "retention",
    "hold",
    "erase",
    "audit",
    "archive",
    "classify",
    "delete",
)
# Only a subcommand after the name makes a command ("this genesis-dr reads version 1" is prose).
_REMEDY = re.compile(r"(?<![\w/.-])genesis-dr (" + "|".join(SUBCOMMANDS) + r")\b(?!-)")


def render_remedies(text: str, stack: str | None) -> str:
    """Rewrite each ``genesis-dr SUBCOMMAND`` named in ``text`` into a command that works as printed."""

    def sub(match: re.Match) -> str:
        return command(match.group(1), stack=stack)

    return _REMEDY.sub(sub, text)
