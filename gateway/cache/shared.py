"""The process-wide cache: one store, its janitor, the fills in progress and background revalidations.

A :class:`SharedCache` belongs to the process, not to one configuration: the
:class:`~gateway.runtime.Runtime` built for a reload takes over its
predecessor's when ``cache_dir`` is unchanged (bounds and fsync are updated in
place), so entries, collapsing and in-flight revalidations survive reloads.

The directory may be shared with other processes (every worker of a
multi-process gateway uses the same ``cache_dir``): the store tells and learns
changes through the directory's journal, and :class:`~gateway.cache.peers.Peers`
reads it on a tick and runs the janitor if this process holds the janitor
lock. What stays per process: the index and its LRU order, the fills in
progress (collapsing holds within a process) and background revalidations.

Invariants:

- Building one touches no disk. :meth:`SharedCache.start` loads the index
  (sweeping stale temporary files) and starts the journal and janitor ticks
  on the injected clock; :meth:`SharedCache.stop` stops them and gives up the
  janitor lock. ``start`` after ``stop`` starts them again without reloading.
- A directory that can't be used (permissions, not a directory) is logged
  at start and leaves the cache ``BROKEN``: caching routes then forward
  every request without storing (``Cache-Status: ...; fwd=bypass``); the
  gateway keeps serving.
- At most one background revalidation runs per primary key in this process
  (:meth:`SharedCache.claim_refresh`).
"""

from __future__ import annotations

import enum
import os
import time
from typing import TYPE_CHECKING

from twisted.logger import Logger

from gateway.cache.collapse import FillTable
from gateway.cache.journal import JOURNAL_NAME, Journal
from gateway.cache.peers import LOCK_NAME, JanitorLock, Peers, Role
from gateway.cache.store import DiskStore
from gateway.configvalues import show_size

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from gateway.config import GatewaySettings

__all__ = ["CacheState", "SharedCache"]

log = Logger()


class CacheState(enum.Enum):
    """States of :class:`SharedCache`.

    - NEW: built; nothing on disk touched; requests bypass the cache.
    - READY: index loaded; the journal and janitor ticks run; requests use the cache.
    - BROKEN: the directory could not be used; requests bypass the cache.
    - STOPPED: the ticks stopped (process stopping, or a reload that
      dropped or moved ``cache_dir``); requests already using it finish.
    """

    NEW = "new"
    READY = "ready"
    BROKEN = "broken"
    STOPPED = "stopped"


class SharedCache:
    """The store for ``[gateway] cache_dir`` and the state shared by every caching route of this process."""

    def __init__(self, clock: IReactorTime, settings: GatewaySettings) -> None:
        self.clock = clock
        directory = os.path.abspath(settings.cache_dir)
        journal = Journal(os.path.join(directory, JOURNAL_NAME))
        self.store = DiskStore(
            directory,
            clock,
            max_size=settings.cache_max_size,
            max_object_size=settings.cache_max_object,
            fsync=settings.cache_fsync,
            journal=journal,
            hot_entries=settings.cache_hot_entries,
        )
        self.peers = Peers(clock, self.store, journal, JanitorLock(os.path.join(directory, LOCK_NAME)))
        self.fills = FillTable(clock)
        self.state = CacheState.NEW
        self._loaded = False
        self._refreshing: set[bytes] = set()

    @property
    def ready(self) -> bool:
        """Whether requests may use the store (loaded, not broken)."""
        return self._loaded and self.state is not CacheState.BROKEN

    def serves(self, settings: GatewaySettings) -> bool:
        """Whether this cache is the one ``settings`` ask for (same directory)."""
        return bool(settings.cache_dir) and self.store.directory == os.path.abspath(settings.cache_dir)

    def configure(self, settings: GatewaySettings) -> None:
        """Apply a reloaded configuration's bounds, fsync and hot entries; a smaller bound evicts at once (janitor process)."""
        store = self.store
        store.max_object_size = min(settings.cache_max_object, settings.cache_max_size)
        store.max_size = settings.cache_max_size
        store.fsync = settings.cache_fsync
        store.hot_entries = settings.cache_hot_entries
        if self.ready and self.peers.role is Role.JANITOR and store.total_size > store.max_size:
            store.janitor()

    def start(self) -> None:
        """Load the index (first start only), then run the journal and janitor ticks (:class:`Peers`)."""
        if self.state is CacheState.BROKEN:
            return
        if not self._loaded:
            began = time.monotonic()
            try:
                count = self.store.load()
            except OSError as exc:
                self.state = CacheState.BROKEN
                log.error(
                    "cache directory {dir} unusable, caching is off: {error}",
                    dir=self.store.directory, error=exc,
                )  # fmt: skip
                return
            self._loaded = True
            log.info(
                "cache: {count} entries ({size}) in {dir}, loaded in {seconds:.2f}s",
                count=count, size=show_size(self.store.total_size), dir=self.store.directory,
                seconds=time.monotonic() - began,
            )  # fmt: skip
        self.state = CacheState.READY
        self.peers.start()

    def stop(self) -> None:
        """Stop the ticks and give up the janitor lock; requests already using the cache finish."""
        self.peers.stop()
        if self.state is CacheState.READY:
            self.state = CacheState.STOPPED

    # -- background revalidation ---------------------------------------------

    def claim_refresh(self, key: bytes) -> bool:
        """Claim the one background revalidation of ``key``; False if one already runs."""
        if key in self._refreshing:
            return False
        self._refreshing.add(key)
        return True

    def release_refresh(self, key: bytes) -> None:
        """The background revalidation of ``key`` ended."""
        self._refreshing.discard(key)

    @property
    def refreshing(self) -> int:
        """How many background revalidations run now."""
        return len(self._refreshing)
