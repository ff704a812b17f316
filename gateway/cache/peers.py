"""Several processes on one cache directory: which one runs the janitor, and the ticks that keep every index current.

Every worker of a multi-process gateway (``[gateway] workers``) uses the same
``cache_dir`` with the whole ``cache_max_size``. Each keeps its own index and
its own fills in progress (:class:`~gateway.cache.collapse.FillTable`); they
hear of each other's changes through the journal
(:mod:`gateway.cache.journal`), and one of them evicts.

Invariants:

- At most one process at a time holds the janitor lock, an exclusive
  ``flock`` on ``cache_dir/janitor.lock`` (:class:`JanitorLock`). Only the
  holder drops expired entries, evicts down to the low-water mark and
  rotates the journal. The kernel releases the lock when its holder exits or
  dies, and the next janitor tick of another process takes it, so eviction
  goes on while any process runs. (A lock, not "worker 1": a restarted or
  killed worker 1 would leave no one evicting, and two gateways pointed at
  one directory would both evict.)
- Every process, holder or not, applies the journal every
  :data:`JOURNAL_INTERVAL` (the store also catches up before each commit and
  on each miss) and makes room at commit time, so the files on disk stay
  within ``max_size`` plus what others committed since its last catch-up.
- LRU order is each process's own view: its own hits, and every process's
  commits and updates. The holder evicts by its view; with requests spread
  across workers, an entry popular anywhere is popular in every view.
- Nothing touches the disk before :meth:`Peers.start`; :meth:`Peers.stop`
  stops the ticks and releases the lock. Failures in a tick are logged, never
  raised into the reactor.
"""

from __future__ import annotations

import enum
import fcntl
import os
from typing import TYPE_CHECKING

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from gateway.cache.journal import Journal
    from gateway.cache.store import DiskStore

__all__ = ["JANITOR_INTERVAL", "JOURNAL_INTERVAL", "LOCK_NAME", "JanitorLock", "Peers", "Role"]

log = Logger()

#: Seconds between two janitor runs (each removes at most 1000 entries).
JANITOR_INTERVAL = 1.0
#: Seconds between two reads of the journal: how long another worker's
#: commit or purge may stay unknown here when no miss or commit asked sooner.
JOURNAL_INTERVAL = 0.1
#: The janitor lock's file name in ``cache_dir``.
LOCK_NAME = "janitor.lock"


class JanitorLock:
    """The right to run the janitor on one directory: an exclusive ``flock`` on ``path``, never waited for.

    ``flock`` locks belong to an open file, not a process, so two instances in
    one process exclude each other too; the descriptor is not inherited by
    child processes (``O_CLOEXEC``). If the file is deleted while held, the
    holder notices at its next :meth:`acquire` (the janitor tick), so two
    janitors overlap for one tick at most.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; whether this instance holds it now.

        A holder whose lock file was deleted or replaced (another process may
        then lock the new file) lets go of the old one and competes again.
        """
        if self._fd is not None:
            if self._names_path(self._fd):
                return True
            self.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _names_path(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Let another process take the lock (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Role(enum.Enum):
    """States of :class:`Peers`.

    - IDLE: not started, or stopped; no ticks run; the lock is not held.
    - FOLLOWER: ticks run; another process holds the janitor lock (each
      janitor tick tries to take it).
    - JANITOR: ticks run and this process holds the lock: it expires, evicts
      and rotates the journal.
    """

    IDLE = "idle"
    FOLLOWER = "follower"
    JANITOR = "janitor"


class Peers:
    """Runs one process's share of the work on a shared cache directory, on the injected clock.

    ``role`` is a :class:`Role`: IDLE until :meth:`start` and after
    :meth:`stop`; between them FOLLOWER or JANITOR, decided again on every
    janitor tick by trying the lock.
    """

    def __init__(self, clock: IReactorTime, store: DiskStore, journal: Journal, lock: JanitorLock) -> None:
        self.clock = clock
        self.store = store
        self.journal = journal
        self.lock = lock
        self.role = Role.IDLE
        self._loops: list[LoopingCall] = []

    def start(self) -> None:
        """Try for the janitor lock now, then read the journal and run the janitor on their ticks.

        Call it once the store is loaded. A second call does nothing.
        """
        if self.role is not Role.IDLE:
            return
        self.role = Role.FOLLOWER
        self._claim()
        for work, interval in ((self._follow, JOURNAL_INTERVAL), (self._sweep, JANITOR_INTERVAL)):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        """Stop the ticks and release the janitor lock."""
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()
        self.lock.release()
        self.role = Role.IDLE

    def _claim(self) -> bool:
        """Take the janitor lock if it is free; whether this process is the janitor."""
        try:
            held = self.lock.acquire()
        except OSError as exc:
            log.warn("cache: cannot open the janitor lock {path}: {error}", path=self.lock.path, error=exc)
            held = False
        if held and self.role is Role.FOLLOWER:
            log.info("cache: this process now runs the janitor of {dir}", dir=self.store.directory)
        self.role = Role.JANITOR if held else Role.FOLLOWER
        return held

    def _follow(self) -> None:
        try:
            self.store.catch_up()
        except Exception:
            log.failure("cache: applying the journal failed")

    def _sweep(self) -> None:
        if not self._claim():
            return
        try:
            removed = self.store.janitor()
            self.journal.rotate()
        except Exception:
            log.failure("cache janitor failed")
            return
        if removed:
            log.debug("cache janitor removed {n} entries", n=removed)
