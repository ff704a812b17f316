"""Memory-then-disk spool for one message body, within per-body and process-wide bounds.

A :class:`Spool` takes a response body from the upstream as fast as it comes
(so the upstream connection goes back to its pool at once) or a request body
from the client before the backend is contacted, and is read at the other
side's pace by a :class:`gateway.bodystore.BodyProducer`, while it is still
being written.

Invariants:

- Bounded per body: bytes stay in memory (a list of the pieces written, not
  joined) up to ``SpoolLimits.memory`` (64 KiB by default), then everything
  moves to a temporary file, up to ``SpoolLimits.max_size`` (1 GiB). A write
  past ``max_size`` raises :class:`SpoolOverflow` and stores nothing.
- Bounded per process: every byte held, in memory or on disk, is counted in
  the shared :class:`SpoolBudget`. :func:`open_spool` admits a new body only if
  its first allotment fits (``None`` means: stream it directly instead). A body
  that outgrows the budget midway is never failed: the write is accepted and
  answered :attr:`Room.FULL`, and the writer pauses. A full spool becomes a
  plain stream: once its reader has passed on every byte written, those bytes
  are dropped, the budget is given back and ``on_room`` tells the writer to go
  on. The budget may be exceeded by what a writer delivers before it pauses
  (one read per full spool), never more.
- Small writes (under 16 KiB, e.g. a client's one-byte chunks) are gathered in
  one bounded ``bytearray`` so that tiny pieces can't cost more in object
  overhead than the bytes they hold; large writes are kept as they are.
- No leaks: the spool file is created with ``mkstemp`` and unlinked at once
  (Linux keeps the open descriptor), so even a crash leaves nothing behind;
  :func:`sweep_spool_dir` removes anything a crash between the two left.
  :meth:`Spool.close` gives back the budget and closes the descriptor, and is
  safe to call on every path (completion, either side aborting, shutdown) and
  more than once.
- Disk I/O is synchronous positional I/O (``pwrite``/``pread``) on the reactor
  thread, as nginx does without aio: it lands in the page cache. Reader and
  writer never share a file position.
- A spool that never went full keeps every byte until it is closed, so it can
  be read again from the start (a buffered request body replayed on a retry).
"""

from __future__ import annotations

import enum
import os
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

from twisted.logger import Logger
from zope.interface import implementer

from gateway.compat import SLOTS
from gateway.bodystore import IBodySource
from gateway.errors import GatewayError

__all__ = [
    "Room",
    "Spool",
    "SpoolBudget",
    "SpoolDirError",
    "SpoolError",
    "SpoolLimits",
    "SpoolOverflow",
    "check_spool_dir",
    "open_spool",
    "sweep_spool_dir",
]

log = Logger()

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Every spool file's name starts with this, so a sweep touches nothing else
#: even in a shared directory such as /tmp.
SPOOL_PREFIX = "gw-spool-"

#: Writes smaller than this are gathered before they are stored.
_GATHER = 16 * KiB


@dataclass(frozen=True, **SLOTS)
class SpoolLimits:
    """Per-body limits (a route may have its own)."""

    #: Bytes of one body kept in memory before it spills to disk.
    memory: int = 64 * KiB
    #: Bytes of one body in total; a write past this raises SpoolOverflow.
    max_size: int = 1 * GiB

    def __post_init__(self) -> None:
        if self.memory < 0:
            raise ValueError(f"spool memory limit must be >= 0, got {self.memory}")
        if self.max_size < 0:
            raise ValueError(f"spool max_size must be >= 0, got {self.max_size}")


