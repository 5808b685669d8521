"""Proving the audit trail complete and unaltered, and the alarm that stops deletions until an admin looks.

What each kind of tampering leaves behind (every problem names the entry):

* **edited**: the entry's signature no longer verifies (any byte of what was signed changed), or a validly
  signed entry is not the one its successor was chained to (replaced wholesale);
* **deleted**: a seq missing between entries, or past the last one while the head (or a replica's head,
  which an attacker on the primary cannot reach) names it;
* **reordered**: an object whose name is not the seq in its body (entries swapped or renamed);
* **inserted**: an object under ``audit/entries/`` that is not an entry name, or a second entry claiming a
  seq that the chain does not continue from;
* **bad-signature** / **untrusted-signer**: no signature, or a signer the stack does not list (strict only
  when the stack lists trusted keys);
* **head-mismatch**: the head names a seq whose entry hashes differently;
* **unreadable**: not JSON, or not an entry.

A failed verification raises an alarm (``audit/alarm.json`` plus an ``audit.alarm`` entry). Retention refuses
to delete while an alarm has problems no admin acknowledged (``audit/acks/<stamp>.json``, signed by a key in
``signing.admin_public_keys``; an acknowledgement by any other key is ignored). Acknowledged problems are still
reported, as such, by every later verification.

**Verified checkpoint** (``audit/verified.json`` ``{seq, hash, at, signer, sig}``, signed by the host key): written
after a verification passes. ``verify_recent`` (what every retention run does before deleting) reads only the
entries from the checkpoint on - the names of the older ones are still listed, so a deleted old entry is still a
gap - and falls back to a full verification when the checkpoint is missing, unsigned, signed by a key it does not
accept, or does not match the entry it names. A full verification (the daily ``audit verify``) reads everything
and names a checkpoint that is forged or no longer matches its entry (kind **checkpoint**).

Entries queued on this host because the vault could not be written (``core.audit.pending``) are counted in the
report (``pending_on_host``): not a failure, but never silent.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from core.audit.pending import PendingQueue
from core.audit.trail import ENTRIES, GENESIS, AuditTrail, canonical, entry_hash, now_iso
from core.crypto.signing import SigningKey, fingerprint, verify_signature
from core.errors import AuditTrailError, SigningKeyError
from core.storage.base import ObjectNotFound, Store

ALARM = "audit/alarm.json"
ACKS = "audit/acks/"
CHECKPOINT = "audit/verified.json"
_NAME = re.compile(re.escape(ENTRIES) + r"(\d{12})\.json")
_SHOWN = 5


@dataclass
class AuditProblem:
    seq: int | None
    kind: str  # edited deleted reordered inserted bad-signature untrusted-signer head-mismatch unreadable checkpoint
    text: str  # one line naming the entry

    @property
    def key(self) -> str:
        """What an acknowledgement covers: the kind and the entry, not the wording."""
        return f"{self.kind}:{self.seq}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AuditProblem:
        return cls(d.get("seq"), str(d.get("kind")), str(d.get("text")))


@dataclass
class AuditReport:
    entries: int
    head: dict | None
    problems: list[AuditProblem]  # not acknowledged: these fail the verification
    signers: dict[str, int]  # fingerprint -> entries it signed (valid signatures only)
    acknowledged: list[AuditProblem] = field(default_factory=list)
    location: str = ""
    last: dict | None = None  # {"seq", "hash"} of the newest genuine entry (what a checkpoint records)
    scope: str = "full"  # "full", or "since checkpoint <seq>" (verify_recent), or "full (<why no checkpoint>)"
    pending_on_host: int = 0  # entries queued on this host, not yet in the vault (core.audit.pending)
    rejected_on_host: int = 0  # queued files that were altered on this host (renamed *.rejected)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = f"head seq {self.head.get('seq')}" if isinstance(self.head, dict) else "no head"
        signers = ", ".join(f"{fp} ({n})" for fp, n in sorted(self.signers.items())) or "none"
        lines = [f"audit trail of {self.location}: {self.entries} entries, {head}; signers: {signers}"]
        if self.scope != "full":
            lines.append(f"checked: {self.scope}")
        if self.ok:
            lines.append(
                "verified: complete and unaltered"
                + (" (apart from acknowledged problems)" if self.acknowledged else "")
            )
        lines += [f"FAILED {p.kind}: {p.text}" for p in self.problems]
        lines += [f"acknowledged {p.kind}: {p.text}" for p in self.acknowledged]
        if self.pending_on_host:
            lines.append(
                f"PENDING on this host: {self.pending_on_host} entries queued when the vault could not be written; "
                "the next audited run that can write to the vault appends them, marked late"
            )
        if self.rejected_on_host:
            lines.append(
                f"REJECTED on this host: {self.rejected_on_host} queued entries were altered before they could be "
                "appended (kept as *.rejected in the state directory's audit-pending/)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "location": self.location,
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "signers": self.signers,
            "problems": [p.to_dict() for p in self.problems],
            "acknowledged": [p.to_dict() for p in self.acknowledged],
            "last": self.last,
            "scope": self.scope,
            "pending_on_host": self.pending_on_host,
            "rejected_on_host": self.rejected_on_host,
        }

    def raise_if_failed(self) -> None:
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise AuditTrailError(
                f"audit trail of {self.location} failed verification: {first.kind}: {first.text}{more}; find out what "
                "happened, then an admin runs 'genesis-dr audit acknowledge REASON' (retention deletes nothing until then)"
            )


def _seqs(seqs: list[int]) -> str:
    return f"entry {seqs[0]}" if len(seqs) == 1 else f"entries {seqs[0]}-{seqs[-1]}"


def _ranges(missing: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in missing:
        if out and out[-1][-1] == seq - 1:
            out[-1].append(seq)
        else:
            out.append([seq])
    return out


def _fp(entry: dict) -> str:
    try:
        return fingerprint(str(entry.get("signer", "")))
    except SigningKeyError:
        return "?"


class _Check:
    """One verification: reads every entry once, then sorts out what is wrong."""

    def __init__(self, store: Store, trusted: dict[str, str]) -> None:
        self.store, self.trusted = store, trusted
        self.where = store.describe()
        self.problems: list[AuditProblem] = []
        self.signers: Counter[str] = Counter()
        self.valid: list[tuple[int, dict, str]] = []  # (name seq, entry, hash) with a good signature
        self.faulty: set[int] = set()  # name seqs already named as edited / unreadable
        self.unread: set[int] = set()  # name seqs below the checkpoint: listed (gaps), not read

    def add(self, seq: int | None, kind: str, text: str) -> None:
        if all((p.kind, p.seq) != (kind, seq) for p in self.problems):
            self.problems.append(AuditProblem(seq, kind, text))

    def read(self, from_seq: int = 0) -> int:
        """Read the entries named ``from_seq`` and later (all by default); the number of entries listed."""
        named: list[tuple[int, str]] = []
        listed = 0
        for key in self.store.list(ENTRIES):
            match = _NAME.fullmatch(key)
            if match is None:
                self.add(None, "inserted", f"{key} is not an entry of the trail (an object put there by hand)")
                continue
            listed += 1
            if int(match.group(1)) < from_seq:
                self.unread.add(int(match.group(1)))
                continue
            named.append((int(match.group(1)), key))
        # One GET per entry: a year of 5-minute backups is ~100k entries, so they are read on the store's threads.
        with ThreadPoolExecutor(max(1, self.store.capabilities.io_threads), thread_name_prefix="audit-verify") as pool:
            for (n, key), raw in zip(named, pool.map(self._get, [key for _, key in named]), strict=True):
                if raw is not None:  # None: deleted while we listed; the gap check names it
                    self._entry(n, key, raw)
        return listed

    def _get(self, key: str) -> bytes | None:
        try:
            return self.store.get(key)
        except ObjectNotFound:
            return None

    def _entry(self, n: int, key: str, raw: bytes) -> None:
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        fields_ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("seq"), int)
            and isinstance(entry.get("prev"), str)
            and isinstance(entry.get("signer"), str)
        )
        if not fields_ok:
            self.faulty.add(n)
            self.add(n, "unreadable", f"entry {n} ({key}) is not a readable audit entry")
            return
        if not isinstance(entry.get("sig"), str) or not entry["sig"]:
            self.faulty.add(n)
            self.add(
                n, "bad-signature", f"entry {n} ({entry.get('action')} {entry.get('subject')}) carries no signature"
            )
            return
        if not verify_signature(entry["signer"], canonical(entry, with_sig=False), entry["sig"]):
            self.faulty.add(n)
            self.add(
                n,
                "edited",
                f"entry {n} ({entry.get('action')} {entry.get('subject')}, {entry.get('at')}) was altered after it "
                f"was signed: its signature by {_fp(entry)} does not verify",
            )
            return
        signer = _fp(entry)
        self.signers[signer] += 1
        if self.trusted and signer not in self.trusted:
            self.add(
                n,
                "untrusted-signer",
                f"entry {n} ({entry.get('action')} {entry.get('subject')}) is signed by {signer}, a key the stack "
                "does not list in signing.trusted_public_keys or admin_public_keys",
            )
        self.valid.append((n, entry, entry_hash(entry)))

    def chain(self) -> dict[int, tuple[int, dict, str]]:
        """The genuine entry of each seq (name seq, entry, hash); names reordered, inserted and replaced ones."""
        by_seq: dict[int, list[tuple[int, dict, str]]] = {}
        for item in self.valid:
            by_seq.setdefault(item[1]["seq"], []).append(item)
        prevs = {item[1]["prev"] for item in self.valid}
        genuine: dict[int, tuple[int, dict, str]] = {}
        for seq in sorted(by_seq):
            candidates = sorted(by_seq[seq], key=lambda item: item[0])
            chosen = candidates[0]
            if len(candidates) > 1:
                followed = [c for c in candidates if c[2] in prevs]
                named = [c for c in candidates if c[0] == seq]
                chosen = followed[0] if len(followed) == 1 else named[0] if len(named) == 1 else candidates[0]
                for n, entry, _ in candidates:
                    if (n, entry) != (chosen[0], chosen[1]):
                        self.add(
                            n,
                            "inserted",
                            f"entry {seq} at {ENTRIES}{n:012d}.json ({entry.get('action')} {entry.get('subject')}, "
                            f"{entry.get('at')}, signed by {_fp(entry)}) is not part of the chain: another entry "
                            f"{seq} is, and the trail goes on from that one",
                        )
            genuine[seq] = chosen
        for seq, (n, entry, _) in sorted(genuine.items()):
            if n != seq:
                self.add(
                    n,
                    "reordered",
                    f"{ENTRIES}{n:012d}.json holds entry {seq} ({entry.get('action')} {entry.get('subject')}): "
                    "entries were swapped or renamed",
                )
        for seq, (n, entry, _) in sorted(genuine.items()):
            if seq == 1:
                if entry["prev"] != GENESIS:
                    self.add(
                        n, "inserted", f"entry 1 at {ENTRIES}{n:012d}.json does not start a trail (its prev is set)"
                    )
                continue
            before = genuine.get(seq - 1)
            if before is None:
                continue  # missing or faulty: named by the gap check or already
            if entry["prev"] != before[2]:
                self.add(
                    before[0],
                    "edited",
                    f"entry {seq - 1} ({before[1].get('action')} {before[1].get('subject')}, {before[1].get('at')}) is "
                    f"not the entry that entry {seq} was chained to: it was replaced",
                )
        return genuine

    def gaps(self, genuine: dict[int, tuple[int, dict, str]]) -> int:
        present = set(genuine) | self.faulty | self.unread
        last = max(present, default=0)
        missing = [seq for seq in range(1, last + 1) if seq not in present]
        for run in _ranges(missing):
            self.add(run[0], "deleted", f"{_seqs(run)} of {last} missing: deleted from the trail")
        return last

    def against_head(self, head: dict | None, genuine: dict, last: int, whose: str) -> None:
        """A head (the primary's or a replica's) names an entry: it must be there, with that hash."""
        if not isinstance(head, dict) or not isinstance(head.get("seq"), int) or head["seq"] < 1:
            return
        seq, hashed = head["seq"], str(head.get("hash", ""))
        if seq > last:
            run = list(range(last + 1, seq + 1))
            self.add(
                last + 1,
                "deleted",
                f"{_seqs(run)} missing: {whose} head records entry {seq} (hash {hashed[:12]}), the trail ends at "
                f"{last} (its tail was deleted)",
            )
            return
        found = genuine.get(seq)
        if found is None or seq in self.faulty:
            return  # named already
        if found[2] != hashed:
            if whose == "the":
                self.add(
                    seq,
                    "head-mismatch",
                    f"the head records entry {seq} with hash {hashed[:12]}, the entry hashes {found[2][:12]}",
                )
            else:
                # The entry the replica saw is gone from the primary, whatever took its seq since: a stable name, so
                # an acknowledgement still covers it after later appends.
                self.add(
                    seq,
                    "deleted",
                    f"entry {seq} recorded by {whose} head (hash {hashed[:12]}) is not on the primary: deleted and "
                    f"replaced by another entry {seq} (hash {found[2][:12]})",
                )


def verify_trail(
    store: Store,
    trusted: dict[str, str],
    *,
    replicas: list[tuple[str, Store]] | tuple = (),
    admins: list[str] | None = None,
    checkpoint_signer: SigningKey | None = None,
) -> AuditReport:
    """Verify the whole trail in ``store`` (see the module doc); ``trusted``: fingerprint -> public key of the
    signers the stack vouches for (``SigningConfig.trusted()``; empty: any valid signature, its signer reported).
    ``replicas``: (name, store) whose recorded heads the primary's trail must still contain. ``admins``: the
    stack's admin public keys, whose acknowledgements move problems to ``acknowledged``. ``checkpoint_signer``:
    when given and the trail verifies, ``audit/verified.json`` is moved to its newest entry, signed by it."""
    report = _verify(store, trusted, replicas, admins, since=None)
    if checkpoint_signer is not None:
        _advance_checkpoint(store, report, checkpoint_signer)
    return report


def verify_recent(
    store: Store,
    trusted: dict[str, str],
    *,
    accept: list[str],
    replicas: list[tuple[str, Store]] | tuple = (),
    admins: list[str] | None = None,
    checkpoint_signer: SigningKey | None = None,
) -> AuditReport:
    """Verify the entries from the verified checkpoint on (a full verification when there is no usable one:
    missing, unsigned, signed by a key not in ``accept`` (public keys), or not matching its entry). Every entry
    name is still listed, so a deleted entry before the checkpoint is still named. ``checkpoint_signer``: as in
    ``verify_trail``."""
    checkpoint, why = read_checkpoint(store, accept)
    report = None
    if checkpoint is not None:
        report = _verify(store, trusted, replicas, admins, since=checkpoint)
        if report.scope != "since":
            why, report = report.scope, None
        else:
            report.scope = f"since checkpoint {checkpoint['seq']} (verified {checkpoint.get('at')})"
    if report is None:
        report = _verify(store, trusted, replicas, admins, since=None)
        report.scope = f"full ({why})"
    if checkpoint_signer is not None:
        _advance_checkpoint(store, report, checkpoint_signer)
    return report


def _verify(store, trusted, replicas, admins, *, since: dict | None) -> AuditReport:
    check = _Check(store, trusted)
    count = check.read(since["seq"] if since else 0)
    genuine = check.chain()
    scope = "full"
    if since is not None:
        found = genuine.get(since["seq"])
        if found is None or since["seq"] in check.faulty or found[2] != since["hash"]:
            # Checked against nothing it can trust: the caller verifies everything instead.
            return AuditReport(0, None, [], {}, scope=f"the checkpoint does not match entry {since['seq']}")
        scope = "since"
    last = check.gaps(genuine)
    head = AuditTrail(store).head()
    check.against_head(head, genuine, last, "the")
    for name, replica in replicas:
        check.against_head(AuditTrail(replica).head(), genuine, last, f"replica {name}'s")
    if since is None:
        _check_checkpoint(store, check, genuine, last)
    problems = sorted(check.problems, key=lambda p: (p.seq is None, p.seq or 0, p.kind))
    covered = _acknowledged_keys(store, admins or [])
    newest = max(genuine, default=0)
    queue = PendingQueue(store)
    return AuditReport(
        entries=count,
        head=head,
        problems=[p for p in problems if p.key not in covered],
        signers=dict(check.signers),
        acknowledged=[p for p in problems if p.key in covered],
        location=check.where,
        last={"seq": newest, "hash": genuine[newest][2]} if newest else None,
        scope=scope,
        pending_on_host=queue.count(),
        rejected_on_host=len(queue.rejected()),
    )


# -- verified checkpoint ------------------------------------------------------------------


def _checkpoint_record(store: Store) -> tuple[dict | None, str | None]:
    """The stored checkpoint with a valid signature, or (None, why not); (None, None) when there is none."""
    try:
        raw = store.get(CHECKPOINT)
    except ObjectNotFound:
        return None, None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("seq"), int)
        or record["seq"] < 1
        or not isinstance(record.get("hash"), str)
        or not isinstance(record.get("signer"), str)
    ):
        return None, f"{CHECKPOINT} is not a readable checkpoint"
    if not isinstance(record.get("sig"), str) or not verify_signature(
        record["signer"], canonical(record, with_sig=False), record["sig"]
    ):
        return None, f"{CHECKPOINT} (entry {record['seq']}) is unsigned or its signature does not verify"
    return record, None


def read_checkpoint(store: Store, accept: list[str]) -> tuple[dict | None, str]:
    """The verified checkpoint, if it is validly signed by one of the ``accept`` public keys; else (None, why
    a full verification is needed)."""
    record, why = _checkpoint_record(store)
    if record is None:
        return None, why or "no verified checkpoint yet"
    if record["signer"] not in accept:
        return None, f"{CHECKPOINT} is signed by {_fp(record)}, a key not accepted for checkpoints"
    return record, ""


def _check_checkpoint(store: Store, check: _Check, genuine: dict, last: int) -> None:
    """A full verification names a checkpoint that is forged, signed by an untrusted key, or whose entry is
    not (any longer) the one it recorded."""
    record, why = _checkpoint_record(store)
    if record is None:
        if why is not None:
            check.add(None, "checkpoint", f"{why}: not written by genesis-dr (put there by hand?)")
        return
    seq, signer = record["seq"], _fp(record)
    if check.trusted and signer not in check.trusted:
        check.add(seq, "checkpoint", f"{CHECKPOINT} (entry {seq}) is signed by {signer}, a key the stack does not list")
        return
    found = genuine.get(seq)
    if seq > last or found is None:
        check.add(
            seq,
            "checkpoint",
            f"{CHECKPOINT} records entry {seq} as verified at {record.get('at')}, the trail has no such entry now",
        )
    elif found[2] != record["hash"]:
        check.add(
            seq,
            "checkpoint",
            f"entry {seq} is not the entry verified at {record.get('at')} ({CHECKPOINT} records hash "
            f"{record['hash'][:12]}, it hashes {found[2][:12]}): it was replaced after it was verified",
        )


def write_checkpoint(store: Store, seq: int, hashed: str, signer: SigningKey) -> dict:
    """Record that the trail up to entry ``seq`` (hash ``hashed``) verified: ``audit/verified.json``."""
    record = {"seq": seq, "hash": hashed, "at": now_iso(), "signer": signer.public_b64}
    record["sig"] = signer.sign(canonical(record, with_sig=False))
    store.put(CHECKPOINT, json.dumps(record, sort_keys=True, indent=1).encode(), overwrite=True)
    return record


def _advance_checkpoint(store: Store, report: AuditReport, signer: SigningKey) -> None:
    if report.ok and report.last:
        write_checkpoint(store, report.last["seq"], report.last["hash"], signer)


# -- alarm and acknowledgement ----------------------------------------------------------


def _signed(record: dict, key: SigningKey, field_name: str) -> dict:
    record = record | {field_name: key.public_b64}
    return record | {"sig": key.sign(canonical(record, with_sig=False))}


def raise_alarm(store: Store, report: AuditReport, signer: SigningKey) -> None:
    """Record a failed verification: ``audit/alarm.json`` (replaced; it lists the unacknowledged problems) and an
    ``audit.alarm`` entry. Retention refuses to delete until an admin acknowledges it."""
    alarm = _signed(
        {
            "version": 1,
            "at": now_iso(),
            "location": report.location,
            "entries": report.entries,
            "problems": [p.to_dict() for p in report.problems],
        },
        signer,
        "signer",
    )
    store.put(ALARM, json.dumps(alarm, sort_keys=True, indent=1).encode(), overwrite=True)
    AuditTrail(store, signer).append(
        "audit.alarm",
        "audit trail",
        {"problems": [p.key for p in report.problems][:50], "count": len(report.problems)},
        outcome="failure",
    )


def _alarm(store: Store) -> tuple[dict, bytes] | None:
    try:
        raw = store.get(ALARM)
    except ObjectNotFound:
        return None
    try:
        alarm = json.loads(raw)
    except ValueError:
        alarm = None
    if not isinstance(alarm, dict):
        # A damaged alarm still stops deletions: its problems are unknown, so nothing covers them.
        alarm = {"problems": [{"seq": None, "kind": "unreadable", "text": f"{ALARM} cannot be read"}]}
    return alarm, raw


def _acknowledged_keys(store: Store, admins: list[str]) -> set[str]:
    """Problem keys covered by acknowledgements an admin key signed (any other acknowledgement is ignored)."""
    covered: set[str] = set()
    if not admins:
        return covered
    for key in store.list(ACKS):
        try:
            ack = json.loads(store.get(key))
        except (ObjectNotFound, ValueError):
            continue
        if not isinstance(ack, dict) or ack.get("admin") not in admins:
            continue
        if not verify_signature(ack["admin"], canonical(ack, with_sig=False), str(ack.get("sig", ""))):
            continue
        covered.update(str(k) for k in ack.get("problems", []) if isinstance(k, str))
    return covered


def unacknowledged_alarm(store: Store, admins: list[str] | None = None) -> dict | None:
    """The alarm, unless acknowledgements signed by keys in ``admins`` (``signing.admin_public_keys``) cover
    every problem it lists. Without ``admins`` no acknowledgement counts (fail safe: deletions stay stopped)."""
    found = _alarm(store)
    if found is None:
        return None
    alarm, _ = found
    problems = [AuditProblem.from_dict(p) for p in alarm.get("problems", []) if isinstance(p, dict)]
    covered = _acknowledged_keys(store, admins or [])
    if problems and all(p.key in covered for p in problems):
        return None
    return alarm


def acknowledge(store: Store, admin_key: SigningKey, reason: str, admins: list[str]) -> dict:
    """An admin's signed acknowledgement of the current alarm (``audit/acks/<stamp>.json``) and an
    ``audit.acknowledge`` entry signed by the admin key; later verifications report those problems as
    acknowledged, and retention deletes again."""
    if admin_key.public_b64 not in admins:
        raise SigningKeyError(
            f"audit acknowledge: the key (fingerprint {admin_key.fingerprint}) is not listed in "
            "signing.admin_public_keys; only an admin key acknowledges a failed audit"
        )
    if not reason.strip():
        raise AuditTrailError("audit acknowledge: give the reason (what was found and done), it is recorded")
    found = _alarm(store)
    if found is None:
        raise AuditTrailError(
            f"no audit alarm on {store.describe()}: nothing to acknowledge ('genesis-dr audit verify')"
        )
    alarm, raw = found
    problems = [AuditProblem.from_dict(p) for p in alarm.get("problems", []) if isinstance(p, dict)]
    at = datetime.now(UTC)
    ack = _signed(
        {
            "version": 1,
            "at": now_iso(),
            "reason": reason.strip(),
            "alarm_sha256": hashlib.sha256(raw).hexdigest(),
            "problems": [p.key for p in problems],
        },
        admin_key,
        "admin",
    )
    key = f"{ACKS}{at.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.json"
    if store.create(key, json.dumps(ack, sort_keys=True, indent=1).encode()) is None:
        raise AuditTrailError(f"audit acknowledge: {key} exists already; run it again")
    AuditTrail(store, admin_key).append(
        "audit.acknowledge",
        "audit trail",
        {"ack": key, "problems": ack["problems"][:50], "reason": reason.strip()[:300]},
    )
    return ack
