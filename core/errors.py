"""Errors an operator can act on.

Each class carries its exit code; each message names the object and the remedy
(borg's habit). The CLI prints ``str(error)`` as one line and exits with
``error.exit_code``; nothing here ever includes a secret.
"""

from __future__ import annotations


class DRError(Exception):
    """Base of every expected failure. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Prefect pickles task exceptions; keep the class, the message and instance attributes
        # (an overridden exit_code, the transient mark) intact.
        return (self.__class__, (self.message,), self.__dict__ or None)


class ConfigError(DRError):
    """The stack file or a block is invalid (names the field). Exit 2."""

    exit_code = 2


class VaultError(DRError):
    """The vault cannot be opened or written (missing, unwritable, full). Exit 3."""

    exit_code = 3


class FormatError(VaultError):
    """A vault or manifest of a format/version this program does not understand. Exit 4."""

    exit_code = 4


class IntegrityError(DRError):
    """A stored object is corrupt, truncated, reordered or missing. Exit 5."""

    exit_code = 5


class WrongKeyError(DRError):
    """No configured passphrase or private key opens the backup. Exit 6."""

    exit_code = 6


class SourceUnavailableError(DRError):
    """A source or restore target is down or refuses the login. Exit 7.

    ``transient`` marks a condition that may pass by itself (connection refused or
    reset, a timeout, a server still starting or loading): the flows retry those
    with backoff, and never the others (a refused login, a missing database).
    """

    exit_code = 7

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BackupNotFoundError(DRError):
    """No backup with that id (or none matching) in the vault. Exit 8."""

    exit_code = 8


class TargetNotEmptyError(DRError):
    """The restore target already holds data and --force was not given. Exit 9."""

    exit_code = 9


class UnsafeArchiveError(IntegrityError):
    """An archive member would escape the restore directory. Exit 10."""

    exit_code = 10


class LockedError(DRError):
    """Another run holds the lock for this backup chain. Exit 11."""

    exit_code = 11


class VerificationError(DRError):
    """The restored data does not match the checks recorded at backup time. Exit 12."""

    exit_code = 12


class EngineError(DRError):
    """A dump/restore tool failed for a reason other than the above. Exit 13."""

    exit_code = 13


class LogGapError(DRError):
    """A log (WAL, binlog, Redis stream) has a gap: a range the vault does not hold, or the
    server dropped before it was captured. Names the source and range, and says a new full
    backup is needed. Exit 14."""

    exit_code = 14


class RecoveryTargetError(DRError):
    """A point-in-time target the vault cannot reach (before the oldest recoverable point,
    in the future, or a chain whose full is gone). Exit 15."""

    exit_code = 15


class KeyServiceError(DRError):
    """A KMS key refused to wrap or unwrap a data key (disabled, pending deletion, access denied,
    not found, wrong region) and no other recipient opened it. Names the key id (not a secret)
    and the remedy. Exit 19."""

    exit_code = 19


class ReplicationError(DRError):
    """A replica could not be brought up to date, or lags behind the stack's limit
    (``replication.max_lag_seconds``): names the replica and what it lacks. ``report`` (when
    set) is the replica's report as a dict, so a flow can still show its row. Exit 20."""

    exit_code = 20


class ValidationFailedError(DRError):
    """A validation found a failed critical check (a missing or damaged object, a broken chain, a
    backup older than its RPO, a restore that does not match its checks). ``record`` (when set) is
    the validation record as a dict. Exit 21."""

    exit_code = 21


class DrillFailedError(DRError):
    """A drill failed: a recovery did not complete or prove itself, or the measured RTO or RPO
    missed the stack's objectives. ``record`` (when set) is the drill record as a dict. Exit 22."""

    exit_code = 22


class SandboxError(DRError):
    """A throw-away sandbox (a fresh postgres, mariadbd, redis-server or directory on 127.0.0.1)
    could not be started: a binary missing, a port taken, a start that failed (with its log's last
    line); or a drill target that is a production source. Exit 23."""

    exit_code = 23


class StaleEpochError(DRError):
    """A monitor or failover acted on an old failover epoch: another run changed the active region first. Exit 24."""

    exit_code = 24


class DnsSwitchError(DRError):
    """A DNS record could not be read or switched (zone not found, access denied, provider unreachable, change
    not applied in time): names the provider, zone and record and the remedy. Exit 25."""

    exit_code = 25