class SpoolBudget:
    """Process-wide counts of spool bytes in memory and on disk, and their limits.

    Counts only: no table grows with traffic. ``try_reserve_*`` succeed only
    within the limit; ``charge_*`` count bytes a spool had to take anyway (the
    overdraft of a full spool, see the module docstring). The limits may be
    changed at any time (reload); bytes already counted stay counted.
    """

    __slots__ = ("memory_limit", "disk_limit", "memory_used", "disk_used", "spools")

    def __init__(self, memory_limit: int, disk_limit: int) -> None:
        if memory_limit < 0 or disk_limit < 0:
            raise ValueError(f"spool budget limits must be >= 0, got {memory_limit}, {disk_limit}")
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self.memory_used = 0
        self.disk_used = 0
        #: Spools admitted and not yet closed.
        self.spools = 0

    def try_reserve_memory(self, n: int) -> bool:
        """Count ``n`` more bytes in memory if that stays within the limit."""
        if self.memory_used + n > self.memory_limit:
            return False
        self.memory_used += n
        return True

    def try_reserve_disk(self, n: int) -> bool:
        """Count ``n`` more bytes on disk if that stays within the limit."""
        if self.disk_used + n > self.disk_limit:
            return False
        self.disk_used += n
        return True

    def charge_memory(self, n: int) -> None:
        """Count ``n`` bytes in memory whatever the limit (a full spool's overdraft)."""
        self.memory_used += n

    def charge_disk(self, n: int) -> None:
        """Count ``n`` bytes on disk whatever the limit (a full spool's overdraft)."""
        self.disk_used += n

    def release_memory(self, n: int) -> None:
        """Give back ``n`` bytes of memory."""
        used = self.memory_used - n
        if used < 0:
            log.error("spool memory budget released below zero ({used})", used=used)
            used = 0
        self.memory_used = used

    def release_disk(self, n: int) -> None:
        """Give back ``n`` bytes of disk."""
        used = self.disk_used - n
        if used < 0:
            log.error("spool disk budget released below zero ({used})", used=used)
            used = 0
        self.disk_used = used


class SpoolError(GatewayError):
    """The spool can't store the body (a disk write failed).

    503 fits a request body being buffered; for a response the head has gone
    out already, so the caller aborts the connection instead.
    """

    status = 503


class SpoolOverflow(SpoolError):
    """The body is larger than ``SpoolLimits.max_size``; nothing was stored.

    413 Content Too Large fits a buffered request body (RFC 9110 §15.5.14); a
    response is aborted.
    """

    status = 413


class SpoolDirError(Exception):
    """The spool directory is missing, not a directory, or not writable."""


class Room(enum.Enum):
    """What :meth:`Spool.write` tells the writer."""

    #: Keep writing.
    OPEN = "open"
    #: Stored, but the budget is used up (or no file could be had): stop
    #: reading from the writer's side until ``Spool.on_room`` is called.
    FULL = "full"
    #: The spool is closed or finished; the data was dropped. Stop writing.
    CLOSED = "closed"


class _State(enum.Enum):
    """States of :class:`Spool`.

    - WRITING: open for writes; readers may read what is there and wait for more.
    - FINISHED: the body is complete (``length`` is known); no more writes.
    - FAILED: a disk write failed; readers abort; waiting for ``close``.
    - CLOSED: budget given back, descriptor closed, data dropped. Final.
    """

    WRITING = "writing"
    FINISHED = "finished"
    FAILED = "failed"
    CLOSED = "closed"


