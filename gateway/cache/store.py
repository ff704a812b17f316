"""The on-disk cache store: entries in a directory, an in-memory index, size bounds, purges.

Invariants:

- Entry files live at ``<directory>/ab/cd/<32 hex>``, the hex being a BLAKE2b
  digest of the primary key and the Vary secondary key
  (:func:`entry_name`). Nothing taken from a request becomes part of a path.
- A file appears under its final name only complete (written as a temporary
  sibling and renamed, :mod:`gateway.cache.writer`); :meth:`DiskStore.load`
  removes temporary files left by a crash, never one a live process is
  writing. A metadata update after a 304 is done in place (header last)
  under an exclusive ``flock`` of the file, so a crash during it leaves an
  entry that fails its checksum and is dropped, never a wrong one, and a
  reader in another process that meets a torn entry waits on the lock and
  reads it again before calling it corrupt.
- The index holds every entry it knows of exactly once, in LRU order, and
  ``total_size`` is the sum of their file sizes. Temporary files in progress
  are not counted (at most ``max_object_size`` per open writer).
- After every commit ``total_size <= max_size``, and room is made before the
  rename; :meth:`DiskStore.janitor` lowers it to ``low_water * max_size`` and
  drops entries past ``keep_until``.
- Several processes may share a directory (the workers of one gateway):
  given a :class:`~gateway.cache.journal.Journal`, every commit, update,
  removal and purge is also appended there, and :meth:`DiskStore.catch_up`
  applies what the others appended (on a tick, and before each commit, purge
  and miss). An index may then be behind the disk for a moment, which costs
  a miss or a refetch, never a wrong answer: a file another process removed
  is a miss (:meth:`DiskStore.open`), a file it replaced is read as what it
  now is, and a file is removed only if it still holds the entry meant
  (:func:`~gateway.cache.entry.unlink_entry`). Each process bounds what it
  knows of, and catches up just before each commit, so the files on disk
  stay within ``max_size`` plus what the others commit between that catch-up
  and the rename.
- File I/O is blocking and runs on the reactor thread: opening an entry reads
  its 36-byte header and its metadata (a few hundred bytes), or only the
  header when the metadata it names is among the ``hot_entries`` most
  recently opened ones kept decoded (:class:`~gateway.cache.entry.Decoded`);
  commits, purges
  and evictions are a rename or an unlink each (plus a header read, to check
  what is unlinked). Bodies are never read or written whole: writers take
  chunks as they arrive and readers hand out a file, offset and length for
  :mod:`gateway.bodystore` (``answer.EntryFeed``).
- An entry removed (purge, eviction, replacement) while a reader streams it
  stays readable through the reader's open file descriptor.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import heapq
import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.cache.entry import (
    HEADER_SIZE,
    OPEN_READ,
    OPEN_UPDATE,
    CorruptEntry,
    Decoded,
    Entry,
    EntryInfo,
    EntryMeta,
    EntryRead,
    encode_meta,
    entry_name,
    pack_header,
    read_entry_file,
    remove_file,
    unlink_entry,
)
from gateway.cache.journal import Change, Op, Purge, Record, Scope
from gateway.cache.keys import secondary_key, vary_values
from gateway.cache.writer import EntryWriter, pid_alive, stale_temp, temp_owner
from gateway.parser import Headers

if TYPE_CHECKING:
    from gateway.cache.journal import Journal

__all__ = ["DiskStore", "ICacheStore"]

_NAME = re.compile(r"[0-9a-f]{32}")
_FAN = re.compile(r"[0-9a-f]{2}")


def _replace_meta(meta: EntryMeta, **changes: object) -> EntryMeta:
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


class ICacheStore(Interface):
    """Where cached responses live: the plug point between cache logic and storage."""

    total_size = Attribute("int: bytes used by committed entries.")
    max_size = Attribute("int: bound on total_size after every commit.")
    max_object_size = Attribute("int: largest body accepted.")

    def load() -> int:
        """Sweep stale temporary files and rebuild the index from disk; the number of entries."""

    def catch_up() -> bool:
        """Apply what other processes sharing the directory changed; whether anything came."""

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
    body. ``hot_entries`` bounds how many entries keep their metadata decoded
    in memory (least recently opened dropped first; 0 decodes on every open). ``fsync`` makes commits durable across power loss (a file and a
    directory fsync each); without it a crash may lose recent entries, which
    are then refetched, but never yields a wrong one. ``journal``, when other
    processes share the directory, is where changes are told and learnt
    (see the module invariants); without one the store assumes it is alone.
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
        journal: Journal | None = None,
        hot_entries: int = 0,
    ) -> None:
        if max_size <= 0 or max_object_size <= 0:
            raise ValueError("max_size and max_object_size must be positive")
        if max_object_size > max_size:
            raise ValueError("max_object_size must not exceed max_size")
        if not 0.0 < low_water <= 1.0:
            raise ValueError(f"low_water must be within (0, 1], got {low_water}")
        if hot_entries < 0:
            raise ValueError(f"hot_entries must not be negative, got {hot_entries}")
        self.directory = os.path.abspath(directory)
        self.max_size = max_size
        self.max_object_size = max_object_size
        self.low_water = low_water
        self.fsync = fsync
        self.journal = journal
        self.hot_entries = hot_entries
        self._clock = clock
        self._hot: OrderedDict[str, Decoded] = OrderedDict()
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
        self._hot.pop(info.name, None)
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
        stands in for Date. A miss first catches up with the journal, so an
        entry another process committed a moment ago is found.
        """
        best = self._select(key, request_headers)
        if best is None and self.catch_up():
            best = self._select(key, request_headers)
        return best

    def _select(self, key: bytes, request_headers: Headers) -> EntryInfo | None:
        found = self._keys.get(key)
        if not found:
            return None
        best: EntryInfo | None = None
        for info in found.values():
            if vary_values(info.vary_names, request_headers) == info.vary_values:
                if best is None or info.response_time > best.response_time:
                    best = info
        return best

    # --- other processes --------------------------------------------------------------

    def _tell(self, records: Sequence[Record]) -> None:
        """Let the other processes sharing the directory know (nothing without a journal)."""
        if records and self.journal is not None:
            self.journal.append(records)

    def catch_up(self) -> bool:
        """Apply the journal records other processes appended since the last call; whether any came.

        If records were missed (see :class:`~gateway.cache.journal.News`), the
        index is rebuilt from the directory first.
        """
        if self.journal is None:
            return False
        news = self.journal.read()
        if news.gap:
            self._log.info("cache: journal records were missed; rescanning {dir}", dir=self.directory)
            self._scan()
        for record in news.records:
            if isinstance(record, Purge):
                self._purge(record, learnt=True)
            else:
                self._learn(record)
        return news.gap or bool(news.records)

    def _learn(self, change: Change) -> None:
        """Bring the index in line with what another process did to one entry file."""
        old = self._lru.get(change.name)
        if old is not None and old.entry_id == change.entry_id:
            if change.op is Op.ADDED:
                return  # already known (our scan saw it, or the record came twice)
            if change.op is Op.REMOVED:
                self._forget(old)
                return
        elif old is None and change.op is Op.REMOVED:
            return
        # Otherwise the file may hold something this index does not know: read what it is now.
        info = self._load_one(self._path(change.name), change.name)
        if info is None:
            if old is not None:
                self._forget(old)
        elif old is None or old.entry_id != info.entry_id or change.op is Op.UPDATED:
            self._add(info)

    # --- reading --------------------------------------------------------------------

    def _replaced(self, info: EntryInfo, read: EntryRead) -> EntryInfo:
        """Index what another process put in ``info``'s place (``read`` from its file) instead of ``info``."""
        meta = read.meta
        if meta.key != info.key or entry_name(meta.key, secondary_key(meta.vary_names, meta.vary_values)) != info.name:
            raise CorruptEntry("entry file does not match its name")
        self._forget(info)
        new = EntryInfo(info.name, meta, read.size, read.body_length, read.entry_id, self._clock.seconds())
        self._add(new)
        return new

    def _discard(self, path: str, name: str, entry_id: int, error: Exception) -> None:
        """Drop a corrupt entry file (and tell the others, who may index it)."""
        self._log.warn("cache: dropping {path}: {error}", path=path, error=error)
        remove_file(path)
        self._tell([Change(Op.REMOVED, name, entry_id)])

    def open(self, info: EntryInfo) -> Entry | None:
        """Open and validate ``info``'s file; None if it is gone or corrupt (then it is dropped).

        A hit moves the entry to the most recently used end. An ``info`` no
        longer in the index (replaced, purged, evicted) gives None and leaves
        the files alone. A file another process removed is a miss; one it
        replaced is indexed and returned as what it now is.
        """
        if self._lru.get(info.name) is not info:
            return None
        path = self._path(info.name)
        try:
            fd = os.open(path, OPEN_READ)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self._log.warn("cache: cannot open {path}: {error}", path=path, error=exc)
            self._forget(info)
            return None
        try:
            read = read_entry_file(fd, known=self._hot.get(info.name))
            if read.entry_id != info.entry_id:
                info = self._replaced(info, read)
            elif read.meta.key != info.key:
                raise CorruptEntry("entry file does not match the index")
        except (OSError, CorruptEntry) as exc:
            os.close(fd)
            self._forget(info)
            self._discard(path, info.name, info.entry_id, exc)
            return None
        name = info.name
        self._lru.move_to_end(name)
        info.last_access = self._clock.seconds()
        decoded = read.decoded
        hot = self._hot
        if self.hot_entries:
            hot[name] = decoded
            hot.move_to_end(name)
        while len(hot) > self.hot_entries:  # (a reload may have lowered the bound)
            hot.popitem(last=False)
        return Entry(info, decoded, fd, read.body_length)

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
        (see the module invariants), under an exclusive ``flock``. None if the
        entry is gone or corrupt, ``info`` is no longer the indexed one, or
        another process replaced the file (then its entry is indexed instead).
        """
        if self._lru.get(info.name) is not info:
            return None
        path = self._path(info.name)
        try:
            fd = os.open(path, OPEN_UPDATE)
        except OSError:
            self._forget(info)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            read = read_entry_file(fd, locked=True)
            meta, body_length, entry_id = read.meta, read.body_length, read.entry_id
            if entry_id != info.entry_id:
                self._replaced(info, read)
                return None
            if meta.key != info.key:
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
            self._forget(info)
            self._discard(path, info.name, info.entry_id, exc)
            return None
        finally:
            os.close(fd)
        self._forget(info)
        new = EntryInfo(info.name, meta, end + len(encoded), body_length, entry_id, self._clock.seconds())
        self._add(new)
        self._tell([Change(Op.UPDATED, info.name, entry_id)])
        return new

    # --- removal --------------------------------------------------------------------

    def _drop(self, info: EntryInfo) -> Change:
        """Forget ``info`` and remove its file if that still holds it; the record telling so."""
        self._forget(info)
        unlink_entry(self._path(info.name), info.entry_id)
        return Change(Op.REMOVED, info.name, info.entry_id)

    def remove(self, info: EntryInfo) -> None:
        """Drop one entry (no-op if it is no longer indexed)."""
        if self._lru.get(info.name) is info:
            self._tell([self._drop(info)])

    def _purge(self, purge: Purge, *, learnt: bool = False) -> int:
        """Drop what ``purge`` covers and abort writers for it; how many entries were dropped.

        A purge ``learnt`` from another process's journal record covers only
        what was requested at or before its time: later responses were asked
        of the origin after the purge, so they stay.
        """
        before = purge.time if learnt else float("inf")
        for writer in list(self._writers):
            if purge.covers(writer.meta.key, writer.meta.surrogate_keys) and writer.meta.request_time <= before:
                writer.abort("purged")
        if purge.scope is Scope.SURROGATE:
            infos = [self._lru[name] for name in self._surrogates.get(purge.pattern, ())]
        elif purge.scope is Scope.KEY:
            infos = self.variants(purge.pattern)
        else:
            infos = [info for key, found in self._keys.items() if key.startswith(purge.pattern)
                     for info in found.values()]  # fmt: skip
        dropped = 0
        for info in infos:
            if info.request_time <= before:
                self._drop(info)
                dropped += 1
        return dropped

    def _purge_now(self, scope: Scope, pattern: bytes) -> int:
        self.catch_up()  # so that what another process committed a moment ago is covered and counted
        purge = Purge(scope, pattern, self._clock.seconds())
        dropped = self._purge(purge)
        self._tell([purge])
        return dropped

    def purge(self, key: bytes) -> int:
        """Drop every variant stored for ``key``, and abort writers for it; how many were dropped."""
        return self._purge_now(Scope.KEY, key)

    def purge_prefix(self, prefix: bytes) -> int:
        """Drop every entry whose primary key starts with ``prefix``. O(number of keys)."""
        return self._purge_now(Scope.PREFIX, prefix)

    def purge_surrogate(self, surrogate_key: bytes) -> int:
        """Drop every entry tagged with ``surrogate_key`` (``Surrogate-Key``)."""
        return self._purge_now(Scope.SURROGATE, surrogate_key)

    def _evict(self, bound: int, limit: int | None = None) -> list[Change]:
        """Evict least recently used entries until ``total_size <= bound``; the records telling so."""
        evicted: list[Change] = []
        while self.total_size > bound and self._lru and (limit is None or len(evicted) < limit):
            evicted.append(self._drop(next(iter(self._lru.values()))))
        return evicted

    def janitor(self, limit: int = 1000) -> int:
        """Drop entries past ``keep_until``, then evict LRU down to the low-water mark.

        At most ``limit`` entries per call, so one run never blocks the reactor
        for long; run it periodically (``LoopingCall`` on the same clock). With
        several processes on one directory, one of them runs it
        (:mod:`gateway.cache.peers`).
        """
        now = self._clock.seconds()
        removed: list[Change] = []
        while self._expiry and self._expiry[0][0] <= now and len(removed) < limit:
            _, name, entry_id = heapq.heappop(self._expiry)
            info = self._lru.get(name)
            if info is not None and info.entry_id == entry_id and info.keep_until <= now:
                removed.append(self._drop(info))
        removed += self._evict(int(self.max_size * self.low_water), limit=limit - len(removed))
        self._tell(removed)
        return len(removed)

    # --- start-up -------------------------------------------------------------------

    def load(self) -> int:
        """Create the directory if needed, mark the journal's end, rebuild the index, apply the journal.

        In that order, so that nothing another process does meanwhile is
        missed (:mod:`gateway.cache.journal`). Returns the entry count.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if self.journal is not None:
            self.journal.open()
        self._scan()
        self.catch_up()
        return len(self._lru)

    def _scan(self) -> None:
        """Sweep stale temporary files and index every entry file.

        Walks ``ab/cd/`` subdirectories only; files whose names are not ours
        are left alone. A temporary file is removed only if :func:`stale_temp`
        says so (a live process may be writing it). An entry that fails
        validation, or whose name is not the digest of its own keys, is
        removed. LRU order starts from file modification times (commit or last
        update). Then the index is brought within ``max_size``.
        """
        self._lru.clear()
        self._keys.clear()
        self._surrogates.clear()
        self._expiry.clear()
        self.total_size = 0
        now = self._clock.seconds()
        mine = {writer.temp for writer in self._writers}
        own_pid = os.getpid()
        found: list[EntryInfo] = []
        for first in _subdirs(self.directory):
            for second in _subdirs(first.path):
                with os.scandir(second.path) as files:
                    for item in files:
                        owner = temp_owner(item.name)
                        if owner is not None:
                            try:
                                age = now - item.stat(follow_symlinks=False).st_mtime
                            except FileNotFoundError:
                                continue  # committed or aborted meanwhile
                            if stale_temp(owner, age, own_pid=own_pid, mine=item.path in mine, alive=pid_alive):
                                remove_file(item.path)
                        elif _NAME.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                            info = self._load_one(item.path, item.name)
                            if info is not None:
                                found.append(info)
        found.sort(key=lambda info: info.last_access)
        for info in found:
            self._add(info)
        self._tell(self._evict(self.max_size))

    def _load_one(self, path: str, name: str) -> EntryInfo | None:
        """The index info of the entry file ``name`` at ``path``; None if it is gone or corrupt (then removed)."""
        try:
            fd = os.open(path, OPEN_READ)
        except FileNotFoundError:
            return None  # removed by another process meanwhile
        except OSError as exc:
            self._log.warn("cache: cannot open {path}: {error}", path=path, error=exc)
            return None
        try:
            read = read_entry_file(fd)
            meta = read.meta
            if entry_name(meta.key, secondary_key(meta.vary_names, meta.vary_values)) != name:
                raise CorruptEntry("file name does not match its keys")
            mtime = os.fstat(fd).st_mtime
        except (OSError, CorruptEntry) as exc:
            self._discard(path, name, 0, exc)
            return None
        finally:
            os.close(fd)
        return EntryInfo(name, meta, read.size, read.body_length, read.entry_id, mtime)


def _subdirs(path: str) -> Sequence[os.DirEntry[str]]:
    with os.scandir(path) as items:
        return [item for item in items if _FAN.fullmatch(item.name) and item.is_dir(follow_symlinks=False)]
