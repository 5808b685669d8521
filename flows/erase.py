"""erase: apply a recorded GDPR erasure request to the stack's backups."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core.errors import ConfigError
from tasks.retention import apply_erasure_task


def render_erasure(result: dict) -> str:
    """What an erasure did: backups shredded (with certificates), backups kept (and why), the due date."""
    head = f"erasure {result.get('id') or '(dry run: not recorded)'}"
    if result.get("due_by"):
        head += f": due by {result['due_by']}"
    if result.get("sources"):
        head += f"; sources {', '.join(result['sources'])}"
    lines = [head]
    shredded = result.get("shredded") or []
    verb = "would shred" if result.get("dry_run") or not result.get("id") else "shredded, with a certificate each"
    lines.append(f"{verb} ({len(shredded)}): {', '.join(map(str, shredded)) or 'none'}")
    kept = result.get("kept") or []
    lines.append(f"kept ({len(kept)}), the erasure re-applied on every restore of them:")
    lines += [f"  {k.get('id')}: {k.get('why')}" for k in kept] or ["  none"]
    lines += [f"nothing deleted of {source}: {why}" for source, why in sorted((result.get("refused") or {}).items())]
    return "\n".join(lines)


@flow(name="erase", log_prints=True)
def erase(stack: str = "default", request_id: str = "", dry_run: bool = False) -> dict:
    """Apply the GDPR erasure request ``request_id`` (recorded by 'genesis-dr erase --subject', which seals
    the subject in the vault: it never becomes a parameter, a log line or an audit detail).

    Backups past their data classes' maximum are crypto-shredded and deleted with a signed certificate;
    backups a compliance minimum keeps stay, and every later restore of them re-applies the erasure and says
    so. ``dry_run`` reports what would happen and changes nothing.
    """
    if not request_id.strip():
        raise ConfigError("erase: give the request_id of a recorded erasure ('genesis-dr erase --subject' records one)")
    result = apply_erasure_task(stack, request_id.strip(), dry_run)
    text = render_erasure({"id": request_id} | result)
    create_markdown_artifact(f"```\n{text}\n```", key="erasure", description=f"GDPR erasure {request_id} of {stack}")
    get_run_logger().info("%s", text)
    return result
