"""Configuration reload on SIGHUP: what to re-read, what changed, what waits for a restart.

``kill -HUP`` re-reads the file the gateway started with (:class:`ConfigSource`)
and checks it exactly as a start does (:func:`gateway.config.load`).  A file
with problems changes nothing: :func:`read_again` logs each problem as
``FILE:LINE [section] key: ...`` and gives ``None``.  What a good file changes
is applied by the single process (:meth:`gateway.service.GatewayService.reload`,
in place) or by the supervisor (:meth:`gateway.supervisor.Supervisor.reload`,
a new generation of workers); both use the decisions here:

- :func:`listener_changes`: which listeners are new, gone, moved to another
  ``bind``, or changed kind (``tls``, ``redirect_https``) on the same one.
- :func:`restart_notes`: what a reload can't apply, one message each.

Invariants: no reactor, no sockets; the only I/O is reading the file (and
the TLS files it names, as the configuration check does) and logging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.logger import Logger

from gateway import config as configuration
from gateway.compat import SLOTS
from gateway.config import Config, ListenerConfig
from gateway.workers import worker_count

log = Logger()


class ReloadRefused(Exception):
    """A good file that still can't be applied as a whole (a socket can't be bound, say).

    Raised before anything changed: the configuration in use stays.
    """


@dataclass(frozen=True, **SLOTS)
class ConfigSource:
    """Where a reload reads the configuration again, and what the command line overrides.

    ``path`` is the ``--config`` file, or the packaged default when none was
    given; ``None`` in quick mode (``--listen``/``--upstream``), which has no
    file: a reload then only reloads certificates.  ``workers`` is
    ``--workers`` when given: it wins over the file on every reload too, as
    it did at start.
    """

    path: str | None
    workers: int | None = None

    def worker_count(self, config: Config) -> int:
        """How many workers ``config`` asks for (``--workers`` first; 0: one per core)."""
        configured = config.gateway.workers if self.workers is None else self.workers
        return worker_count(configured, os.cpu_count())


def read_again(source: ConfigSource) -> Config | None:
    """The configuration in ``source``'s file, checked as at start; ``None`` when it is bad.

    Every problem is logged as its ``FILE:LINE [section] key: ...`` line, then
    one line saying the configuration in use stays; warnings of a good file
    are logged as they are printed at start.
    """
    assert source.path is not None
    try:
        config = configuration.load(source.path)
    except configuration.ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: {problem}", problem=problem)
        log.error(
            "reload refused: {path} has {count} problem(s); the configuration in use "
            "stays in force, certificates included",
            path=source.path, count=len(exc.problems),
        )
        return None
    for warning in config.warnings:
        log.warn("reload: warning: {warning}", warning=warning)
    return config


@dataclass(frozen=True, **SLOTS)
class ListenerChanges:
    """Listener names by what a new configuration does to them (each in config order).

    - ``added``: in the new configuration only: a socket to open.
    - ``removed``: in the old one only: its socket closes, its connections drain.
    - ``rebound``: ``bind`` changed: the new socket opens, then the old closes.
    - ``retyped``: same ``bind``, but ``tls`` or ``redirect_https`` changed: the
      socket is another kind of listener, and it is the same address.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rebound: tuple[str, ...] = ()
    retyped: tuple[str, ...] = ()

    @property
    def opened(self) -> tuple[str, ...]:
        """The listeners that need a new socket: added ones, then rebound ones."""
        return self.added + self.rebound


def _kind(listener: ListenerConfig) -> tuple[bool, bool]:
    """What decides the protocol stack behind a listener's socket."""
    return listener.tls, listener.redirect_https


def listener_changes(old: Config, new: Config) -> ListenerChanges:
    """How the listeners of ``new`` differ from those of ``old``; a listener is known by its name."""
    before = {listener.name: listener for listener in old.listeners}
    after = {listener.name: listener for listener in new.listeners}
    kept = [name for name in after if name in before]
    return ListenerChanges(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        rebound=tuple(name for name in kept if after[name].bind != before[name].bind),
        retyped=tuple(
            name for name in kept
            if after[name].bind == before[name].bind and _kind(after[name]) != _kind(before[name])
        ),
    )


def restart_notes(old: Config, new: Config, source: ConfigSource, *,
                  in_place: bool) -> tuple[str, ...]:
    """What reloading ``new`` over ``old`` can't apply until a restart, one sentence each.

    Demo origins are opened at start only, in every mode.  ``in_place`` is the
    single process, which reloads in place: it also can't change a
    listener's kind on the same socket, nor become a supervisor of several
    workers.  (The supervisor starts new workers, which build everything.)
    """
    notes: list[str] = []
    if old.demos != new.demos:
        notes.append("[demo:*] sections changed: demo origins change on restart only")
    if not in_place:
        return tuple(notes)
    for name in listener_changes(old, new).retyped:
        notes.append(
            f"[listener:{name}] tls / redirect_https changed on the same bind: the listener "
            "keeps its old kind until a restart (its other keys are applied)"
        )
    wanted = source.worker_count(new)
    if wanted != source.worker_count(old) and wanted > 1:
        notes.append(
            f"[gateway] workers: {wanted} workers need a restart; this gateway runs one process"
        )
    return tuple(notes)


__all__ = [
    "ConfigSource",
    "ListenerChanges",
    "ReloadRefused",
    "listener_changes",
    "read_again",
    "restart_notes",
]
