"""The cache journal: the append-only file through which processes sharing a cache directory learn of changes.

Every process that uses ``cache_dir`` (each worker of a multi-process gateway)
keeps its own in-memory index (:class:`~gateway.cache.store.DiskStore`). What
one of them does to the files (a commit, an update after a 304, a removal, a
purge) it also appends here as one short record, and the others read the
records they have not seen and bring their index in line.

File format: a header line ``GWCJ1 <id> <previous id>\\n`` (16 hex digits
each; ``previous`` is 0 for a file created from nothing), then records, one
ASCII line each (:func:`encode`)::

    A <writer> <name> <entry id>          committed (new or replacing)
    U <writer> <name> <entry id>          metadata updated in place (after a 304)
    R <writer> <name> <entry id>          removed (eviction, expiry, replacement refused, corruption)
    P <writer> <k|p|s> <time> <hex>       purged: a key, a key prefix or a surrogate key,
                                          covering what was requested at or before <time>

Invariants:

- A record describes something already done on disk: files are renamed into
  place or unlinked first, then the record is appended. So a process that
  notes the journal's end, then scans the directory, then applies what the
  journal gained since, misses nothing (:meth:`Journal.open` first).
- Appends are lock-free: the file is opened with ``O_APPEND`` and each batch
  of records goes out in one ``write()``, which local filesystems apply
  atomically at the end of the file even with several appenders (NFS does
  not: the cache directory must be local). The file is opened, written and
  closed per batch, so an appender never holds a file that has been rotated
  away; if it was rotated between the open and the write, the appender writes
  the batch again to the new file (records are idempotent, see below).
- Readers take complete lines only: a record still being written (a partial
  line at the end) is read on a later call.
- Records are idempotent and carry their writer's id: a reader skips its own,
  and applying one twice (or after a directory scan that already saw its
  effect) changes nothing more.
- The file is bounded: only the process holding the janitor lock
  (:mod:`gateway.cache.peers`) calls :meth:`Journal.rotate`, which replaces a
  file past ``limit`` bytes with a fresh one naming it as ``previous``. A
  reader notices the new file, reads the old one to its end through the
  descriptor it holds, and goes on with the new one; if the new file's
  ``previous`` is not the file it read (it missed a whole file, or the journal
  was deleted), :attr:`News.gap` tells it to rescan the directory.
- Nothing here raises for disk trouble once open: appends that fail are
  logged (once until they work again) and lost, which leaves other processes'
  indexes stale but never wrong (see :class:`~gateway.cache.store.DiskStore`).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Union

from twisted.logger import Logger

from gateway.compat import SLOTS

__all__ = [
    "JOURNAL_LIMIT",
    "JOURNAL_NAME",
    "MAX_RECORD",
    "Change",
    "Journal",
    "News",
    "Op",
    "Purge",
    "Record",
    "Scope",
    "decode",
    "encode",
]

#: The journal's file name in ``cache_dir`` (not a 2-hex-digit fan directory, so scans skip it).
JOURNAL_NAME = "journal"
#: Bytes past which the janitor process starts a new journal file. A change
#: record is 69 bytes, so this holds about 15 000 changes; readers only ever
#: read what is new, so the size costs disk space, not time.
JOURNAL_LIMIT = 1024 * 1024
#: The longest record line accepted (a purge names a key: request lines are
#: far shorter); longer lines are skipped as malformed, never buffered whole.
MAX_RECORD = 64 * 1024
#: Bytes read per system call while catching up.
_READ_SIZE = 256 * 1024

_HEADER = re.compile(rb"GWCJ1 ([0-9a-f]{16}) ([0-9a-f]{16})\n")
_HEADER_SIZE = 40
_NAME = re.compile(r"[0-9a-f]{32}")
_WRITER = re.compile(r"[0-9a-f]{16}")
_CHANGE = re.compile(rb"([AUR]) ([0-9a-f]{16}) ([0-9a-f]{32}) ([0-9a-f]{16})")
_PURGE = re.compile(rb"P ([0-9a-f]{16}) ([kps]) ([0-9]+(?:\.[0-9]+)?) ((?:[0-9a-f]{2})*)")

log = Logger()


class Op(enum.Enum):
    """What happened to one entry file."""

    #: Renamed into place: a new entry, or one replacing what was there.
    ADDED = "A"
    #: Its metadata rewritten in place (a 304 freshened it); same entry id.
    UPDATED = "U"
    #: Unlinked.
    REMOVED = "R"


class Scope(enum.Enum):
    """What a purge covers."""

    #: Every variant of one primary key.
    KEY = "k"
    #: Every entry whose primary key starts with the pattern.
    PREFIX = "p"
    #: Every entry tagged with the pattern (``Surrogate-Key``).
    SURROGATE = "s"


@dataclass(frozen=True, **SLOTS)
class Change:
    """One entry file changed: ``name`` (32 hex digits) now holds, or no longer holds, ``entry_id``."""

    op: Op
    name: str
    entry_id: int

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not an entry name: {self.name!r}")
        if not 0 <= self.entry_id < 2**64:
            raise ValueError(f"entry id out of range: {self.entry_id}")


@dataclass(frozen=True, **SLOTS)
class Purge:
    """Entries covered by ``scope`` and ``pattern`` were dropped at ``time`` (seconds since the epoch).

    The processes sharing a directory run on one host and read one clock, so
    ``time`` compares with their requests' ``request_time``.

    Another process drops what it holds that is covered and was requested
    at or before ``time``: a response requested later came from the origin
    after the purge, so it may stay (RFC 9111 §4.4 invalidations are purges too).
    """

    scope: Scope
    pattern: bytes
    time: float

    def __post_init__(self) -> None:
        if not self.time >= 0.0:
            raise ValueError(f"purge time must be a non-negative number, got {self.time}")

    def covers(self, key: bytes, surrogate_keys: Sequence[bytes]) -> bool:
        """Whether an entry with primary ``key`` and ``surrogate_keys`` is covered."""
        if self.scope is Scope.KEY:
            return key == self.pattern
        if self.scope is Scope.PREFIX:
            return key.startswith(self.pattern)
        return self.pattern in surrogate_keys


#: What one journal line says.
Record = Union[Change, Purge]


def encode(record: Record, writer: str) -> bytes:
    """The journal line for ``record`` appended by ``writer`` (16 hex digits)."""
    if isinstance(record, Change):
        return f"{record.op.value} {writer} {record.name} {record.entry_id:016x}\n".encode("ascii")
    return b"P %s %s %.6f %s\n" % (
        writer.encode("ascii"), record.scope.value.encode("ascii"), record.time, record.pattern.hex().encode("ascii"),
    )  # fmt: skip


def decode(line: bytes) -> tuple[str, Record] | None:
    """``(writer, record)`` from one line without its newline; None if it is malformed."""
    change = _CHANGE.fullmatch(line)
    if change is not None:
        op, writer, name, entry_id = (part.decode("ascii") for part in change.groups())
        return writer, Change(Op(op), name, int(entry_id, 16))
    purge = _PURGE.fullmatch(line)
    if purge is not None:
        writer, scope, time, pattern = (part.decode("ascii") for part in purge.groups())
        return writer, Purge(Scope(scope), bytes.fromhex(pattern), float(time))
    return None


def _header(file_id: int, previous: int) -> bytes:
    return b"GWCJ1 %016x %016x\n" % (file_id, previous)


@dataclass(frozen=True, **SLOTS)
class News:
    """What :meth:`Journal.read` found: other processes' records, in order, and whether some were missed."""

    records: tuple[Record, ...] = ()
    #: True when records may have been lost (a whole journal file skipped, or
    #: the journal deleted or unreadable): the index must be rebuilt from the directory.
    gap: bool = False