@implementer(IBodySource)
class Spool:
    """One body being buffered: in memory, then in an unlinked temporary file.

    Made by :func:`open_spool`, which charges its first allotment to the
    budget. The writer calls :meth:`write` and :meth:`finish` (or :meth:`close`
    to give up); one :class:`gateway.bodystore.BodyProducer` at a time reads it
    through :class:`gateway.bodystore.IBodySource`, which it provides.

    Layout: bytes ``[base, available)`` are held; ``base`` moves up only when a
    full spool drops what its reader passed on. Bytes below ``tail_start`` are
    in ``_chunks`` (memory) or in the file at ``offset - base`` (disk); bytes
    from ``tail_start`` on are in ``_tail``, the gathered small writes.
    """

    __slots__ = (
        "_budget",
        "_limits",
        "_directory",
        "_state",
        "_base",
        "_chunks",
        "_starts",
        "_tail",
        "_tail_start",
        "_fd",
        "_to_disk",
        "_memory",
        "_disk",
        "_waiters",
        "room",
        "available",
        "on_room",
    )

    def __init__(
        self,
        budget: SpoolBudget,
        limits: SpoolLimits,
        directory: str,
        *,
        memory: int = 0,
        disk: int = 0,
    ) -> None:
        """``memory`` and ``disk``: bytes already reserved in ``budget`` for this
        spool (its first allotment); a disk allotment sends the body straight to
        disk. Use :func:`open_spool`, which reserves them."""
        self._budget = budget
        self._limits = limits
        self._directory = directory
        self._state = _State.WRITING
        self._base = 0
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # body offset of each chunk, for bisect
        self._tail = bytearray()
        self._tail_start = 0
        self._fd = -1
        self._to_disk = disk > 0  # the announced length can't fit in memory
        self._memory = memory  # bytes counted in the budget's memory for this spool
        self._disk = disk  # bytes counted in the budget's disk for this spool
        self._waiters: list[Callable[[], None]] = []
        #: What the last write answered; FULL until the reader catches up.
        self.room = Room.OPEN
        #: Bytes written so far (IBodySource).
        self.available = 0
        #: Called when a full spool has room again: resume the writer.
        self.on_room: Callable[[], None] | None = None
        budget.spools += 1

    # -- state, for owners and tests ---------------------------------------------

    @property
    def length(self) -> int:
        """The body's length once :meth:`finish` was called, else -1 (IBodySource)."""
        return self.available if self._state is _State.FINISHED else -1

    @property
    def failed(self) -> bool:
        """True once the body can't be read to its end (IBodySource)."""
        return self._state is _State.FAILED or self._state is _State.CLOSED

    @property
    def spilled(self) -> bool:
        """True once the body lives in a file."""
        return self._fd >= 0

    # -- writer side -----------------------------------------------------------

    def write(self, data: bytes) -> Room:
        """Append ``data``; the answer says whether the writer may go on.

        Raises :class:`SpoolOverflow` (storing nothing) past ``max_size`` and
        :class:`SpoolError` when the disk fails (the spool is then failed).
        """
        state = self._state
        if state is not _State.WRITING:
            if state is _State.FINISHED:
                log.error("spool written after finish(); {n} bytes dropped", n=len(data))
            return Room.CLOSED
        n = len(data)
        if not n:
            return self.room
        total = self.available + n
        if total > self._limits.max_size:
            limit = self._limits.max_size
            raise SpoolOverflow(f"body exceeds the spool's max_size ({limit} bytes)")
        held = total - self._base
        if self._fd < 0:
            if (
                self.room is Room.OPEN
                and not self._to_disk
                and held <= self._limits.memory
                and self._cover_memory(held)
            ):
                self._append_memory(data)
            elif self.room is Room.OPEN and self._spill(held):
                self._append_disk(data)
            else:
                # No room in memory and no file to be had: hold it anyway and
                # stop the writer (module docstring: a full spool is a stream).
                if held > self._memory:
                    self._budget.charge_memory(held - self._memory)
                    self._memory = held
                self.room = Room.FULL
                self._append_memory(data)
        elif self.room is Room.OPEN and self._cover_disk(held):
            self._append_disk(data)
        else:
            # The disk budget is spent: the file never grows past what it
            # covers, so spool_disk holds exactly. The read already in hand
            # waits in memory (charged there: one read per full spool, the
            # documented overhead) until the reader has passed everything on.
            self._budget.charge_memory(n)
            self._memory += n
            self.room = Room.FULL
            self._tail += data
        self.available = total
        self._wake()
        return self.room

    def finish(self) -> None:
        """The body is complete: readers may end; unused reservations go back."""
        if self._state is not _State.WRITING:
            return
        self._state = _State.FINISHED
        held = self.available - self._base
        self._trim(memory=0 if self._fd >= 0 else held, disk=held if self._fd >= 0 else 0)
        self._wake()

    def close(self) -> None:
        """Drop the body: give back the budget, close the file; readers still
        reading abort. Safe on every path and more than once."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                log.failure("closing a spool file")
        self._chunks = []
        self._starts = []
        self._tail = bytearray()
        self._trim(memory=0, disk=0)
        self._budget.spools -= 1
        self.on_room = None
        self._wake()

    # -- reader side (IBodySource) ------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        if self.failed or offset >= self.available or size <= 0:
            return b""
        if offset < self._base:
            raise ValueError(
                f"spool offset {offset} was dropped (held from {self._base}): "
                "a full spool can be read only once"
            )
        tail_start = self._tail_start
        if offset >= tail_start:
            i = offset - tail_start
            # One copy; the temporary view is released at once, so the tail
            # can still grow.
            return bytes(memoryview(self._tail)[i : i + size])
        if self._fd >= 0:
            return os.pread(self._fd, min(size, tail_start - offset), offset - self._base)
        k = bisect_right(self._starts, offset) - 1
        chunk = self._chunks[k]
        i = offset - self._starts[k]
        # A whole chunk comes back as the same object, not a copy.
        return chunk[i : i + size]

    def notify(self, callback: Callable[[], None]) -> None:
        if self._state is _State.WRITING:
            self._waiters.append(callback)
        else:
            callback()

    def cancel_notify(self, callback: Callable[[], None]) -> None:
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass

    def consumed(self, offset: int) -> None:
        """A full spool whose reader caught up drops what it held and has room again."""
        if self.room is not Room.FULL or self._state is not _State.WRITING:
            return
        if offset < self.available:
            return
        self._rewind()

    # -- internals -------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def _cover_memory(self, held: int) -> bool:
        need = held - self._memory
        if need <= 0:
            return True
        if not self._budget.try_reserve_memory(need):
            return False
        self._memory = held
        return True

    def _cover_disk(self, held: int) -> bool:
        need = held - self._disk
        if need <= 0:
            return True
        if not self._budget.try_reserve_disk(need):
            return False
        self._disk = held
        return True

    def _trim(self, *, memory: int, disk: int) -> None:
        """Give back whatever this spool counts beyond ``memory`` and ``disk``."""
        if self._memory > memory:
            self._budget.release_memory(self._memory - memory)
            self._memory = memory
        if self._disk > disk:
            self._budget.release_disk(self._disk - disk)
            self._disk = disk

    def _append_memory(self, data: bytes) -> None:
        tail = self._tail
        if len(data) < _GATHER:
            tail += data
            if len(tail) >= _GATHER:
                self._store_tail_in_memory()
            return
        if tail:
            self._store_tail_in_memory()
        self._starts.append(self._tail_start)
        self._chunks.append(data)
        self._tail_start += len(data)

    def _store_tail_in_memory(self) -> None:
        tail = self._tail
        self._starts.append(self._tail_start)
        self._chunks.append(bytes(tail))
        self._tail_start += len(tail)
        self._tail = bytearray()

    def _append_disk(self, data: bytes) -> None:
        if len(data) < _GATHER:
            self._tail += data
            if len(self._tail) >= _GATHER:
                self._flush_tail()
            return
        if self._tail:
            self._flush_tail()
        self._pwrite(data, self._tail_start)
        self._tail_start += len(data)

    def _flush_tail(self) -> None:
        tail = self._tail
        self._pwrite(tail, self._tail_start)
        self._tail_start += len(tail)
        self._tail = bytearray()

    def _pwrite(self, data: bytes | bytearray, offset: int) -> None:
        """Write all of ``data`` at body ``offset``; a disk error fails the spool."""
        try:
            _pwrite_all(self._fd, data, offset - self._base)
        except OSError as exc:
            self._state = _State.FAILED
            self._wake()
            raise SpoolError(f"spool write failed: {exc.strerror or exc}") from exc

    def _spill(self, held: int) -> bool:
        """Move everything to a new unlinked file; False if no disk can be had."""
        if not self._cover_disk(held):
            return False
        try:
            fd = _open_unlinked(self._directory)
        except OSError as exc:
            log.warn(
                "can't open a spool file in {directory}: {error}",
                directory=self._directory,
                error=exc.strerror or exc,
            )
            self._trim(memory=self._memory, disk=0)
            return False
        offset = 0
        try:
            for piece in (*self._chunks, self._tail):
                _pwrite_all(fd, piece, offset)
                offset += len(piece)
        except OSError as exc:
            os.close(fd)
            log.warn("can't write a spool file: {error}", error=exc.strerror or exc)
            self._trim(memory=self._memory, disk=0)
            return False
        self._fd = fd
        self._chunks = []
        self._starts = []
        self._tail = bytearray()
        self._tail_start = self.available
        self._trim(memory=0, disk=self._disk)
        return True

    def _rewind(self) -> None:
        """Drop every held byte (all were passed on) and give the budget back."""
        self._base = self._tail_start = self.available
        self._chunks = []
        self._starts = []
        self._tail = bytearray()
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                log.failure("truncating a spool file")
                self._state = _State.FAILED
                self._wake()
                return
        self._trim(memory=0, disk=0)
        self.room = Room.OPEN
        on_room = self.on_room
        if on_room is not None:
            on_room()


def open_spool(
    budget: SpoolBudget, limits: SpoolLimits, directory: str, *, expected: int = -1
) -> Spool | None:
    """A new spool with its first allotment charged, or None: stream instead.

    ``expected`` is the body's announced length (Content-Length), -1 if unknown.
    Unknown lengths reserve the per-body memory limit, so a body that fits in
    memory can't go full (one that outgrows it takes disk as it grows, and goes
    full if there is none); known lengths reserve exactly what they need, in
    memory if they fit there, else on disk (the body then goes straight to
    disk). None when the announced length exceeds ``max_size`` or the budget
    can't cover the allotment: the caller streams directly, with backpressure.
    """
    if expected > limits.max_size:
        return None
    if expected < 0 or expected <= limits.memory:
        want = limits.memory if expected < 0 else expected
        if not budget.try_reserve_memory(want):
            return None
        return Spool(budget, limits, directory, memory=want)
    if not budget.try_reserve_disk(expected):
        return None
    return Spool(budget, limits, directory, disk=expected)


def _open_unlinked(directory: str) -> int:
    """A new empty file in ``directory``, already unlinked; only the fd is left."""
    fd, path = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=directory)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another process's start-up sweep got there first: same result
    except OSError:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} bytes")
        view = view[written:]
        offset += written


def sweep_spool_dir(directory: str) -> int:
    """Delete spool files left in ``directory`` by a crashed process; how many.

    Only regular files named ``SPOOL_PREFIX*`` are touched. With unlink-on-open
    a crash can leave one only between ``mkstemp`` and ``unlink``; deleting a
    live process's file in that instant is harmless (it unlinks nothing).
    """
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(SPOOL_PREFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warn(
                    "can't remove stale spool file {path}: {error}", path=entry.path, error=exc
                )
                continue
            removed += 1
    if removed:
        log.info(
            "removed {count} stale spool files from {directory}", count=removed, directory=directory
        )
    return removed


def check_spool_dir(directory: str) -> None:
    """Raise :class:`SpoolDirError` unless spool files can be made in ``directory``.

    Tries the real thing (create, unlink, write a byte) rather than trusting
    ``os.access``, which root and some file systems answer wrongly.
    """
    if not os.path.exists(directory):
        raise SpoolDirError(f"spool directory {directory}: does not exist")
    if not os.path.isdir(directory):
        raise SpoolDirError(f"spool directory {directory}: not a directory")
    try:
        fd = _open_unlinked(directory)
    except OSError as exc:
        raise SpoolDirError(
            f"spool directory {directory}: can't create files: {exc.strerror or exc}"
        ) from exc
    try:
        _pwrite_all(fd, b"\0", 0)
    except OSError as exc:
        why = exc.strerror or exc
        raise SpoolDirError(f"spool directory {directory}: can't write: {why}") from exc
    finally:
        os.close(fd)
