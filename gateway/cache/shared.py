"""The process-wide cache: one store, its janitor, the fills in progress and background revalidations.

A :class:`SharedCache` belongs to the process, not to one configuration: the
:class:`~gateway.runtime.Runtime` built for a reload takes over its
predecessor's when ``cache_dir`` is unchanged (bounds and fsync are updated in
place), so entries, collapsing and in-flight revalidations survive reloads.

Invariants:

- Building one touches no disk. :meth:`SharedCache.start` loads the index
  (sweeping temporary files) and starts the janitor on the injected clock;
  :meth:`SharedCache.stop` stops the janitor. ``start`` after ``stop`` starts
  the janitor again without reloading.
- A directory that can't be used (permissions, not a directory) is logged
  at start and leaves the cache ``BROKEN``: caching routes then forward
  every request without storing (``Cache-Status: ...; fwd=bypass``); the
  gateway keeps serving.
- At most one background revalidation runs per primary key
  (:meth:`SharedCache.claim_refresh`).
"""

from __future__ import annotations

import enum
import os
import time
from typing import TYPE_CHECKING

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.cache.collapse import FillTable
from gateway.cache.store import DiskStore
from gateway.configvalues import show_size

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from gateway.config import GatewaySettings

__all__ = ["JANITOR_INTERVAL", "CacheState", "SharedCache"]

log = Logger()

#: Seconds between two janitor runs (each removes at most 1000 entries).
JANITOR_INTERVAL = 1.0


class CacheState(enum.Enum):
    """States of :class:`SharedCache`.

    - NEW: built; nothing on disk touched; requests bypass the cache.
    - READY: index loaded; the janitor runs; requests use the cache.
    - BROKEN: the directory could not be used; requests bypass the cache.
    - STOPPED: the janitor stopped (process stopping, or a reload that
      dropped or moved ``cache_dir``); requests already using it finish.
    """

    NEW = "new"
    READY = "ready"
    BROKEN = "broken"
    STOPPED = "stopped"


class SharedCache:
    """The store for ``[gateway] cache_dir`` and the state shared by every caching route."""

    def __init__(self, clock: IReactorTime, settings: GatewaySettings) -> None:
        self.clock = clock
        self.store = DiskStore(
            settings.cache_dir,
            clock,
            max_size=settings.cache_max_size,
            max_object_size=settings.cache_max_object,
            fsync=settings.cache_fsync,
        )
        self.fills = FillTable(clock)
        self.state = CacheState.NEW
        self._loaded = False
        self._refreshing: set[bytes] = set()
        self._janitor: LoopingCall | None = None

    @property
    def ready(self) -> bool:
        """Whether requests may use the store (loaded, not broken)."""
        return self._loaded and self.state is not CacheState.BROKEN

    def serves(self, settings: GatewaySettings) -> bool:
        """Whether this cache is the one ``settings`` ask for (same directory)."""
        return bool(settings.cache_dir) and self.store.directory == os.path.abspath(settings.cache_dir)

    def configure(self, settings: GatewaySettings) -> None:
        """Apply a reloaded configuration's bounds and fsync; a smaller bound evicts at once."""
        store = self.store
        store.max_object_size = min(settings.cache_max_object, settings.cache_max_size)
        store.max_size = settings.cache_max_size
        store.fsync = settings.cache_fsync
        if self.ready and store.total_size > store.max_size:
            store.janitor()

    def start(self) -> None:
        """Load the index (first start only) and run the janitor every :data:`JANITOR_INTERVAL`."""
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
        if self._janitor is None:
            janitor = LoopingCall(self._sweep)
            janitor.clock = self.clock
            self._janitor = janitor
            janitor.start(JANITOR_INTERVAL, now=False)

    def stop(self) -> None:
        """Stop the janitor; requests already using the cache finish."""
        janitor, self._janitor = self._janitor, None
        if janitor is not None and janitor.running:
            janitor.stop()
        if self.state is CacheState.READY:
            self.state = CacheState.STOPPED

    def _sweep(self) -> None:
        try:
            removed = self.store.janitor()
        except Exception:
            log.failure("cache janitor failed")
            return
        if removed:
            log.debug("cache janitor removed {n} entries", n=removed)

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
