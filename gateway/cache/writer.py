"""Writing one cache entry: a temporary sibling filled as the body streams, then renamed into place.

Invariants:

- A file appears under its entry name only complete: it is written as the
  sibling ``<32 hex>.tmp-<pid>-<n>`` and moved into place with
  ``os.replace``. The writing process's pid is in the name so that another
  process sharing the directory can tell a file in progress from one left by
  a crash (:func:`stale_temp`).
- Room is made before the rename (:meth:`EntryWriter.commit`), so the entry
  files this process knows of never add up to more than ``max_size``.
- Before a commit the store catches up with the other processes' journal
  records, so a purge made elsewhere while the body streamed aborts this
  writer (RFC 9111 §4.4: the response may predate the purge) and their recent
  commits count toward the room made.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from twisted.logger import Logger

from gateway.cache.entry import HEADER_SIZE, EntryInfo, EntryMeta, encode_meta, entry_name, pack_header
from gateway.cache.journal import Change, Op
from gateway.cache.keys import secondary_key

if TYPE_CHECKING:
    from gateway.cache.store import DiskStore

__all__ = ["TEMP_MAX_AGE", "EntryWriter", "WriterState", "pid_alive", "stale_temp", "temp_owner"]

#: Seconds after its last write when a temporary file is stale whoever wrote
#: it: no writer is idle that long (server timeouts end it first), and a pid
#: reused by an unrelated process can't keep a crashed writer's file forever.
TEMP_MAX_AGE = 3600.0

#: ``<hex>.tmp-<pid>-<n>``; the older ``<hex>.tmp-<n>`` (no pid) is matched too.
_TEMP = re.compile(r"[0-9a-f]{32}\.tmp-(?:([0-9]+)-)?[0-9a-f]+")
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def temp_owner(name: str) -> int | None:
    """The pid in a temporary entry file's name: 0 when it names none; None if ``name`` is no temporary file."""
    match = _TEMP.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) else 0


def stale_temp(
    owner: int, age: float, *, own_pid: int, mine: bool, alive: Callable[[int], bool], max_age: float = TEMP_MAX_AGE
) -> bool:
    """Whether a temporary entry file written by ``owner``, last written ``age`` seconds ago, may be removed.

    ``mine`` says whether one of the calling store's open writers has it. A
    file is stale if it names no pid (written before pids were recorded), was
    last written more than ``max_age`` seconds ago, is this process's own but
    no writer of the store has it (left by an earlier process that had the
    same pid), or its owner is no longer alive. A live process's recent file
    is never removed: a restarted worker spares the other workers' fills in
    progress.
    """
    if owner <= 0 or age > max_age:
        return True
    if owner == own_pid:
        return not mine
    return not alive(owner)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class WriterState(enum.Enum):
    """The life of an :class:`EntryWriter`."""

    #: Accepting body chunks into its temporary file.
    OPEN = "open"
    #: Renamed into place and indexed; the temporary file is gone.
    COMMITTED = "committed"
    #: Given up (asked to, too large, short, or an I/O error); the temporary file is gone.
    ABORTED = "aborted"


