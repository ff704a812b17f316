"""The worker's side of multi-core: inherited sockets, the supervisor's config, its log, its death.

A worker is ``twistd gateway`` started by :class:`gateway.supervisor.Supervisor`
with :data:`~gateway.workers.WORKER_ENV` set.  It builds the same
:class:`~gateway.service.GatewayService` as a single process, except that:

- each listener's endpoint listens through :class:`InheritedPort`, which adopts
  the socket the supervisor bound instead of binding one (``ssl:`` endpoints
  get their TLS wrapping exactly as ``listenSSL`` gives it, and ``tls = true``
  listeners theirs from the service, unchanged);
- the configuration is the supervisor's, read from :data:`~gateway.workers.CONFIG_FD`
  (:func:`read_config`), so every worker, restarted ones included, runs what
  the supervisor loaded even if the file changed since;
- :class:`SupervisorLink` logs ``worker N started (pid P)``, tells the
  supervisor so on :data:`~gateway.workers.READY_FD` (a reload waits for it
  before stopping the previous workers), and stops the worker when the
  supervisor is gone (EOF on :data:`~gateway.workers.PARENT_FD`);
- :func:`worker_log_observer` (twistd ``--logger`` via gateway.tap) labels every line ``worker=N``.

Invariants: nothing here listens; the reactor is injected; a failure once
running is logged, never raised into the reactor.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    jsonFileLogObserver,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from gateway.compat import SLOTS
from gateway.logbuffer import BatchedLogObserver
from gateway.workers import LOG_ENV, SOCKETS_ENV, WORKER_ENV, InheritedSocket, decode_sockets

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IListeningPort,
        IProtocolFactory,
        IReactorCore,
        IReactorFDSet,
        IReactorSocket,
    )

    from gateway.config import Config

    class Reactor(IReactorCore, IReactorFDSet):
        """What a SupervisorLink needs of the reactor: run state and descriptors."""

log = Logger()


class InheritedPort:
    """Stands in for the reactor while one listener's endpoint listens: adopts its socket.

    Twisted's TCP and SSL endpoints listen by calling ``listenTCP`` or
    ``listenSSL`` with the port, backlog and interface they parsed; the
    supervisor has already bound and listened with those, so both calls adopt
    the inherited descriptor instead (``IReactorSocket.adoptStreamPort``).
    Adopting duplicates it, so the inherited one is closed afterwards.  An
    adopted port's ``stopListening`` closes this worker's copy only and never
    calls ``shutdown``, so the other workers go on accepting.
    """

    def __init__(self, reactor: IReactorSocket, inherited: InheritedSocket) -> None:
        self._reactor = reactor
        self.inherited = inherited

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        """Adopt the inherited socket for ``factory``; the address arguments are already applied."""
        listening = self._reactor.adoptStreamPort(
            self.inherited.fd, self.inherited.family, factory
        )
        os.close(self.inherited.fd)
        return listening

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> IListeningPort:
        """Adopt the inherited socket behind TLS, as the reactor's own ``listenSSL`` does."""
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory))


@dataclass(frozen=True, **SLOTS)
class WorkerSetup:
    """What the supervisor told this worker through its environment."""

    number: int
    sockets: Mapping[str, InheritedSocket]


def worker_setup(environ: Mapping[str, str]) -> WorkerSetup | None:
    """The setup in ``environ``, or ``None`` when this process is no worker.

    :raises ValueError: when the variables are there but malformed.
    """
    number = environ.get(WORKER_ENV)
    if not number:
        return None
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"{WORKER_ENV}: expected a worker number 1..N, got {number!r}")
    return WorkerSetup(int(number), decode_sockets(environ.get(SOCKETS_ENV, "")))


