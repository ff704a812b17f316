"""The on-disk cache store: entries in a directory, an in-memory index, size bounds, purges.

Invariants:

- Entry files live at ``<directory>/ab/cd/<32 hex>``, the hex being a BLAKE2b
  digest of the primary key and the Vary secondary key
  (:func:`entry_name`). Nothing taken from a request becomes part of a path.
- A file appears under its final name only complete: it is written as a
  sibling ``<hex>.tmp-<n>`` and moved into place with ``os.replace``; temporary
  files left by a crash are removed by :meth:`DiskStore.load`. A metadata
  update after a 304 is done in place (header last), so a crash during it
  leaves an entry that fails its checksum and is dropped, never a wrong one.
- The index holds every committed entry exactly once, in LRU order, and
  ``total_size`` is the sum of their file sizes. Temporary files in progress
  are not counted (at most ``max_object_size`` per open writer).
- After every commit ``total_size <= max_size``, and the files on disk never
  exceed it (room is made before the rename); :meth:`DiskStore.janitor`
  lowers it to ``low_water * max_size`` and drops entries past ``keep_until``.
- One process owns a directory. Two gateways sharing one would sweep each
  other's temporary files.
- File I/O is blocking and runs on the reactor thread: opening an entry reads
  its 36-byte header and its metadata (a few hundred bytes); commits, purges
  and evictions are a rename or an unlink each. Bodies are never read or
  written whole: writers take chunks as they arrive and readers hand out a
  file, offset and length for :mod:`gateway.bodystore` (``answer.EntryFeed``).
- An entry removed (purge, eviction, replacement) while a reader streams it
  stays readable through the reader's open file descriptor.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import heapq
import itertools
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import BinaryIO

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.cache.entry import (
    HEADER_SIZE,
    CorruptEntry,
    Entry,
    EntryInfo,
    EntryMeta,
    decode_meta,
    encode_meta,
    entry_name,
    pack_header,
    unpack_header,
)
from gateway.cache.keys import secondary_key, vary_values
from gateway.parser import Headers

__all__ = ["DiskStore", "EntryWriter", "ICacheStore", "WriterState"]

_NAME = re.compile(r"[0-9a-f]{32}")
_TEMP = re.compile(r"[0-9a-f]{32}\.tmp-[0-9a-f]+")
_FAN = re.compile(r"[0-9a-f]{2}")
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_UPDATE = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


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
    while it is open (the response it is storing may predate the purge; RFC
    9111 §4.4 invalidations are purges too). Calls in a final state do
    nothing. Never raises into its caller for disk trouble: it logs and aborts.
    ``reason`` says why it was aborted.
    """

    _log = Logger()

    def __init__(self, store: DiskStore, meta: EntryMeta, expected_length: int | None) -> None:
        self._store = store
        self._meta = meta
        self._expected = expected_length
        self._written = 0
        self._crc = 0
        self.state = WriterState.OPEN
        self.reason = ""
        self._name = entry_name(meta.key, secondary_key(meta.vary_names, meta.vary_values))
        self._final = store._path(self._name)
        self._temp = f"{self._final}.tmp-{next(store._temp_counter):x}"
        self._file: BinaryIO | None = None
        if expected_length is not None and expected_length > store.max_object_size:
            self._give_up("too large")
            return
        store._writers.add(self)
        try:
            os.makedirs(os.path.dirname(self._final), mode=0o700, exist_ok=True)
            fd = os.open(self._temp, _OPEN_NEW, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=64 * 1024)
            self._file.write(b"\0" * HEADER_SIZE)
        except OSError as exc:
            self._log.warn("cache: cannot create {path}: {error}", path=self._temp, error=exc)
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
            self._log.warn("cache: write to {path} failed: {error}", path=self._temp, error=exc)
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
        assert self._file is not None
        store = self._store
        entry_id = int.from_bytes(os.urandom(8), "big")
        meta = _replace_meta(self._meta, body_crc=self._crc)
        encoded = encode_meta(meta)
        size = HEADER_SIZE + self._written + len(encoded)
        replaced: EntryInfo | None = None
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
            store._enforce(store.max_size - size)
            os.replace(self._temp, self._final)
            if store.fsync:
                store._fsync_dir(os.path.dirname(self._final))
        except OSError as exc:
            self._log.warn("cache: commit of {path} failed: {error}", path=self._final, error=exc)
            if replaced is not None and os.path.exists(self._final):
                store._add(replaced)
            self._give_up("io error")
            return None
        self.state = WriterState.COMMITTED
        store._writers.discard(self)
        info = EntryInfo(self._name, meta, size, self._written, entry_id, store._clock.seconds())
        store._add(info)
        return info

    def abort(self) -> None:
        """Give up: the temporary file is removed and nothing is indexed."""
        if self.state is WriterState.OPEN:
            self._give_up("aborted")

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
            _unlink(self._temp)


