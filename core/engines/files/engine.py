"""Files engine: a PAX tar of paths below a root, streamed straight into the vault.

Backup walks the configured ``paths`` below ``root`` (include/exclude rules in
``core.engines.files.pathmatch``; the walk itself in ``core.engines.files.archive``)
and writes one stream, ``files.tar``, with ``tarfile`` in stream mode: no
temporary file, no second read. Each regular file is hashed (SHA-256) while
its bytes go into the tar, so the recorded checks describe exactly what the
archive holds.

What the archive keeps, exactly: regular files (sparse ones with their holes,
GNU PAX sparse 1.0), directories (empty ones too), symlinks as they are
(absolute, dangling or pointing anywhere: a target is only a string), hard
links, fifos and device nodes (as tar archives them), modes including set-id
bits, uid/gid and user/group names, mtimes to the nanosecond (PAX ``mtime``),
and every extended attribute - POSIX ACLs, file capabilities and SELinux
labels included - as ``SCHILY.xattr.*`` records (``core.engines.files.meta``).
Not kept: atimes, ctimes.

Nothing is left out silently. What cannot be archived - a socket, a file or
directory this process cannot read - fails the backup with the path and the
remedy, unless the source sets ``skip_unarchivable``; then each one is listed
in ``BackupResult.skipped`` (the manifest, ``genesis-dr list``, the run
artifact) and in the notes of every restore of that backup.

A live tree changes under a backup, so:

- an entry that vanishes between listing and reading is skipped and listed
  ("vanished during backup"), as is one whose type changed;
- a file that grows is archived up to the size it had when opened; one that
  shrinks is padded with zeros (the tar header already promised the size);
  one modified while read is archived as read. All three are recorded in
  ``checks["changed"]`` (GNU tar's "file changed as we read it") and their
  hashes describe the archived bytes, so a restore still verifies;
- a read error in the middle of a file fails the backup.

Restore extracts member by member through ``core.engines.files.tarsafe``, which
refuses anything escaping the target and never writes through a symlink. A
restore is a mirror: afterwards what the backup covers (its paths, as its
patterns select them) equals the backup - entries the backup lacks are
removed, entries it never covered are left alone. Where it can, the restore
goes into a staging directory beside the target (``stage``), is verified
there, and is swapped in (``swap_in``, ``core.engines.files.mirror``); the
target is untouched until then. Owners are restored when running as root.
A target file system that fills up (or refuses writes) ends the restore with
one ``EngineError`` naming the target and the remedy, partial files removed.

Chains (differential and incremental backups). Every backup also writes its
tree index, ``tree.jsonl`` (``core.engines.files.tree``): every entry of the
tree at that moment with its metadata and where its content is stored. A
backup on a base walks the tree as a full does, but its archive,
``changes.tar``, holds only files whose content the chain does not hold yet:
a file the base recorded with the same inode, size, mtime and change time is
not opened; any other file whose size some content of the base has is hashed
first and referenced if the chain has that content (a rename, a copy, a
touch, a chmod). Its index and its checks describe the whole tree, so a
restore to that point (``restore_chain``, ``core.engines.files.chain``)
reproduces it exactly - deletions, renames, modes, owners, mtimes, xattrs,
links - and core verifies it with the same checks as a full.
"""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from core.engines.base import (
    BackupResult,
    BaseBackup,
    ChainSteps,
    Engine,
    RecoveryPoint,
    StopPoint,
    StreamSink,
    StreamSource,
)
from core.engines.files.archive import FILE_FLAGS, READ_CHUNK, Archiver, is_special, mode_text, special_check
from core.engines.files.chain import ChainRestore
from core.engines.files.meta import read_xattrs, show_path, xattr_digests
from core.engines.files.mirror import Mirror, Selection, mount_points, remove_tree
from core.engines.files.pathmatch import PathFilter
from core.engines.files.pax import ArchiveFormatError, PaxReader
from core.engines.files.tarsafe import SafeExtractor, Written
from core.engines.files.tree import CHANGES_STREAM, TREE_STREAM, BaseTree, read_index, write_index
from core.errors import ConfigError, EngineError, IntegrityError, RecoveryTargetError, SourceUnavailableError
from core.sources import FilesSourceConfig

