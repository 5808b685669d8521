"""GDPR erasure requests: recorded once, honoured by deletion where the law allows and by every later restore.

A backup cannot be edited (its chunks are authenticated), so an erasure is honoured two ways:

* backups of the concerned sources that are past their data class's maximum are crypto-shredded
  with a certificate (``core.retention.shred.delete_backup``, authority ``erasure <id>``);
* backups that must keep the data (a compliance minimum, a legal hold, a chain a kept backup needs,
  the newest valid backup) are kept, and every restore of the source re-applies every recorded
  erasure on the restored target after its verification (``apply_erasures``, called by
  ``core.restoring``).

The subject (an e-mail address, a customer id) never appears in the clear in the vault, the audit
trail, logs or Prefect parameters: the request holds it sealed with a fresh data key wrapped for the
stack's recipients (as a backup's keys.json wraps its key), and only an HMAC-SHA256 digest under that
same key, which links nothing across requests. A restore host holding the private key or passphrase
unseals it; a backup host (public keys only) can record requests but never read them back.

Vault objects (see docs/FORMAT.md)::

    erasure/<id>.json                 the request, signed by an admin key (never rewritten)
    erasure/<id>.applied-<stamp>.json what one application shredded and what keeps the data, and why
"""

from __future__ import annotations

import base64
import getpass
import glob
import hmac
import json
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.chains import iso, parse_iso
from core.crypto.envelope import Opener, Sealer
from core.crypto.keys import Keyring
from core.crypto.mac import record_mac
from core.crypto.signing import SigningKey, fingerprint, verify_signature
from core.errors import DRError, ErasureError
from core.repository.vault import Vault
from core.storage.base import ObjectNotFound, Store

PREFIX = "erasure/"
FORMAT_VERSION = 1
_DIGEST_INFO = b"genesis-dr/v1/erasure-subject"
_SEAL_LABEL = "subject"
# The classes whose data is personal under the GDPR: a source holding one must say how a subject is erased.
PERSONAL_FRAMEWORK = "GDPR"
PERSONAL_CLASS = "personal"
# Fields of a rule, as recorded in a request (the stack's ErasureRule, dumped).
RULE_FIELDS = ("statements", "redis_patterns", "paths")

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    """Core never logs on its own; callers route progress to their run log."""


@dataclass
class ErasureRequest:
    """One recorded request. ``subject_digest`` and ``sealed_subject`` are all the vault holds of the subject."""

    id: str  # "erasure-<YYYYMMDD>-<8 hex>"
    received_at: str
    due_by: str
    subject_digest: str  # HMAC-SHA256(subject) under a key derived from the request's data key
    sealed_subject: dict  # {"recipients": [...], "blob": base64 of a sealed chunk}
    requested_by: str  # user@host that ran the command
    admin: str  # the admin public key that signed it
    sig: str
    sources: list[str]
    rules: dict[str, dict] = field(default_factory=dict)  # source -> the erasure rule in force when recorded
    applied: dict = field(default_factory=dict)  # the newest application record, {} while pending
    version: int = FORMAT_VERSION

    def body(self) -> dict:
        """What the admin signs: everything but the signature and the later application records."""
        data = asdict(self)
        data.pop("sig")
        data.pop("applied")
        return data

    def canonical(self) -> bytes:
        return json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict:
        return dict(self.body(), sig=self.sig)


# ---------------------------------------------------------------------------------------------- sealing


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def new_request_id(now: datetime) -> str:
    return f"erasure-{now:%Y%m%d}-{secrets.token_hex(4)}"


def seal_subject(keyring: Keyring, request_id: str, subject: str) -> tuple[dict, str]:
    """The subject sealed for the keyring's recipients, and its keyed digest (no plaintext in either)."""
    data_key, recipients = keyring.new_data_key(request_id)
    blob = Sealer(data_key, request_id, codec="none").seal_blob(_SEAL_LABEL, subject.encode("utf-8"))
    digest = record_mac(data_key, _DIGEST_INFO, subject.encode("utf-8"))
    return {"recipients": recipients, "blob": base64.b64encode(blob).decode()}, digest


