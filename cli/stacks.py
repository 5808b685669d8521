"""Which stack a command works on: its local description (fast), or its blocks (the source of truth).

Read-only commands use the description ``genesis-dr apply`` leaves on this host
(``core.stack_description``): no Prefect import, no API, no server. A stack
applied from another host (or before descriptions existed) has none; then the
blocks are read once (slower: Prefect and its API) and a description is kept
for the next command.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from cli.invocation import command, render_remedies

if TYPE_CHECKING:
    from core.stack_description import StackDescription


def note(message: str) -> None:
    print(f"genesis-dr: {message}", file=sys.stderr)


# The stack the command was given (--stack): its flow runs carry that stack's tag (deployments/tags.py).
command_stack: ContextVar[str | None] = ContextVar("command_stack", default=None)


@contextmanager
def prefect_session() -> Iterator[str]:
    """The Prefect API for this command (see ``cli.prefect_api``); yields where it is."""
    from cli import collector, prefect_api

    with prefect_api.session(note, command_stack.get()) as where:
        collector.settled()
        yield where


def from_blocks(name: str):
    """The full stack (secrets included) from its blocks; needs an active ``prefect_session``."""
    from blocks.apply import load_stack

    return load_stack(name)


def description(name: str) -> StackDescription:
    """The local description of stack ``name``; from its blocks if this host has none (ConfigError if neither)."""
    from core import stack_description

    found = stack_description.load(name)
    if found is not None:
        return _with_credentials(found)
    note(f"no local description of stack '{name}' on this host (applied elsewhere?); reading its blocks from Prefect")
    with prefect_session() as where:
        config = from_blocks(name)
    stack_description.save(config, where)
    loaded = stack_description.load(name)
    assert loaded is not None
    return _with_credentials(loaded)


def _with_credentials(found: StackDescription) -> StackDescription:
    """A cloud vault that names a credentials block needs Prefect to read it (the slow path);
    one that uses the provider's default chain (the usual case on a server) does not."""
    vaults = [found.vault] + [r.vault for r in getattr(found, "replicas", None) or []]
    if not any(v.type != "local" and v.credentials for v in vaults):
        return found
    from blocks.vault import bind_credentials

    with prefect_session():
        found.vault = bind_credentials(found.vault)
        for replica in getattr(found, "replicas", None) or []:
            replica.vault = bind_credentials(replica.vault)
    return found


def cmd_stacks(args) -> int:
    """List the stacks applied on this host (from their local descriptions)."""
    import json

    from core import stack_description

    found, unreadable = stack_description.all_descriptions()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "stack": d.stack,
                        "sources": [{"name": s.name, "kind": s.kind} for s in d.sources],
                        "vault": d.vault.location(),
                        "applied_at": d.applied_at,
                        "applied_to": d.applied_to,
                        "description": d.path,
                    }
                    for d in found
                ],
                indent=2,
                sort_keys=True,
            )
        )
    elif not found:
        print(
            f"no stacks applied on this host ({stack_description.stacks_dir()} is empty); run '{command('apply', 'FILE')}'"
        )
    else:
        print(f"{'STACK':<20} {'APPLIED (UTC)':<26} SOURCES / VAULT")
        for d in found:
            sources = ", ".join(f"{s.name} ({s.kind})" for s in d.sources)
            print(f"{d.stack:<20} {d.applied_at:<26} {sources}")
            print(f"{'':<20} {'':<26} vault {d.vault.location()}; blocks in {d.applied_to}")
    for path in unreadable:
        note(
            render_remedies(
                f"{path} is not a readable stack description; re-run 'genesis-dr apply' for that stack", None
            )
        )
    return 0
