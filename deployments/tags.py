"""Which stack a flow run belongs to, as a run tag.

Several stacks may share one Prefect server. The failed-run automations of a stack must fire for its own runs
only (a stack's on-call is not paged for another's failures), and an automation sees a run's tags, not its
parameters. So every run carries ``genesis-dr-stack:<stack>`` from the moment it is created: a deployment's
runs from the deployment's tags (prefect.yaml's deployments carry the default stack's; ``genesis-dr apply``
gives each stack's deployments its own), a ``genesis-dr`` command's runs from the command's ``--stack``.
"""

from __future__ import annotations

STACK_TAG_PREFIX = "genesis-dr-stack:"


def stack_tag(stack: str) -> str:
    return f"{STACK_TAG_PREFIX}{stack}"


def with_stack_tag(tags: list[str], stack: str) -> list[str]:
    """``tags`` with the stack's tag in place of any other stack's (a deployment copied for another stack)."""
    return [t for t in tags if not t.startswith(STACK_TAG_PREFIX)] + [stack_tag(stack)]