def read_config(fd: int) -> Config:
    """The configuration the supervisor pickled into ``fd`` (an unlinked file), then close it.

    Read with ``pread`` from offset 0: the descriptor's offset is shared with
    the supervisor and every other worker.
    """
    try:
        size = os.fstat(fd).st_size
        data = b""
        while len(data) < size:
            chunk = os.pread(fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    config: Config = pickle.loads(data)  # written by our own parent process
    return config


@implementer(IReadDescriptor)
class _PipeEnd:
    """The read end of a pipe nobody writes to: readable only at EOF, when the writer is gone."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self.fd = fd
        self._gone = gone

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SupervisorLink"

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self.fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            return None  # the supervisor writes nothing; ignore what isn't EOF
        return Failure(error.ConnectionDone())

    def connectionLost(self, reason: Failure) -> None:
        self._gone()


class SupervisorLink(Service):
    """A worker's tie to its supervisor: announces the worker, stops it when the supervisor dies.

    Started last, once the listeners accept, it waits for the reactor to run
    (twistd starts services before ``reactor.run``, which installs the
    SIGTERM handler a drain needs), then writes one byte on ``ready_fd`` and
    closes it: the supervisor's signal that this worker serves.

    The supervisor holds the write end of a pipe whose read end every worker
    inherits at ``fd``; when the supervisor exits, however it exits, the kernel
    closes the write end and the read end becomes readable at EOF.  The worker
    then stops the way SIGTERM would stop it (``stop``: ``reactor.stop``), so
    its in-flight requests drain.
    """

    def __init__(self, reactor: Reactor, number: int, fd: int,
                 stop: Callable[[], None], ready_fd: int | None = None) -> None:
        self.reactor = reactor
        self.number = number
        self._ready_fd = ready_fd
        self._stop = stop
        self._pipe = _PipeEnd(fd, self._supervisor_gone)
        self._watching = False

    def startService(self) -> None:
        """Log the start, watch the pipe, and say "ready" once the reactor runs."""
        super().startService()
        log.info("worker {number} started (pid {pid})", number=self.number, pid=os.getpid())
        if self._ready_fd is not None:
            self.reactor.callWhenRunning(self._announce)
        os.set_blocking(self._pipe.fd, False)
        self.reactor.addReader(self._pipe)
        self._watching = True

    def _announce(self) -> None:
        fd, self._ready_fd = self._ready_fd, None
        if fd is None or not self.running:
            return
        try:
            os.write(fd, b"R")
            os.close(fd)
        except OSError as exc:
            log.warn("worker {number}: can't tell the supervisor it is ready: {error}",
                     number=self.number, error=exc)

    def stopService(self) -> None:
        """Stop watching (the descriptor stays open: it is harmless and inherited by nobody)."""
        super().stopService()
        if self._watching:
            self.reactor.removeReader(self._pipe)
            self._watching = False

    def _supervisor_gone(self) -> None:
        self._watching = False
        if not self.running:
            return
        log.warn("worker {number}: the supervisor is gone; stopping", number=self.number)
        try:
            self._stop()
        except error.ReactorNotRunning:
            pass  # already stopping


def label(number: str, observer: ILogObserver) -> ILogObserver:
    """``observer`` with ``worker=N`` at the head of every event's system.

    A classic line then reads ``TIME [worker=2 gateway.access#info] ...``, or
    ``TIME [worker=2] ...`` for Twisted's own messages (system ``-``).
    """
    prefix = f"worker={number}"

    @provider(ILogObserver)
    def labelled(event: LogEvent) -> None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        observer({**event, "log_system": prefix if system == "-" else f"{prefix} {system}"})

    return labelled


def worker_log_observer(reactor: Any) -> ILogObserver:
    """A worker's log observer (twistd ``--logger`` via gateway.tap): its stdout, labelled ``worker=N``.

    Classic text lines, access lines batched (:mod:`gateway.logbuffer`), when
    stdout is the supervisor's own (one stream, written directly); JSON events,
    one per line, when the supervisor relays them into its log (it logs to a
    file, syslog or its own observer).
    """
    number = os.environ.get(WORKER_ENV, "?")
    if os.environ.get(LOG_ENV) == "json":
        return label(number, jsonFileLogObserver(sys.stdout))
    return label(number, BatchedLogObserver(sys.stdout, reactor))