def _replace_meta(meta: EntryMeta, **changes: object) -> EntryMeta:
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        Logger().warn("cache: cannot remove {path}: {error}", path=path, error=exc)


class ICacheStore(Interface):
    """Where cached responses live: the plug point between cache logic and storage."""

    total_size = Attribute("int: bytes used by committed entries.")
    max_size = Attribute("int: bound on total_size after every commit.")
    max_object_size = Attribute("int: largest body accepted.")

    def load() -> int:
        """Sweep temporary files and rebuild the index from disk; the number of entries."""

    def variants(key: bytes) -> list[EntryInfo]:
        """Every stored response for primary ``key``."""

    def lookup(key: bytes, request_headers: Headers) -> EntryInfo | None:
        """The most recent stored response for ``key`` whose Vary matches the request."""

    def open(info: EntryInfo) -> Entry | None:
        """The validated entry, or None (missing or corrupt: it is dropped)."""

    def writer(meta: EntryMeta, expected_length: int | None = None) -> EntryWriter:
        """A writer for a new entry described by ``meta``."""

    def update(info: EntryInfo, headers: Headers, request_time: float, response_time: float,
               keep_until: float) -> EntryInfo | None:  # fmt: skip
        """Replace the stored head and times of an entry (after a 304)."""

    def remove(info: EntryInfo) -> None:
        """Drop one entry."""

    def purge(key: bytes) -> int:
        """Drop every variant of ``key``; how many."""

    def purge_prefix(prefix: bytes) -> int:
        """Drop every entry whose key starts with ``prefix``; how many."""

    def purge_surrogate(surrogate_key: bytes) -> int:
        """Drop every entry tagged with ``surrogate_key``; how many."""

    def janitor(limit: int = 1000) -> int:
        """Drop expired entries, then evict LRU down to the low-water mark; how many."""


