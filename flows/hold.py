"""hold: record or release a legal hold, and bring the vault's object locks in line with the holds."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from core.errors import ConfigError
from tasks.retention import apply_object_holds_task, create_hold_task, operator, release_hold_task


@flow(name="hold", log_prints=True)
def hold(
    stack: str = "default",
    action: Literal["create", "release"] = "create",
    name: str | None = None,
    reason: str = "",
    scope: str | None = None,
    contact: str | None = None,
    hold_id: str | None = None,
    creator: str | None = None,
) -> dict:
    """Create a legal hold (``name``, ``reason``, ``scope`` as JSON text, ``contact``) or release one
    (``hold_id``, ``reason``; needs the admin signing key where the run executes).

    A hold is recorded in the vault (``holds/<id>.json``) and in the audit trail; retention never deletes
    what an active hold covers. Then every object the active holds cover gets an Object Lock legal hold on
    the vault and its replicas where the store supports it (S3, GCS), and a released hold's objects lose it.
    Returns the hold (with ``object_holds``: the locks set or lifted per store).
    """
    if not reason.strip():
        raise ConfigError(f"hold {action}: give the reason (it is recorded with the hold and in the audit trail)")
    if action == "create":
        missing = [n for n, v in (("name", name), ("scope", scope), ("contact", contact)) if not (v or "").strip()]
        if missing:
            raise ConfigError(f"hold create: give the {', '.join(missing)} of the hold")
        held = create_hold_task(stack, name, reason.strip(), scope, contact, creator or operator())
    else:
        if not hold_id:
            raise ConfigError("hold release: give the hold's id (see 'genesis-dr hold list')")
        held = release_hold_task(stack, hold_id, reason.strip())
    held["object_holds"] = apply_object_holds_task(stack)
    state = "active" if held["active"] else "released"
    get_run_logger().info("hold %s (%s): %s", held["id"], held["name"], state)
    return held