class EntryWriter:
    """Streams one response body into a temporary file, then commits or aborts it.

    States (``state``): OPEN -> COMMITTED on :meth:`commit`; OPEN -> ABORTED
    on :meth:`abort`, on a chunk that takes the body past
    ``max_object_size``, on a commit whose body length differs from
    ``expected_length``, on an I/O error, or when a purge covers its key
    while it is open (here or, learnt from the journal, in another process
    sharing the directory: the response it is storing may predate the purge;
    RFC 9111 §4.4 invalidations are purges too). Calls in a final state do
    nothing. Never raises into its caller for disk trouble: it logs and aborts.
    ``reason`` says why it was aborted.

    It is the store's friend, split out of :mod:`gateway.cache.store` for
    size: a commit works on the store's index through its underscored
    methods, as it did when both lived in one module.
    """

    _log = Logger()

    def __init__(self, store: DiskStore, meta: EntryMeta, expected_length: int | None) -> None:
        self._store = store
        self.meta = meta
        self._expected = expected_length
        self._written = 0
        self._crc = 0
        self.state = WriterState.OPEN
        self.reason = ""
        self._name = entry_name(meta.key, secondary_key(meta.vary_names, meta.vary_values))
        self._final = store._path(self._name)
        self.temp = f"{self._final}.tmp-{os.getpid()}-{next(store._temp_counter):x}"
        self._file: BinaryIO | None = None
        if expected_length is not None and expected_length > store.max_object_size:
            self._give_up("too large")
            return
        store._writers.add(self)
        try:
            os.makedirs(os.path.dirname(self._final), mode=0o700, exist_ok=True)
            fd = os.open(self.temp, _OPEN_NEW, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=64 * 1024)
            self._file.write(b"\0" * HEADER_SIZE)
        except OSError as exc:
            self._log.warn("cache: cannot create {path}: {error}", path=self.temp, error=exc)
            self._give_up("io error")

    @property
    def written(self) -> int:
        """Body bytes accepted so far."""
        return self._written

    def write(self, data: bytes) -> bool:
        """Append a body chunk; False once the writer is no longer OPEN (then stop sending)."""
        if self.state is not WriterState.OPEN:
            return False
        if self._written + len(data) > self._store.max_object_size:
            self._give_up("too large")
            return False
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            self._log.warn("cache: write to {path} failed: {error}", path=self.temp, error=exc)
            self._give_up("io error")
            return False
        self._written += len(data)
        self._crc = zlib.crc32(data, self._crc)
        return True

    def commit(self) -> EntryInfo | None:
        """Finish the entry and put it in place; its index info, or None if it was aborted."""
        if self.state is not WriterState.OPEN:
            return None
        if self._expected is not None and self._written != self._expected:
            self._give_up("short body")
            return None
        store = self._store
        store.catch_up()
        if self.state is not WriterState.OPEN:
            return None  # a purge learnt just now covered it
        assert self._file is not None
        entry_id = int.from_bytes(os.urandom(8), "big")
        meta = dataclasses.replace(self.meta, body_crc=self._crc)
        encoded = encode_meta(meta)
        size = HEADER_SIZE + self._written + len(encoded)
        replaced: EntryInfo | None = None
        evicted: list[Change] = []
        try:
            self._file.write(encoded)
            self._file.seek(0)
            self._file.write(pack_header(self._written, encoded, entry_id))
            self._file.flush()
            if store.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            # Room first, then the rename: the entry files on disk never add
            # up to more than max_size, not even for a moment.
            replaced = store._lru.get(self._name)
            if replaced is not None:
                store._forget(replaced)
            evicted = store._evict(store.max_size - size)
            os.replace(self.temp, self._final)
            if store.fsync:
                store._fsync_dir(os.path.dirname(self._final))
        except OSError as exc:
            self._log.warn("cache: commit of {path} failed: {error}", path=self._final, error=exc)
            store._tell(evicted)
            if replaced is not None and os.path.exists(self._final):
                store._add(replaced)
            self._give_up("io error")
            return None
        self.state = WriterState.COMMITTED
        store._writers.discard(self)
        info = EntryInfo(self._name, meta, size, self._written, entry_id, store._clock.seconds())
        store._add(info)
        store._tell([*evicted, Change(Op.ADDED, self._name, entry_id)])
        return info

    def abort(self, reason: str = "aborted") -> None:
        """Give up for ``reason``: the temporary file is removed and nothing is indexed."""
        if self.state is WriterState.OPEN:
            self._give_up(reason)

    def _give_up(self, reason: str) -> None:
        self.state = WriterState.ABORTED
        self.reason = reason
        self._store._writers.discard(self)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._log.warn("cache: cannot remove {path}: {error}", path=self.temp, error=exc)