class NoHealthyRegionError(DRError):
    """No region qualifies as a failover target (all_regions_unhealthy, or every other region lags beyond the
    allowed data loss): names each region's reason. Exit 26."""

    exit_code = 26


class TargetRefusedError(DRError):
    """The region named as failover target is unhealthy or lags beyond the allowed data loss (or is already
    active): names the reason and the remedy (--force, which the report records). Exit 27."""

    exit_code = 27


class FailoverIncompleteError(DRError):
    """A failover or failback stopped halfway (a promotion or write proof failed): names each component's state
    and the next step. ``report`` (when set) is the run's report as a dict. Exit 28."""

    exit_code = 28

    def __init__(self, message: str, *, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report


class HoldError(DRError):
    """A legal hold command that cannot be done: a scope that is malformed JSON, unknown fields or matches
    nothing; an unknown or already released hold id. Names the hold or scope and the remedy. Exit 29."""

    exit_code = 29


class RetentionRefusedError(DRError):
    """Retention refused to delete: the policy would delete every backup of a source, or the audit trail
    failed verification and no operator acknowledged it. Nothing was deleted. Exit 30."""

    exit_code = 30


class ObjectLockedError(VaultError):
    """An object under an S3 Object Lock legal hold or retention, or a GCS hold, cannot be deleted or
    overwritten; the message names the object and when (or by what release) it becomes deletable. Exit 31."""

    exit_code = 31


class AuditTrailError(DRError):
    """The audit trail failed verification (an entry edited, deleted, reordered or inserted, a bad signature
    or an untrusted signer, a head that disagrees with a replica's): names the first entry at fault. Exit 32."""

    exit_code = 32


class SigningKeyError(DRError):
    """A signing key is missing, malformed, or not authorised for the action (an admin action signed by a key
    not listed in signing.admin_public_keys). Exit 33."""

    exit_code = 33


class ErasureError(DRError):
    """A GDPR erasure could not be recorded or re-applied (no erasure statements for a source holding personal
    data, a statement that failed on the restored target). Names the request and the source. Exit 34."""

    exit_code = 34


class ObjectFrozenError(VaultError):
    """An object is in an archive tier that must be thawed before it can be read (S3 GLACIER, DEEP_ARCHIVE):
    names the object, the tier and the command that thaws it. Exit 35."""

    exit_code = 35


class TLSError(SourceUnavailableError):
    """A TLS connection to a source or store was refused by our side: the certificate does not chain to the
    configured CA, does not name the host, or the server offers no TLS. Names the source, the host and the
    remedy (ca_file, server_name, or the server's TLS settings). Never transient: retrying cannot fix it. Exit 36."""

    exit_code = 36


class BootstrapError(DRError):
    """``genesis-dr bootstrap --from-vault`` found nothing to restore (no self-backup in the vault) or the
    Prefect server it restores into already holds a different stack. Names the vault and the remedy. Exit 37."""

    exit_code = 37


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        DRError,
        ConfigError,
        VaultError,
        FormatError,
        IntegrityError,
        WrongKeyError,
        SourceUnavailableError,
        BackupNotFoundError,
        TargetNotEmptyError,
        UnsafeArchiveError,
        LockedError,
        VerificationError,
        EngineError,
        LogGapError,
        RecoveryTargetError,
        KeyServiceError,
        ReplicationError,
        ValidationFailedError,
        DrillFailedError,
        SandboxError,
        StaleEpochError,
        DnsSwitchError,
        NoHealthyRegionError,
        TargetRefusedError,
        FailoverIncompleteError,
        HoldError,
        RetentionRefusedError,
        ObjectLockedError,
        AuditTrailError,
        SigningKeyError,
        ErasureError,
        ObjectFrozenError,
        TLSError,
        BootstrapError,
    )
}


# Socket-level failures that say "try again": the server is (re)starting, restarting or slow.
TRANSIENT_OS_ERRORS = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for an expected failure an engine marked as one that may pass by itself."""
    return isinstance(exc, DRError) and getattr(exc, "transient", False) is True


def redact(text: str, secrets: list[str | None]) -> str:
    """Replace every known secret in ``text`` with ``***`` (restic strips passwords too)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