class Journal:
    """The journal file of one cache directory, as one process appends to and reads it.

    ``writer`` (random unless given) marks this instance's records so that
    :meth:`read` skips them. ``limit`` bounds the file (see :meth:`rotate`).
    Nothing touches the disk before :meth:`open`.
    """

    def __init__(self, path: str, *, limit: int = JOURNAL_LIMIT, writer: str | None = None) -> None:
        if limit < _HEADER_SIZE:
            raise ValueError(f"journal limit must be at least {_HEADER_SIZE} bytes, got {limit}")
        self.path = os.path.abspath(path)
        self.limit = limit
        self.writer = writer if writer is not None else os.urandom(8).hex()
        if not _WRITER.fullmatch(self.writer):
            raise ValueError(f"writer must be 16 hex digits, got {self.writer!r}")
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] = (0, 0)
        self._id = 0
        self._offset = 0
        self._pending = b""
        self._skipping = False
        self._append_failed = False

    # --- reading ------------------------------------------------------------------------

    def open(self) -> None:
        """Create the journal if it is missing and mark its end: later reads return only what comes after.

        Call it before scanning the directory (see the module invariants).
        A second call does nothing.
        """
        if self._file is not None:
            return
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        file = self._open_current()
        if file is None:
            raise OSError(errno.EIO, f"cannot open the cache journal {self.path}")
        self._switch(file)
        self._offset = os.fstat(file.fileno()).st_size
        if self._offset > _HEADER_SIZE:
            # Started inside a record being written? Then skip to the end of its line.
            self._skipping = os.pread(file.fileno(), 1, self._offset - 1) != b"\n"

    def _open_current(self) -> BinaryIO | None:
        """The current journal file for reading, created first if there is none."""
        for _ in range(3):
            try:
                return open(self.path, "rb", buffering=0)
            except FileNotFoundError:
                self._create(previous=0, replace=False)
        return None

    def _switch(self, file: BinaryIO) -> bool:
        """Read from ``file`` from its start on; whether it follows the file read so far."""
        old, self._file = self._file, file
        st = os.fstat(file.fileno())
        self._inode = (st.st_dev, st.st_ino)
        header = _HEADER.fullmatch(os.pread(file.fileno(), _HEADER_SIZE, 0))
        file_id, previous = (int(header.group(1), 16), int(header.group(2), 16)) if header else (0, -1)
        follows = old is not None and previous == self._id and self._id != 0
        self._id = file_id
        self._offset = _HEADER_SIZE if header else 0
        self._pending = b""
        self._skipping = header is None
        if old is not None:
            old.close()
        return follows

    def read(self) -> News:
        """Every complete record appended by other writers since the last call (or :meth:`open`)."""
        if self._file is None:
            return News()
        records: list[Record] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            log.warn("cache: cannot read the journal {path}: {error}", path=self.path, error=exc)
            return News()
        # Drain the file we hold first: once the path names another file, no
        # appender adds to ours without also appending to the new one.
        self._drain(records)
        if st is None or (st.st_dev, st.st_ino) == self._inode:
            return News(tuple(records))
        try:
            file = open(self.path, "rb", buffering=0)
        except OSError:
            return News(tuple(records))  # gone again; the next read looks once more
        follows = self._switch(file)
        self._drain(records)
        return News(tuple(records), gap=not follows)

    def _drain(self, records: list[Record]) -> None:
        assert self._file is not None
        fd = self._file.fileno()
        malformed = 0
        while True:
            data = os.pread(fd, _READ_SIZE, self._offset)
            if not data:
                break
            self._offset += len(data)
            lines = (self._pending + data).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                if self._skipping:
                    self._skipping = False
                    continue
                found = decode(line)
                if found is None:
                    malformed += 1
                elif found[0] != self.writer:
                    records.append(found[1])
            if len(self._pending) > MAX_RECORD:
                self._pending = b""
                self._skipping = True
                malformed += 1
        if malformed:
            log.warn("cache: skipped {n} malformed journal lines in {path}", n=malformed, path=self.path)

    # --- appending ----------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Append ``records`` in one write (see the module invariants); failures are logged, not raised."""
        if not records:
            return
        data = b"".join(encode(record, self.writer) for record in records)
        try:
            for _ in range(3):
                if self._append_once(data):
                    if self._append_failed:
                        self._append_failed = False
                        log.info("cache: appending to the journal {path} works again", path=self.path)
                    return
            raise OSError(errno.EAGAIN, "the journal kept changing under the append")
        except OSError as exc:
            if not self._append_failed:
                self._append_failed = True
                log.warn("cache: cannot append to the journal {path}: {error}", path=self.path, error=exc)

    def _append_once(self, data: bytes) -> bool:
        """Write ``data`` to the current file; False if the path moved on meanwhile (write again)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self._create(previous=0, replace=False)
            return False
        try:
            written = os.write(fd, data)
            if written != len(data):
                os.write(fd, b"\n")  # end the torn line: readers skip it, later records stay whole
                raise OSError(errno.ENOSPC, f"short write to the journal ({written} of {len(data)} bytes)")
            st = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    # --- the file's life --------------------------------------------------------------

    def _create(self, *, previous: int, replace: bool) -> None:
        """Put a fresh journal file (header only) at the path; without ``replace``, only if none is there."""
        temp = f"{self.path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.write(fd, _header(int.from_bytes(os.urandom(8), "big") or 1, previous))
        finally:
            os.close(fd)
        try:
            if replace:
                os.replace(temp, self.path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(temp, self.path)  # never replaces a journal another process just made
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def rotate(self) -> bool:
        """Start a new file if the current one is past ``limit`` bytes; whether it did.

        Only one process may rotate (the janitor lock holder): the new file
        names the current one as ``previous``, so readers know they missed
        nothing. The journal stays within ``limit`` plus what is appended
        between two calls.
        """
        try:
            with open(self.path, "rb", buffering=0) as current:
                if os.fstat(current.fileno()).st_size <= self.limit:
                    return False
                header = _HEADER.fullmatch(os.pread(current.fileno(), _HEADER_SIZE, 0))
            self._create(previous=int(header.group(1), 16) if header else 0, replace=True)
        except OSError as exc:
            log.warn("cache: cannot rotate the journal {path}: {error}", path=self.path, error=exc)
            return False
        return True