def unseal_subject(keyring: Keyring, request: ErasureRequest) -> str:
    """The subject of ``request`` (WrongKeyError if the keyring cannot open it; ErasureError if altered)."""
    data_key = keyring.unwrap(request.id, request.sealed_subject.get("recipients") or [])
    try:
        blob = base64.b64decode(request.sealed_subject["blob"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise ErasureError(
            f"erasure request {request.id}: the sealed subject is malformed; restore {PREFIX}{request.id}.json from a replica"
        ) from None
    subject = Opener(data_key, request.id).open_blob(_SEAL_LABEL, blob, f"erasure request {request.id}").decode("utf-8")
    if not hmac.compare_digest(record_mac(data_key, _DIGEST_INFO, subject.encode("utf-8")), request.subject_digest):
        raise ErasureError(
            f"erasure request {request.id}: the subject does not match its digest (altered); restore {PREFIX}{request.id}.json from a replica"
        )
    return subject


# ---------------------------------------------------------------------------------------------- reading


def _parse(raw: bytes, key: str) -> ErasureRequest:
    try:
        data = json.loads(raw)
        if data.get("version") != FORMAT_VERSION:
            raise ErasureError(
                f"{key}: erasure format version {data.get('version')} is not supported; upgrade genesis-dr"
            )
        return ErasureRequest(**{k: v for k, v in data.items() if k != "applied"})
    except (ValueError, TypeError, AttributeError) as exc:
        raise ErasureError(f"{key}: not a valid erasure request ({exc}); restore it from a replica") from None


def _request_keys(store: Store) -> list[str]:
    # One listing: requests and their application records side by side.
    return [PREFIX + name for name in store.children(PREFIX) if name.endswith(".json")]


def requests(store: Store) -> list[ErasureRequest]:
    """Every recorded request, oldest first, with its newest application record (``applied``)."""
    keys = _request_keys(store)
    applied: dict[str, str] = {}
    for key in keys:
        name = key[len(PREFIX) :]
        if ".applied-" in name:
            request_id = name.split(".applied-", 1)[0]
            applied[request_id] = max(applied.get(request_id, ""), key)
    out = []
    for key in keys:
        if ".applied-" in key:
            continue
        request = _parse(store.get(key), key)
        if request.id != key[len(PREFIX) : -len(".json")]:
            raise ErasureError(f"{key}: holds request {request.id} (moved or renamed); restore it from a replica")
        if request.id in applied:
            request.applied = _applied_record(store, applied[request.id])
        out.append(request)
    return sorted(out, key=lambda r: (r.received_at, r.id))


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _applied_record(store: Store, key: str) -> dict:
    """An application record, or {} when it is unreadable or its signature does not verify: a forged
    record must not make a request look applied (it stays pending, and is applied again)."""
    try:
        record = json.loads(store.get(key))
        body = {k: v for k, v in record.items() if k != "sig"}
        if verify_signature(record["signer"], _canonical(body), record["sig"]):
            return record
    except (ValueError, KeyError, TypeError, AttributeError, ObjectNotFound):
        pass
    return {}


def load_request(store: Store, request_id: str) -> ErasureRequest:
    for request in requests(store):
        if request.id == request_id:
            return request
    raise ErasureError(
        f"no erasure request {request_id} in the vault; see 'genesis-dr retention status' for the pending ones"
    )


def signed_by_admin(request: ErasureRequest, admins: Iterable[str] | None) -> bool:
    """The admin signature verifies, and (when ``admins`` is given) its key is one of them."""
    if admins is not None and request.admin not in set(admins):
        return False
    return verify_signature(request.admin, request.canonical(), request.sig)


def pending(store: Store, *, now: datetime | None = None) -> list[dict]:
    """Requests not yet applied, with their due dates (``retention status``); never the subject."""
    when = _now(now)
    return [
        {
            "id": r.id,
            "received_at": r.received_at,
            "due_by": r.due_by,
            "sources": list(r.sources),
            "overdue": parse_iso(r.due_by) < when,
        }
        for r in requests(store)
        if not r.applied
    ]


def erasures_for(
    vault: Vault, keyring: Keyring, source: str, backup_time: datetime | None = None
) -> list[tuple[str, str]]:
    """(request id, subject) of every request recorded for ``source``, unsealed with ``keyring``.

    All requests, whatever ``backup_time``: a backup taken after a request may hold the subject
    again (the application re-created it, a replica lagged), and re-running an erasure that finds
    nothing costs a statement.
    """
    out = []
    for request in requests(vault.store):
        if source not in request.sources:
            continue
        if not verify_signature(request.admin, request.canonical(), request.sig):
            raise ErasureError(
                f"erasure request {request.id}: its admin signature does not verify (altered or forged); restore "
                f"{PREFIX}{request.id}.json from a replica, or remove it if it was never recorded by an admin"
            )
        try:
            out.append((request.id, unseal_subject(keyring, request)))
        except DRError as exc:
            raise ErasureError(
                f"erasure request {request.id} of {source}: cannot unseal its subject ({exc.message}); the restore "
                "must re-apply it: use the keys the stack had when it was recorded"
            ) from None
    return out


def recorded_rule(vault: Vault, source: str) -> dict | None:
    """The erasure rule of ``source`` in the newest request naming it (the rule in force when it was recorded)."""
    found = None
    for request in requests(vault.store):
        if source in request.rules:
            found = request.rules[source]
    return found


# ---------------------------------------------------------------------------------------------- applying


def _field(rule: Any, name: str) -> list[str]:
    value = rule.get(name) if isinstance(rule, dict) else getattr(rule, name, None)
    return list(value or [])


def rule_dict(rule: Any) -> dict:
    return {name: _field(rule, name) for name in RULE_FIELDS}


def bind_subject(statement: str) -> tuple[str, int]:
    """``statement`` with each {subject} turned into a %s placeholder (the subject is always a bound
    parameter, never text in the SQL), literal % doubled for the driver; and the placeholder count."""
    parts = statement.split("{subject}")
    return "%s".join(part.replace("%", "%%") for part in parts), len(parts) - 1


def _glob_escape_redis(subject: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\^" else ch for ch in subject)


def apply_erasures(
    engine: Any, rule: Any, subjects: list[tuple[str, str]], say: Say = _quiet, *, source: str | None = None
) -> list[str]:
    """Run ``source``'s erasure rule for each (request id, subject) on the RESTORED target ``engine``.

    SQL runs with the subject as a bound parameter, all statements of one request in one
    transaction (a request is erased entirely or not at all); Redis keys matching the patterns are
    unlinked; files matching the globs below the restored root are removed. Returns one report line
    per step ("erasure <id>: 3 rows deleted by statement 1"); any failure raises ErasureError naming
    the request, the source (``source``, default the target's name) and the target (the restored
    data stays as restored).
    """
    name = source or engine.config.name
    lines: list[str] = []
    for request_id, subject in subjects:
        try:
            if engine.kind in ("postgres", "mysql"):
                lines += _apply_sql(engine, name, _field(rule, "statements"), request_id, subject)
            elif engine.kind == "redis":
                lines += _apply_redis(engine, name, _field(rule, "redis_patterns"), request_id, subject)
            elif engine.kind == "files":
                lines += _apply_paths(engine, name, _field(rule, "paths"), request_id, subject)
            else:
                raise ErasureError(f"erasure {request_id}: {engine.kind} targets cannot be erased by a rule")
        except ErasureError:
            raise
        except DRError as exc:
            raise ErasureError(f"erasure {request_id} on {engine.describe()} failed: {exc.message}") from None
        except Exception as exc:  # a driver's error: one line, the subject never in it
            detail = str(exc).replace(subject, "<subject>").strip().splitlines()
            raise ErasureError(
                f"erasure {request_id} on {engine.describe()} failed: {type(exc).__name__}: "
                f"{detail[-1] if detail else ''}; fix retention.erasure.{name} and restore again"
            ) from None
    for line in lines:
        say(line)
    return lines


def _require(values: list[str], what: str, field: str, engine: Any, name: str, request_id: str) -> None:
    """A rule without entries for its target's kind is a configuration error, named before anything runs."""
    if not values:
        raise ErasureError(
            f"erasure {request_id}: no {what} for {engine.describe()}; set retention.erasure.{name}.{field}"
        )


def _apply_sql(engine: Any, name: str, statements: list[str], request_id: str, subject: str) -> list[str]:
    _require(statements, "SQL statements", "statements", engine, name, request_id)
    lines = []
    if engine.kind == "postgres":
        conn = engine._connect()  # the engine's own login and error mapping
        try:
            with conn.transaction(), conn.cursor() as cur:
                for number, statement in enumerate(statements, 1):
                    lines.append(_run_statement(cur, statement, subject, request_id, number))
        except Exception as exc:
            raise _statement_error(exc, request_id, engine, name, subject, len(lines) + 1) from None
        finally:
            conn.close()
        return lines
    conn = engine._connect(engine.config.database)
    try:
        conn.begin()
        with conn.cursor() as cur:
            for number, statement in enumerate(statements, 1):
                lines.append(_run_statement(cur, statement, subject, request_id, number))
        conn.commit()
    except Exception as exc:
        conn.rollback()
        raise _statement_error(exc, request_id, engine, name, subject, len(lines) + 1) from None
    finally:
        conn.close()
    return lines


def _run_statement(cur: Any, statement: str, subject: str, request_id: str, number: int) -> str:
    sql, count = bind_subject(statement)
    cur.execute(sql, (subject,) * count) if count else cur.execute(statement)
    rows = cur.rowcount if cur.rowcount is not None and cur.rowcount >= 0 else 0
    return f"erasure {request_id}: {rows} rows deleted by statement {number}"


def _statement_error(
    exc: BaseException, request_id: str, engine: Any, name: str, subject: str, number: int
) -> ErasureError:
    detail = [ln for ln in str(exc).replace(subject, "<subject>").splitlines() if ln.strip()]
    return ErasureError(
        f"erasure {request_id} of {name}: statement {number} failed on {engine.describe()} "
        f"({detail[0] if detail else type(exc).__name__}); the restored data still holds the subject - do not put it "
        f"in service: fix retention.erasure.{name}.statements and restore again"
    )


def _apply_redis(engine: Any, name: str, patterns: list[str], request_id: str, subject: str) -> list[str]:
    _require(patterns, "key patterns", "redis_patterns", engine, name, request_id)
    dbs = [engine.config.db] if getattr(engine.config, "db", None) is not None else None
    if dbs is None:
        info = engine._client(0).info("keyspace")
        dbs = sorted(int(name[2:]) for name in info if name.startswith("db")) or [0]
    lines = []
    for number, pattern in enumerate(patterns, 1):
        match = pattern.replace("{subject}", _glob_escape_redis(subject))
        removed = 0
        for db in dbs:
            client = engine._client(db)
            batch = list(client.scan_iter(match=match, count=1000))
            for start in range(0, len(batch), 500):
                removed += client.unlink(*batch[start : start + 500])
        lines.append(f"erasure {request_id}: {removed} keys removed by pattern {number}")
    return lines


def _apply_paths(engine: Any, name: str, paths: list[str], request_id: str, subject: str) -> list[str]:
    _require(paths, "paths", "paths", engine, name, request_id)
    if "/" in subject or "\\" in subject or subject in (".", "..") or "\0" in subject:
        raise ErasureError(
            f"erasure {request_id}: the subject contains a path separator or is a dot name, so it cannot be placed "
            f"in a path of retention.erasure.{name}.paths; erase those files by hand"
        )
    root = Path(engine.config.root).resolve()
    lines = []
    for number, pattern in enumerate(paths, 1):
        relative = pattern.replace("{subject}", glob.escape(subject)).lstrip("/")
        removed = 0
        for found in sorted(glob.glob(str(root / relative), recursive=True)):
            path = Path(found)
            if root not in path.resolve().parents or not (path.is_file() or path.is_symlink()):
                continue  # only files below the restored root
            path.unlink()
            removed += 1
        lines.append(f"erasure {request_id}: {removed} files removed by path {number}")
    return lines


def reapply_on_restore(
    vault: Vault, keyring: Keyring, source: str, rules: dict | None = None
) -> tuple[dict | None, list[tuple[str, str]]]:
    """What a restore of ``source`` must re-apply: (the rule, [(request id, subject)]); (None, []) when none.

    Read before the target changes, so a request the restoring keys cannot open stops the restore
    early. ``rules``: the stack's current rules (they win over the one recorded in the vault).
    """
    subjects = erasures_for(vault, keyring, source)
    if not subjects:
        return None, []
    rule = (rules or {}).get(source)
    rule = rule_dict(rule) if rule is not None else recorded_rule(vault, source)
    if rule is None:
        raise ErasureError(
            f"erasure requests {', '.join(i for i, _ in subjects)} name {source} but no erasure rule is recorded for it; "
            f"set retention.erasure.{source} in the stack and restore again"
        )
    return rule, subjects


# ---------------------------------------------------------------------------------------------- the stack's side


def _classes_of(config: Any, source: Any) -> list[str]:
    return list(getattr(source, "data_classes", []) or [])


def _personal(config: Any, class_names: list[str]) -> list[str]:
    classes = config.retention.classes()
    return [
        name
        for name in class_names
        if name == PERSONAL_CLASS or (name in classes and (classes[name].framework or "").upper() == PERSONAL_FRAMEWORK)
    ]


def erasure_sources(config: Any) -> list[str]:
    """The sources an erasure concerns: every source with an erasure rule or a personal data class.

    A personal source without a rule is refused: its restores could not honour the request."""
    rules = config.retention.erasure
    names = []
    for source in config.sources:
        personal = _personal(config, _classes_of(config, source))
        if personal and source.name not in rules:
            raise ErasureError(
                f"source {source.name} holds personal data (class {personal[0]}) but has no erasure rule, so a restore "
                f"could not erase a subject from it; set retention.erasure.{source.name}.statements (or redis_patterns "
                "/ paths) in the stack and apply it"
            )
        if personal or source.name in rules:
            names.append(source.name)
    if not names:
        raise ErasureError(
            f"stack {config.stack}: no source holds personal data or has an erasure rule; mark sources with "
            "data_classes: [personal] and set retention.erasure.<source>"
        )
    return names


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record_erasure(config: Any, subject: str, *, admin_key: SigningKey, now: datetime | None = None) -> ErasureRequest:
    """Record a GDPR erasure request for ``subject`` (admin key needed); nothing is deleted yet (``apply_erasure``).

    The request is due ``retention.erasure_deadline_days`` after it is received. Audit entry
    ``erasure.request`` with the id, sources and due date only.
    """
    from core import audit  # H4's trail; imported here so restores never need it

    subject = subject.strip()
    if not subject:
        raise ErasureError("erase: the subject is empty; pass the identifier to erase (e-mail address, customer id)")
    if not config.signing.is_admin(admin_key.public_b64):
        raise ErasureError(
            f"erase: the key {admin_key.fingerprint} is not an admin key of stack {config.stack}; list its public key "
            "in signing.admin_public_keys"
        )
    sources = erasure_sources(config)
    when = _now(now)
    request_id = new_request_id(when)
    sealed, digest = seal_subject(config.keyring(), request_id, subject)
    rules = config.retention.erasure
    request = ErasureRequest(
        id=request_id,
        received_at=iso(when),
        due_by=iso(when + timedelta(days=config.retention.erasure_deadline_days)),
        subject_digest=digest,
        sealed_subject=sealed,
        requested_by=_actor(),
        admin=admin_key.public_b64,
        sig="",
        sources=sources,
        rules={name: rule_dict(rules[name]) for name in sources if name in rules},
    )
    request.sig = admin_key.sign(request.canonical())
    # Created if absent: backups taken after the request may hold the subject again, and their restores erase it.
    vault = config.vault.open(create=True)
    key = f"{PREFIX}{request_id}.json"
    if vault.store.create(key, json.dumps(request.to_dict(), sort_keys=True, indent=1).encode()) is None:
        raise ErasureError(f"{key} exists already; record the request again (a new id is drawn)")
    audit.record(
        config,
        "erasure.request",
        request_id,
        {"sources": sources, "due_by": request.due_by, "admin": fingerprint(admin_key.public_b64)},
    )
    return request


def _why_kept(decision: Any) -> str:
    reasons = [r for r in getattr(decision, "reasons", []) if r.startswith(("keep", "refused"))]
    return "; ".join(reasons or list(getattr(decision, "reasons", [])) or ["kept by the policy"])


def erasure_plan(config: Any, sources: list[str], *, now: datetime | None = None, vault: Vault | None = None) -> dict:
    """What applying an erasure to ``sources`` does now: the backups past their class maximum that the
    retention plan deletes (shredded), and every other backup of those sources with why it is kept."""
    from core.retention.catalog import read_catalog
    from core.retention.holds import HoldBook
    from core.retention.planner import plan_retention

    when = _now(now)
    vault = vault or config.vault.open()
    catalog = read_catalog(vault, config)
    # Holds read as the retention run reads them (core.retention.run): the same plan, the same answer.
    holds = HoldBook.for_stack(vault.store, config.signing).active(config.signing.admin_public_keys)
    plan = plan_retention(catalog, config.retention, holds, when)
    shred, kept, logs = [], [], []
    for decision in plan.decisions:
        if decision.source not in sources:
            continue
        past_max = decision.action == "delete" and any("maximum" in r for r in decision.reasons)
        if decision.kind != "backup":
            # Log pieces past the maximum go with the next retention run (it shreds their session keys
            # once every piece of a session is gone); the others hold the subject until they expire.
            why = "; ".join(decision.reasons) if past_max else _why_kept(decision)
            logs.append({"id": decision.item, "why": why})
        elif past_max:
            shred.append(decision.item)
        else:
            kept.append({"id": decision.item, "why": f"{_why_kept(decision)}; erasure re-applied on restore"})
    warnings = [w for w in plan.warnings if any(w.startswith(f"{s}:") for s in sources)]
    return {
        "shredded": shred,
        "kept": kept,
        "logs": logs,
        "warnings": warnings,
        "refused": dict(plan.refused),
        "vault": vault,
    }


def apply_erasure(
    config: Any, request_id: str, *, dry_run: bool = False, now: datetime | None = None, say: Say = print
) -> dict:
    """Apply a recorded request: shred the backups past their maximum (certificate each, authority
    ``erasure <id>``), keep the others and say why. ``dry_run``: the same answer, nothing changed.

    Returns {"id", "shredded": [backup ids], "certificates": [ids], "kept": [{"id", "why"}], "logs": [{"id",
    "why"}] (log ranges: the retention run deletes those past the maximum), "warnings", "due_by"}.
    Audit entry ``erasure.apply`` with the counts.
    """
    from core import audit
    from core.audit.verify import unacknowledged_alarm
    from core.retention.shred import delete_backup

    vault = config.vault.open()
    request = load_request(vault.store, request_id)
    if not signed_by_admin(request, config.signing.admin_public_keys):
        raise ErasureError(
            f"erasure request {request_id} is not signed by an admin key of stack {config.stack}; it is ignored - "
            "record it again with 'genesis-dr erase --subject ...'"
        )
    when = _now(now)
    plan = erasure_plan(config, request.sources, now=when, vault=vault)
    result = {
        "id": request.id,
        "due_by": request.due_by,
        "dry_run": dry_run,
        "shredded": list(plan["shredded"]),
        "certificates": [],
        "kept": plan["kept"],
        "logs": plan["logs"],
        "warnings": plan["warnings"],
    }
    for source, why in plan["refused"].items():
        if source in request.sources:
            say(f"erasure {request.id}: {source}: nothing deleted ({why})")
    if dry_run:
        for backup_id in result["shredded"]:
            say(f"erasure {request.id}: would shred {backup_id} (past its class maximum)")
        for item in result["kept"]:
            say(f"erasure {request.id}: keeps {item['id']}: {item['why']}")
        return result
    alarm = unacknowledged_alarm(vault.store, config.signing.admin_public_keys)
    if alarm is not None and result["shredded"]:
        # Like the retention run: nothing is deleted while the audit trail may have been tampered with.
        raise ErasureError(
            f"erasure {request.id}: no backup is shredded while the audit trail has an unacknowledged alarm (raised "
            f"{alarm.get('at', 'earlier')}); run 'genesis-dr audit verify', then 'genesis-dr audit acknowledge', and "
            "apply the request again"
        )
    replicas = [(r.name, r.vault.store()) for r in config.replicas]
    signer = config.signing.host_key()
    for backup_id in result["shredded"]:
        cert = delete_backup(
            plan["vault"],
            replicas,
            backup_id,
            reason=f"GDPR erasure {request.id}: past its data class maximum",
            authority=f"erasure {request.id}",
            signer=signer,
            passes=config.retention.overwrite_passes,
            say=say,
        )
        result["certificates"].append(cert.id)
    for item in result["kept"]:
        say(f"erasure {request.id}: keeps {item['id']}: {item['why']}")
    stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
    record = {k: v for k, v in result.items() if k != "dry_run"}
    record.update(at=iso(when), signer=signer.public_b64)
    record["sig"] = signer.sign(_canonical(record))
    vault.store.put(f"{PREFIX}{request.id}.applied-{stamp}.json", json.dumps(record, sort_keys=True, indent=1).encode())
    audit.record(
        config,
        "erasure.apply",
        request.id,
        {"shredded": len(result["shredded"]), "kept": len(result["kept"]), "certificates": result["certificates"]},
    )
    return result


def preview_erasure(config: Any, *, now: datetime | None = None) -> dict:
    """``erase --dry-run``: which sources a request would name and what applying it would do; records nothing."""
    sources = erasure_sources(config)
    plan = erasure_plan(config, sources, now=now)
    return {key: plan[key] for key in ("shredded", "kept", "logs", "warnings", "refused")} | {"sources": sources}


__all__ = [
    "ErasureRequest",
    "apply_erasure",
    "apply_erasures",
    "erasure_sources",
    "erasures_for",
    "pending",
    "preview_erasure",
    "reapply_on_restore",
    "record_erasure",
    "requests",
]