STREAM_NAME = "files.tar"
_STAGE_MARK = ".gdr-restore-"
# Where a restore stops because of the target, the remedy depends on why.
_REMEDIES = {
    errno.ENOSPC: "free space on that file system or restore into another target",
    errno.EDQUOT: "raise the quota or free space, or restore into another target",
    errno.EROFS: "the file system is read-only; remount it read-write or restore into another target",
}


class FilesEngine(Engine):
    """Backs up and restores a directory tree as one PAX tar stream."""

    kind = "files"
    backup_types = ("full", "differential", "incremental")
    config: FilesSourceConfig
    # Set on an engine returned by stage(): the target it will be swapped into.
    _staged_from: FilesEngine | None = None
    _archived_dirs: set[str] = frozenset()  # type: ignore[assignment]
    _selection_cache: Selection | None = None
    # Files the last restore into this root hashed while writing them (see collect_checks).
    _written: dict[str, Written] = {}  # noqa: RUF012 - replaced per restore, never mutated
    swap_notes: list[str] = []  # noqa: RUF012 - replaced per instance, never mutated

    @property
    def label(self) -> str:
        return f"files '{self.config.name}'"

    @property
    def root(self) -> str:
        return os.path.abspath(self.config.root)

    def describe(self) -> str:
        return f"files {self.root}"

    def ping(self) -> None:
        """Raise SourceUnavailableError if the root is missing or unreadable."""
        root = self.root
        if not os.path.isdir(root):
            raise SourceUnavailableError(
                f"{self.label}: root {root} does not exist or is not a directory; "
                "create it or fix 'root' in the stack file"
            )
        try:
            with os.scandir(root) as entries:
                next(entries, None)
        except PermissionError:
            raise SourceUnavailableError(
                f"{self.label}: root {root} is not readable; run as a user who can read it or fix its permissions"
            ) from None

    def ping_target(self) -> None:
        """A restore may create the root; only an existing root must be a readable directory."""
        if os.path.lexists(self.root):
            self.ping()
            return
        parent = os.path.dirname(os.path.abspath(self.root))
        while not os.path.isdir(parent):
            if os.path.lexists(parent):
                raise SourceUnavailableError(
                    f"{self.label}: {parent} is not a directory, so root {self.root} cannot be created; fix 'root'"
                )
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SourceUnavailableError(
                f"{self.label}: cannot create root {self.root} ({parent} is not writable); fix its permissions"
            )

    def rollback_config(self):
        """A rollback point keeps the whole target root, whatever the source's paths and patterns."""
        return self.config.model_copy(update={"paths": ["."], "include": [], "exclude": []})

    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        """Stream a tar of the configured paths into ``sink`` as ``files.tar``, and the tree index.

        With ``base`` (a differential or incremental): ``changes.tar`` holds only the files
        whose content the chain does not hold yet, and the tree index the whole tree now
        (see ``core.engines.files.tree``); the checks describe the whole tree, as a full's do.
        """
        paths = self._paths()
        pfilter = PathFilter(self.config.include, self.config.exclude)
        self.ping()
        # The base's index first: a base without one fails the run before anything is written.
        base_tree = BaseTree.of(base, self.label) if base is not None else None
        started_ns = time.time_ns()
        started = datetime.fromtimestamp(started_ns / 1e9, UTC)
        archiver = Archiver(self.root, pfilter, self.label, skip_unarchivable=self.config.skip_unarchivable)
        archiver.base = base_tree
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Resolve every configured path before the stream opens, so a typo
            # fails the run without leaving a half-written stream behind.
            for path in paths:
                archiver.check_path(root_fd, path)
            with sink.open_stream(STREAM_NAME if base is None else CHANGES_STREAM) as out:
                archiver.run(out, root_fd, paths)
        finally:
            os.close(root_fd)
        with sink.open_stream(TREE_STREAM) as out:
            write_index(out, base.id if base is not None else None, started_ns, archiver.index_entries())
        checks = archiver.checks()
        # What the backup covers, so a restore mirrors exactly that (see files_mirror).
        checks["selection"] = {"paths": paths, "include": self.config.include, "exclude": self.config.exclude}
        return BackupResult(
            position={"snapshot_time": started.isoformat()},
            checks=checks,
            tool_versions={"tar": f"genesis-dr files_pax (pax, GNU sparse 1.0; python {platform.python_version()})"},
            skipped=archiver.skipped_lines(),
        )

    def has_data(self) -> bool:
        """True if the target root exists and holds anything (or is not a directory)."""
        root = self.root
        if not os.path.lexists(root):
            return False
        if not os.path.isdir(root):
            return True
        try:
            with os.scandir(root) as entries:
                return next(entries, None) is not None
        except PermissionError:
            raise SourceUnavailableError(
                f"{self.label}: target root {root} is not readable; run as a user who can read it or fix its permissions"
            ) from None

    def restore(self, source: StreamSource, result: BackupResult) -> list[str]:
        """Extract ``files.tar`` into the target root, refusing unsafe members.

        Over existing data the result is a mirror of what the backup covers
        (entries it lacks are removed; see ``core.engines.files.mirror``).
        Returns the notes: entries skipped at backup time, attributes or
        device nodes this target could not take, mount points left in place.
        """
        names = source.stream_names()
        if STREAM_NAME not in names and CHANGES_STREAM in names:
            raise EngineError(
                f"{self.label}: this backup is a differential or incremental: it holds only what changed "
                "since its base; restore it as a chain (genesis-dr restore --target-time ...)"
            )
        root = self.root
        created = self._make_root()
        selection = self._selection(result)
        set_owner = os.geteuid() == 0
        notes = _backup_notes(result)
        self._written = {}
        with closing(_stream_pieces(source)) as pieces:
            extractor = SafeExtractor(root, self.label, set_owner=set_owner)
            try:
                with extractor:
                    extractor.extract_all(PaxReader(pieces), finish=False)
                    if self._staged_from is None:
                        # In place: remove what the backup lacks before directory mtimes are set.
                        mirror = Mirror(root, selection, set_owner)
                        mirror.prune_tree(extractor.written)
                        notes.extend(mirror.notes)
                    extractor.finish()
            except ArchiveFormatError as exc:
                raise IntegrityError(
                    f"{self.label}: stream {STREAM_NAME} is not a readable tar archive ({exc}); "
                    "the backup is damaged, restore another one"
                ) from None
            except OSError as exc:
                raise self._target_error(exc, extractor.current, created) from None
            # Read to the end so the vault verifies the whole stream, not just
            # the part up to the tar end-of-archive marker.
            for _ in pieces:
                pass
        self._written = extractor.digests
        self._archived_dirs = extractor.archived_dirs
        self._selection_cache = selection
        notes.extend(extractor.notes)
        if extractor.owners_not_set:
            notes.append(
                f"owners of {extractor.owners_not_set} entries not restored (only root can set them); "
                f"they belong to uid {os.geteuid()}, gid {os.getegid()}"
            )
        return notes

    def _make_root(self) -> bool:
        """Create the target root if missing (True if this call created it)."""
        root = self.root
        if os.path.lexists(root) and not os.path.isdir(root):
            raise EngineError(
                f"{self.label}: target root {root} exists and is not a directory; remove it or choose another root"
            )
        created = not os.path.lexists(root)
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: cannot create target root {root}: {exc.strerror}; fix permissions or choose another root"
            ) from None
        return created

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        """Restore the tree as the last backup of ``steps`` recorded it (see ``core.engines.files.chain``).

        A tree has no log: the point is that backup's moment, which the plan chose at or
        before ``stop.time``. Returns it with the tree index that proves it."""
        readers = [steps.base, *steps.layers]
        final = readers[-1]
        final_id = final.manifest.id
        when = final.result.position.get("snapshot_time")
        if stop.time is not None and when and datetime.fromisoformat(when) > stop.time:
            raise RecoveryTargetError(
                f"{self.label}: backup {final_id} was taken at {when}, after the target time "
                f"{stop.time.isoformat()}; plan the chain up to a backup taken at or before it"
            )
        if not steps.layers:
            # A full alone restores as it always did (one pass over files.tar).
            notes = self.restore(final, final.result)
            counts = final.result.checks.get("counts", {})
            entries = sum(counts.get(k, 0) for k in ("files", "dirs", "symlinks")) + len(
                final.result.checks.get("specials", {})
            )
            return RecoveryPoint(
                position=dict(final.result.position),
                time=when,
                proof=f"archive of full backup {final_id}, {entries} entries",
                notes=notes,
            )
        index = read_index(final, final_id, self.label)
        root = self.root
        created = self._make_root()
        selection = self._selection(final.result)
        set_owner = os.geteuid() == 0
        notes = _backup_notes(final.result)
        self._written = {}
        say = progress if callable(progress) else None
        extractor = SafeExtractor(root, self.label, set_owner=set_owner)
        run = ChainRestore(self.label, extractor, index, readers, say)
        try:
            with extractor:
                run.run()
                if self._staged_from is None:
                    mirror = Mirror(root, selection, set_owner)
                    mirror.prune_tree(extractor.written)
                    notes.extend(mirror.notes)
                extractor.finish()
        except OSError as exc:
            raise self._target_error(exc, extractor.current, created) from None
        for entry in index.entries:
            written = extractor.digests.get(entry["path"])
            if written is not None and entry["type"] == "file" and written.sha256 != entry["sha256"]:
                raise IntegrityError(
                    f"{self.label}: restored {show_path(entry['path'])} does not match the tree index of backup "
                    f"{final_id} (SHA-256 differs); the chain is damaged, restore another point"
                )
        self._written = extractor.digests
        self._archived_dirs = extractor.archived_dirs
        self._selection_cache = selection
        notes.extend(extractor.notes)
        if extractor.owners_not_set:
            notes.append(
                f"owners of {extractor.owners_not_set} entries not restored (only root can set them); "
                f"they belong to uid {os.geteuid()}, gid {os.getegid()}"
            )
        return RecoveryPoint(
            position=dict(final.result.position),
            time=when,
            proof=f"tree index of backup {final_id}, {len(index.entries)} entries verified",
            notes=notes,
        )

    def _target_error(self, exc: OSError, member: str, created: bool) -> EngineError:
        """One line for a restore the target stopped: where, why, what to do."""
        remedy = _REMEDIES.get(exc.errno or 0, "fix the target's permissions or restore into another target")
        where = f" writing {show_path(member)}" if member else ""
        message = (
            f"{self.label}: restore into {self._target_root()} failed{where}: {exc.strerror or exc}; "
            f"{remedy}, then run the restore again"
        )
        if self._staged_from is not None:
            # Restored beside the target: the caller discards the staged copy.
            return EngineError(message)
        if created:
            shutil.rmtree(self.root, ignore_errors=True)
            return EngineError(f"{message} (the partly restored {self.root} was removed)")
        return EngineError(f"{message} (the file being written was removed)")

    def _target_root(self) -> str:
        return self._staged_from.root if self._staged_from is not None else self.root

    def _selection(self, result: BackupResult) -> Selection:
        """What the backup covers: as recorded, else (older backups) this config's paths and patterns."""
        recorded = result.checks.get("selection") if result.checks else None
        if isinstance(recorded, dict):
            paths, include, exclude = recorded["paths"], recorded["include"], recorded["exclude"]
        else:
            paths, include, exclude = self._paths(), self.config.include, self.config.exclude
        pfilter = PathFilter(include, exclude) if include or exclude else None
        return Selection(list(paths), pfilter)

    # -- restoring beside the target --------------------------------------------------

    def stage(self, tag: str) -> FilesEngine | None:
        """An engine for ``<parent>/.<name>.gdr-restore-<tag>``, a sibling of the target root.

        The sibling is on the target's file system, so ``swap_in`` is renames
        only. The swap is per entry of each covered path (not the whole root),
        because a backup may cover only some paths below the root (root ``/``,
        paths ``[etc/app]``): unrelated siblings must stay, and the root keeps
        its inode (it may be a mount point or a process's cwd).

        None - restore in place, mirrored by pruning after extraction - when a
        rename cannot work: the root is ``/`` or a mount point, or a mount
        point sits at or below a covered path (renaming would fail, and
        removing the old tree would reach into the mounted file system).
        A root that is a symlink (``/srv/current``) is staged beside the
        directory it points to, which is where the renames happen.
        """
        staged_root = self._staging_root(tag)
        if staged_root is None:
            return None
        try:
            # A leftover of an interrupted restore with this tag is ours to clear: a
            # staged tree must hold exactly the backup (stale extras would be swapped in).
            remove_tree(staged_root)
            os.mkdir(staged_root, 0o700)
        except OSError as exc:
            raise EngineError(
                f"{self.label}: cannot create the staging directory {staged_root}: {exc.strerror}; "
                "remove a leftover one or free space beside the target"
            ) from None
        staged = FilesEngine(self.config.model_copy(update={"root": staged_root}))
        staged._staged_from = self
        return staged

    def restores_beside(self) -> bool:
        """Whether ``stage`` would give a sibling (nothing is created)."""
        return self._staging_root("0") is not None

    def _staging_root(self, tag: str) -> str | None:
        """Where ``stage`` puts the sibling, or None if this target restores in place (see ``stage``)."""
        root = os.path.realpath(self.root)
        parent, name = os.path.split(root)
        if not name or not os.path.isdir(parent):
            return None
        covered = [os.path.join(root, p) if p else root for p in self._paths()]
        for mount in mount_points():
            if any(mount == c or mount.startswith(c + "/") for c in covered):
                return None
        return os.path.join(parent, f".{name}{_STAGE_MARK}{tag}")

    def swap_in(self, staged: Engine) -> None:
        """Move the verified staged tree into place (renames), then remove the old entries.

        Raises EngineError naming the target if a rename fails midway: some
        covered entries may then be new and others old, and the caller puts
        the rollback point back.
        """
        if not isinstance(staged, FilesEngine) or staged._staged_from is None or staged._staged_from.root != self.root:
            raise EngineError(f"{self.label}: {staged.describe()} was not staged for {self.root}; nothing swapped")
        selection = staged._selection_cache or self._selection(BackupResult())
        mirror = Mirror(self.root, selection, os.geteuid() == 0)
        try:
            mirror.swap_tree(staged.root, staged._archived_dirs)
        except OSError as exc:
            raise EngineError(
                f"{self.label}: swapping the restored tree {staged.root} into {self.root} failed: "
                f"{exc.strerror or exc}; part of the target may be replaced - restore the rollback backup, "
                f"and remove {staged.root}"
            ) from None
        self.swap_notes = mirror.notes
        try:
            remove_tree(staged.root)  # now holds the old entries the swap replaced
        except OSError as exc:
            raise EngineError(
                f"{self.label}: {self.root} is restored and swapped in, but the replaced entries left in "
                f"{staged.root} could not be removed: {exc.strerror}; remove that directory by hand"
            ) from None

    def discard(self) -> None:
        """Remove this staging directory; a missing one is fine."""
        if self._staged_from is None:
            raise EngineError(f"{self.label}: {self.root} is a restore target, not a staging directory; not removed")
        try:
            remove_tree(self.root)
        except OSError as exc:
            raise EngineError(
                f"{self.label}: cannot remove the staging directory {self.root}: {exc.strerror}; remove it by hand"
            ) from None

    def target_key(self) -> str:
        return f"files {self.root}"

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Hash and stat the paths the reference lists, below the target root."""
        root = self.root
        out: dict[str, Any] = {}
        counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}

        def path_of(rel: str) -> str:
            return os.path.join(root, rel) if rel != "." else root

        for section in ("files", "dirs", "symlinks", "specials"):
            if section not in reference:
                continue
            found: dict[str, Any] = {}
            for rel, expected in reference[section].items():
                entry = _inspect(path_of(rel), self._written.get(rel))
                if entry is None:
                    continue
                kind, value = entry
                if kind != section:
                    found[rel] = {"type": _KIND_NAMES[kind]}
                    continue
                if section in counts:
                    counts[section] += 1
                if kind == "files":
                    counts["bytes"] += value["size"]
                if isinstance(expected, dict) and "links_to" in expected:
                    value["links_to"] = _link_state(path_of(rel), path_of(expected["links_to"]), expected["links_to"])
                found[rel] = value
            out[section] = found
        if "xattrs" in reference:
            out["xattrs"] = _collect_xattrs(reference["xattrs"], path_of)
        if "counts" in reference:
            out["counts"] = counts
        # Facts about the backup run, not about the data: carried over as recorded.
        for key in ("skipped", "changed", "selection"):
            if key in reference:
                out[key] = reference[key]
        return out

    def _paths(self) -> list[str]:
        """Configured paths, normalised, without ones another path already covers."""
        if not self.config.paths:
            raise ConfigError(f"{self.label}: 'paths' is empty; list at least one path below root (e.g. '.')")
        normal: list[str] = []
        for raw in self.config.paths:
            if raw.startswith("/"):
                raise ConfigError(f"{self.label}: path {raw!r} is absolute; list paths relative to root {self.root}")
            parts = [p for p in raw.split("/") if p not in ("", ".")]
            if ".." in parts:
                raise ConfigError(f"{self.label}: path {raw!r} leaves root {self.root}; remove the '..'")
            if "/".join(parts) not in normal:
                normal.append("/".join(parts))
        return [p for p in normal if not any(_covers(q, p) for q in normal if q != p)]


_KIND_NAMES = {
    "files": "file",
    "dirs": "directory",
    "symlinks": "symlink",
    "specials": "fifo or device",
    "sockets": "socket",
}


def _covers(outer: str, inner: str) -> bool:
    return outer == "" or inner.startswith(outer + "/")


def _backup_notes(result: BackupResult) -> list[str]:
    """Entries the backup left out: every restore of it says so."""
    lines = [f"{line} (left out of the backup, not restored)" for line in result.skipped]
    if not lines and result.checks:  # backups from before BackupResult.skipped
        skipped = result.checks.get("skipped") or {}
        lines = [
            f"{show_path(rel)}: {why} (left out of the backup, not restored)" for rel, why in sorted(skipped.items())
        ]
    return lines


def _stream_pieces(source: StreamSource) -> Iterator[bytes]:
    """The plaintext of ``files.tar`` in pieces: the vault's verified chunks as they are, or
    reads from a plain file-like stream (a source without ``iter_stream``)."""
    iter_stream = getattr(source, "iter_stream", None)
    if iter_stream is not None:
        yield from iter_stream(STREAM_NAME)
        return
    with source.open_stream(STREAM_NAME) as stream:
        while piece := stream.read(READ_CHUNK):
            yield piece


def _inspect(path: str, written: Written | None = None) -> tuple[str, dict[str, Any] | str] | None:
    """(section, check value) for what is at ``path`` now; None if nothing is.

    A regular file this restore wrote and hashed on the way (``written``) is not
    read again while its inode, size, mtime and change time are what they were
    when the restore finished with it: any later write, truncate, chmod, xattr
    change, rename or replacement moves the change time, and the file is read.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dirs", {"mode": mode_text(st), "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        return "symlinks", os.readlink(path)
    if is_special(st.st_mode):
        return "specials", special_check(st)
    if not stat.S_ISREG(st.st_mode):
        return "sockets", {}
    if written is not None and written.matches(st):
        sha256 = written.sha256
    else:
        digest = hashlib.sha256()
        fd = os.open(path, FILE_FLAGS)
        try:
            while chunk := os.read(fd, READ_CHUNK):
                digest.update(chunk)
        finally:
            os.close(fd)
        sha256 = digest.hexdigest()
    return "files", {
        "sha256": sha256,
        "size": st.st_size,
        "mode": mode_text(st),
        "mtime_ns": st.st_mtime_ns,
    }


def _link_state(path: str, other: str, name: str) -> str:
    """``name`` if ``path`` is a hard link of ``other``, else what it is instead."""
    try:
        a, b = os.lstat(path), os.lstat(other)
    except FileNotFoundError:
        return f"not linked ({name} is missing)"
    return name if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else f"not linked to {name}"


def _collect_xattrs(reference: dict[str, dict[str, str]], path_of) -> dict[str, dict[str, str]]:
    """Digests of the recorded attributes now; attributes the backup did not have are not
    compared (a target may add its own, e.g. an SELinux label on every new file)."""
    out: dict[str, dict[str, str]] = {}
    for rel, names in reference.items():
        try:
            now = xattr_digests(read_xattrs(path_of(rel)))
        except FileNotFoundError:
            continue
        out[rel] = {name: now.get(name, "missing") for name in names}
    return out
