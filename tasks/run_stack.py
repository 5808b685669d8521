"""The stack a flow run works on: resolved once per run, shared by its tasks.

Resolving a stack reads its block and one block per source from the API. When
every task resolved it for itself, a backup of N sources paid (1 + N) loads per
task, (1 + N)^2 in all; now the first task of a run loads it and the others
(retries included) reuse it. The run also shares one keyring, so a passphrase
read from a file or a prompt is read once per run, not once per source.

Keyed by flow run: the next run (in a long-lived process, or a test session)
reads the blocks again, so an ``apply`` between runs takes effect. Outside a
flow run (``task.fn(...)``) every call reads the blocks. Only the stack's
references to secrets and its source settings are kept, in this process's
memory, for the last few runs; nothing new reaches a parameter, a log or the API.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from prefect.context import FlowRunContext, TaskRunContext

from blocks.apply import load_stack
from core.crypto.keys import Keyring
from core.stack import StackConfig

_KEEP = 8  # runs whose stack stays resolved (a worker process may run several flows)
_resolved: OrderedDict[tuple[str, str], RunStack] = OrderedDict()
# Held while one run's stack loads, so the sibling tasks that start with it wait for that load
# instead of repeating it.
_loading = threading.Lock()


@dataclass(frozen=True)
class RunStack:
    config: StackConfig
    keyring: Keyring


def _flow_run_id() -> str | None:
    task_run = TaskRunContext.get()
    if task_run is not None and task_run.task_run.flow_run_id is not None:
        return str(task_run.task_run.flow_run_id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return str(flow_run.flow_run.id)
    return None


def _resolve(name: str) -> RunStack:
    config = load_stack(name)
    return RunStack(config, config.keyring())


def run_stack(name: str) -> RunStack:
    """The stack ``name`` for the current flow run (ConfigError with the remedy if it is not registered)."""
    run = _flow_run_id()
    if run is None:
        return _resolve(name)
    key = (run, name)
    with _loading:
        found = _resolved.get(key)
        if found is None:
            found = _resolved[key] = _resolve(name)  # a failed load is not kept: the next task tries again
            while len(_resolved) > _KEEP:
                _resolved.popitem(last=False)
        else:
            _resolved.move_to_end(key)
    return found