@implementer(ICacheStore)
class DiskStore:
    """The cache directory and its in-memory index.

    Nothing touches the disk until :meth:`load` (call it from
    ``startService``). ``clock`` stamps last access for LRU. ``max_size`` bounds
    ``total_size`` (bytes of entry files) after every commit; the janitor
    brings it down to ``low_water * max_size``. ``max_object_size`` bounds one
    body. ``fsync`` makes commits durable across power loss (a file and a
    directory fsync each); without it a crash may lose recent entries, which
    are then refetched, but never yields a wrong one.
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        clock: IReactorTime,
        *,
        max_size: int,
        max_object_size: int,
        low_water: float = 0.9,
        fsync: bool = False,
    ) -> None:
        if max_size <= 0 or max_object_size <= 0:
            raise ValueError("max_size and max_object_size must be positive")
        if max_object_size > max_size:
            raise ValueError("max_object_size must not exceed max_size")
        if not 0.0 < low_water <= 1.0:
            raise ValueError(f"low_water must be within (0, 1], got {low_water}")
        self.directory = os.path.abspath(directory)
        self.max_size = max_size
        self.max_object_size = max_object_size
        self.low_water = low_water
        self.fsync = fsync
        self._clock = clock
        self._lru: OrderedDict[str, EntryInfo] = OrderedDict()
        self._keys: dict[bytes, dict[bytes, EntryInfo]] = {}
        self._surrogates: dict[bytes, set[str]] = {}
        self._expiry: list[tuple[float, str, int]] = []
        self._temp_counter = itertools.count(1)
        self._writers: set[EntryWriter] = set()
        self.total_size = 0

    def __len__(self) -> int:
        """The number of committed entries."""
        return len(self._lru)

    def __bool__(self) -> bool:
        # An empty store is still a store: ``if store:`` must not mean "has entries".
        return True

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name[0:2], name[2:4], name)

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- index ----------------------------------------------------------------------

    def _add(self, info: EntryInfo) -> None:
        old = self._lru.get(info.name)
        if old is not None:
            self._forget(old)
        self._lru[info.name] = info
        self._keys.setdefault(info.key, {})[info.secondary] = info
        for surrogate in info.surrogate_keys:
            self._surrogates.setdefault(surrogate, set()).add(info.name)
        if info.keep_until != float("inf"):
            heapq.heappush(self._expiry, (info.keep_until, info.name, info.entry_id))
            if len(self._expiry) > 2 * len(self._lru) + 1024:
                # Replaced and updated entries leave their old tuples behind
                # (deleted lazily); rebuild before they outgrow the index.
                self._expiry = [(i.keep_until, i.name, i.entry_id) for i in self._lru.values()
                                if i.keep_until != float("inf")]  # fmt: skip
                heapq.heapify(self._expiry)
        self.total_size += info.size

    def _forget(self, info: EntryInfo) -> None:
        """Drop ``info`` from the index (the file is the caller's business)."""
        if self._lru.get(info.name) is not info:
            return
        del self._lru[info.name]
        variants = self._keys.get(info.key)
        if variants is not None:
            variants.pop(info.secondary, None)
            if not variants:
                del self._keys[info.key]
        for surrogate in info.surrogate_keys:
            names = self._surrogates.get(surrogate)
            if names is not None:
                names.discard(info.name)
                if not names:
                    del self._surrogates[surrogate]
        self.total_size -= info.size

    def variants(self, key: bytes) -> list[EntryInfo]:
        """Every stored response for primary ``key`` (empty: a URI miss)."""
        found = self._keys.get(key)
        return list(found.values()) if found else []

    def lookup(self, key: bytes, request_headers: Headers) -> EntryInfo | None:
        """The stored response for ``key`` selected by the request's varied fields, or None.

        RFC 9111 §4.1: of several matching responses "the most recent response
        (as determined by the Date header field) is used"; ``response_time``
        stands in for Date.
        """
        found = self._keys.get(key)
        if not found:
            return None
        best: EntryInfo | None = None
        for info in found.values():
            if vary_values(info.vary_names, request_headers) == info.vary_values:
                if best is None or info.response_time > best.response_time:
                    best = info
        return best

    # --- reading --------------------------------------------------------------------

    def _read_entry(self, fd: int, size: int) -> tuple[EntryMeta, int, int, int]:
        """``(meta, body_length, entry_id, meta_length)`` of the open entry file ``fd``."""
        body_length, meta_length, meta_crc, entry_id = unpack_header(os.pread(fd, HEADER_SIZE, 0))
        if size != HEADER_SIZE + body_length + meta_length:
            raise CorruptEntry(f"file is {size} bytes, header says {HEADER_SIZE + body_length + meta_length}")
        encoded = os.pread(fd, meta_length, HEADER_SIZE + body_length)
        if len(encoded) != meta_length or zlib.crc32(encoded) != meta_crc:
            raise CorruptEntry("metadata checksum mismatch")
        return decode_meta(encoded), body_length, entry_id, meta_length

    def open(self, info: EntryInfo) -> Entry | None:
        """Open and validate ``info``'s file; None if it is gone or corrupt (then it is dropped).

        A hit moves the entry to the most recently used end. An ``info`` no
        longer in the index (replaced, purged, evicted) gives None and leaves
        the files alone.
        """
        if self._lru.get(info.name) is not info:
            return None
        path = self._path(info.name)
        try:
            fd = os.open(path, _OPEN_READ)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self._log.warn("cache: cannot open {path}: {error}", path=path, error=exc)
            self._forget(info)
            return None
        try:
            meta, body_length, entry_id, _ = self._read_entry(fd, os.fstat(fd).st_size)
            if entry_id != info.entry_id or meta.key != info.key:
                raise CorruptEntry("entry file does not match the index")
        except (OSError, CorruptEntry) as exc:
            os.close(fd)
            self._log.warn("cache: dropping {path}: {error}", path=path, error=exc)
            self._forget(info)
            _unlink(path)
            return None
        self._lru.move_to_end(info.name)
        info.last_access = self._clock.seconds()
        return Entry(info, meta, fd, body_length)

    # --- writing --------------------------------------------------------------------

    def writer(self, meta: EntryMeta, expected_length: int | None = None) -> EntryWriter:
        """A writer for a new entry; ``expected_length`` (the Content-Length, if any) is
        checked up front against ``max_object_size`` and on commit against the bytes written."""
        return EntryWriter(self, meta, expected_length)

    def update(
        self, info: EntryInfo, headers: Headers, request_time: float, response_time: float, keep_until: float
    ) -> EntryInfo | None:
        """Store a freshened head (``validation.freshen``) and times for ``info``; its new info.

        The metadata is rewritten after the unchanged body and the header last
        (see the module invariants). None if the entry is gone or corrupt, or
        ``info`` is no longer the indexed one.
        """
        if self._lru.get(info.name) is not info:
            return None
        path = self._path(info.name)
        try:
            fd = os.open(path, _OPEN_UPDATE)
        except OSError:
            self._forget(info)
            return None
        try:
            meta, body_length, entry_id, _ = self._read_entry(fd, os.fstat(fd).st_size)
            if entry_id != info.entry_id or meta.key != info.key:
                raise CorruptEntry("entry file does not match the index")
            meta = _replace_meta(
                meta, headers=list(headers), request_time=request_time, response_time=response_time,
                keep_until=keep_until,
            )  # fmt: skip
            encoded = encode_meta(meta)
            end = HEADER_SIZE + body_length
            os.pwrite(fd, encoded, end)
            os.ftruncate(fd, end + len(encoded))
            if self.fsync:
                os.fsync(fd)
            os.pwrite(fd, pack_header(body_length, encoded, entry_id), 0)
            if self.fsync:
                os.fsync(fd)
        except (OSError, CorruptEntry) as exc:
            self._log.warn("cache: dropping {path} on update: {error}", path=path, error=exc)
            self._forget(info)
            _unlink(path)
            return None
        finally:
            os.close(fd)
        self._forget(info)
        new = EntryInfo(info.name, meta, end + len(encoded), body_length, entry_id, self._clock.seconds())
        self._add(new)
        return new

    # --- removal --------------------------------------------------------------------

    def remove(self, info: EntryInfo) -> None:
        """Drop one entry (no-op if it is no longer indexed)."""
        if self._lru.get(info.name) is info:
            self._forget(info)
            _unlink(self._path(info.name))

    def _abort_writers(self, covered: Callable[[EntryMeta], bool]) -> None:
        for writer in [w for w in self._writers if covered(w._meta)]:
            writer._give_up("purged")

    def purge(self, key: bytes) -> int:
        """Drop every variant stored for ``key``, and abort writers for it; how many were dropped."""
        self._abort_writers(lambda meta: meta.key == key)
        infos = self.variants(key)
        for info in infos:
            self.remove(info)
        return len(infos)

    def purge_prefix(self, prefix: bytes) -> int:
        """Drop every entry whose primary key starts with ``prefix``. O(number of keys)."""
        self._abort_writers(lambda meta: meta.key.startswith(prefix))
        keys = [key for key in self._keys if key.startswith(prefix)]
        return sum(self.purge(key) for key in keys)

    def purge_surrogate(self, surrogate_key: bytes) -> int:
        """Drop every entry tagged with ``surrogate_key`` (``Surrogate-Key``)."""
        self._abort_writers(lambda meta: surrogate_key in meta.surrogate_keys)
        names = list(self._surrogates.get(surrogate_key, ()))
        for name in names:
            info = self._lru.get(name)
            if info is not None:
                self.remove(info)
        return len(names)

    def _enforce(self, bound: int, limit: int | None = None) -> int:
        """Evict least recently used entries until ``total_size <= bound``; how many."""
        evicted = 0
        while self.total_size > bound and self._lru and (limit is None or evicted < limit):
            self.remove(next(iter(self._lru.values())))
            evicted += 1
        return evicted

    def janitor(self, limit: int = 1000) -> int:
        """Drop entries past ``keep_until``, then evict LRU down to the low-water mark.

        At most ``limit`` entries per call, so one run never blocks the reactor
        for long; run it periodically (``LoopingCall`` on the same clock).
        """
        now = self._clock.seconds()
        removed = 0
        while self._expiry and self._expiry[0][0] <= now and removed < limit:
            _, name, entry_id = heapq.heappop(self._expiry)
            info = self._lru.get(name)
            if info is not None and info.entry_id == entry_id and info.keep_until <= now:
                self.remove(info)
                removed += 1
        removed += self._enforce(int(self.max_size * self.low_water), limit=limit - removed)
        return removed

    # --- start-up -------------------------------------------------------------------

    def load(self) -> int:
        """Create the directory if needed, sweep temporary files, rebuild the index.

        Walks ``ab/cd/`` subdirectories only; files whose names are not ours
        are left alone. An entry that fails validation, or whose name is not
        the digest of its own keys, is removed. LRU order starts from file
        modification times (commit or last update). Returns the entry count.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lru.clear()
        self._keys.clear()
        self._surrogates.clear()
        self._expiry.clear()
        self.total_size = 0
        found: list[EntryInfo] = []
        for first in _subdirs(self.directory):
            for second in _subdirs(first.path):
                with os.scandir(second.path) as files:
                    for item in files:
                        if _TEMP.fullmatch(item.name):
                            _unlink(item.path)
                        elif _NAME.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                            info = self._load_one(item)
                            if info is not None:
                                found.append(info)
        found.sort(key=lambda info: info.last_access)
        for info in found:
            self._add(info)
        self._enforce(self.max_size)
        return len(self._lru)

    def _load_one(self, item: os.DirEntry[str]) -> EntryInfo | None:
        try:
            fd = os.open(item.path, _OPEN_READ)
        except OSError as exc:
            self._log.warn("cache: cannot open {path}: {error}", path=item.path, error=exc)
            return None
        try:
            st = os.fstat(fd)
            meta, body_length, entry_id, _ = self._read_entry(fd, st.st_size)
            if entry_name(meta.key, secondary_key(meta.vary_names, meta.vary_values)) != item.name:
                raise CorruptEntry("file name does not match its keys")
        except (OSError, CorruptEntry) as exc:
            self._log.warn("cache: dropping {path}: {error}", path=item.path, error=exc)
            _unlink(item.path)
            return None
        finally:
            os.close(fd)
        return EntryInfo(item.name, meta, st.st_size, body_length, entry_id, st.st_mtime)


def _subdirs(path: str) -> Sequence[os.DirEntry[str]]:
    with os.scandir(path) as items:
        return [item for item in items if _FAN.fullmatch(item.name) and item.is_dir(follow_symlinks=False)]
