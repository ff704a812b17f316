"""The gateway's service tree: listeners, demo origins, reload, and an ordered stop.

Startup listens on every ``[listener:*]`` and ``[demo:*]`` endpoint (bind errors
fail the start). A listener is one of three kinds: proxying over plain TCP,
proxying behind TLS (``tls = true``: :mod:`gateway.tls`, its certificates kept
by :class:`gateway.tlsreload.Certificates`), or redirecting to HTTPS
(``redirect_https = true``: the front end answers every request with
:mod:`gateway.redirect`'s redirect).

SIGHUP reloads in place (:meth:`GatewayService.sighup`): the file the process
started with is read and checked again (:mod:`gateway.reload`); a bad one
changes nothing.  A good one replaces the :class:`Runtime` whole, reloads
certificates, and opens and closes listeners: sockets for new or moved
listeners are bound before anything changes (one that can't be bound refuses
the reload), and a closed listener's connections finish their request under
the configuration they were accepted with.  Without a file (quick mode, a
worker) SIGHUP reloads certificates only.

In a worker of a multi-process gateway (:mod:`gateway.supervisor`) the same
service is built with the ``sockets`` the supervisor bound: each listener's
endpoint then adopts its inherited socket (:class:`gateway.adoption.InheritedPort`)
instead of binding, TLS wrapping included, and demo origins are left to the
supervisor.  A worker's configuration never changes: the supervisor reloads
by starting new workers.
Stop closes the listening ports, lets in-flight exchanges finish
for up to ``shutdown_grace`` seconds, closes what remains, then drops idle
upstream connections.
"""

from __future__ import annotations

import gc
import os
import socket

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gateway.adoption import InheritedPort
from gateway.binding import bind_socket
from gateway.compat import freeze_heap
from gateway.demo import demo_site
from gateway.frontend import GatewayFactory
from gateway.config import ConfigError
from gateway.reload import (
    ConfigSource,
    ReloadRefused,
    listener_changes,
    read_again,
    restart_notes,
)
from gateway.runtime import Runtime
from gateway.spool import SpoolDirError, check_spool_dir, sweep_spool_dir
from gateway.workers import (
    DEFAULT_BACKLOG,
    InheritedSocket,
    ListenSpec,
    endpoint_options,
    listen_spec,
)
from gateway.tlsreload import Certificates, install_sighup

if TYPE_CHECKING:
    from gateway.config import Config, ListenerConfig
    from gateway.upstream import Reactor

log = Logger()



def freeze_startup_heap() -> None:
    """Move everything alive at start into the collector's permanent generation.

    A full (generation 2) collection walks every tracked object: with the ~60 000
    objects of a started gateway (modules, configuration, TLS contexts) each one
    took 17-24 ms and ran about twice a second under load, and those pauses were
    the p99 latency. Frozen objects are still freed by reference counting; the
    collector just stops walking them, and a full collection drops to ~1 ms
    (p99 at 1 KiB x 50 connections went from 21 ms to 5 ms).
    """
    gc.collect()
    freeze_heap()


def prepare_spool_dir(directory: str) -> None:
    """Create the spool directory and sweep what a crashed process left there.

    A directory that can't be used is logged, not fatal: spools that can't
    spill to disk make their responses stream with backpressure instead.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        swept = sweep_spool_dir(directory)
        check_spool_dir(directory)
    except (OSError, SpoolDirError) as exc:
        log.warn("spool directory {dir} unusable, spooling to memory only: {error}",
                 dir=directory, error=exc)
        return
    if swept:
        log.info("swept {n} stale spool files from {dir}", n=swept, dir=directory)


def listen_service(reactor: Any, bind: str, factory: object) -> StreamServerEndpointService:
    """A service that listens on the endpoint string ``bind`` with ``factory`` when started.

    ``reactor`` is what the endpoint calls to listen: the reactor, or an
    :class:`~gateway.adoption.InheritedPort` in a worker.
    """
    if listen_spec(bind) is not None and "backlog" not in endpoint_options(bind):
        # Twisted's default backlog of 50 overflows under load (the bench saw
        # hundreds of dropped SYNs at 500 connections); nginx uses 511.
        bind = f"{bind}:backlog={DEFAULT_BACKLOG}"
    endpoint = serverFromString(reactor, bind)
    child = StreamServerEndpointService(endpoint, factory)
    # Fail the start when a port can't be bound, like strports does.
    child._raiseSynchronously = True
    return child


class _Listening:
    """One open listener: its factory and the service listening with it."""

    def __init__(self, factory: GatewayFactory, service: StreamServerEndpointService) -> None:
        self.factory = factory
        self.service = service


class GatewayService(MultiService):
    """Owns the live :class:`Runtime` and every listening port.

    ``sockets`` (listener name -> inherited socket) makes this a worker's
    service: listeners adopt those sockets, and demo origins are not run.
    ``source`` is where SIGHUP reads the configuration again
    (:mod:`gateway.reload`); without one (a worker, whose configuration is
    the supervisor's), SIGHUP reloads certificates only.  ``bind`` binds the
    socket of a listener a reload opens (:func:`gateway.binding.bind_socket`).
    """

    def __init__(self, reactor: Reactor, config: Config,
                 sockets: Mapping[str, InheritedSocket] | None = None,
                 source: ConfigSource | None = None,
                 bind: Callable[[ListenSpec, bool], socket.socket] = bind_socket) -> None:
        super().__init__()
        self.reactor = reactor
        self._runtime = Runtime(reactor, config)
        self._sockets = sockets
        self._source = source
        self._bind = bind
        #: Every listener's factory whose connections a stop waits for:
        #: the open listeners', and those of listeners a reload closed while
        #: they still have connections.
        self.factories: list[GatewayFactory] = []
        self._listening: dict[str, _Listening] = {}
        self.certificates = Certificates(reactor, config)
        self._restore_sighup: Callable[[], None] | None = None
        if sockets is None:
            for demo in config.demos:
                listen_service(reactor, demo.bind, demo_site(demo.name)).setServiceParent(self)
        for listener in config.listeners:
            self._open(listener, self._inherited(listener.name))

    def _inherited(self, name: str) -> Any:
        """What a listener's endpoint listens through: the reactor, or its inherited socket."""
        if self._sockets is None:
            return self.reactor
        if name not in self._sockets:
            raise ValueError(f"listener {name}: no socket inherited from the supervisor")
        return InheritedPort(self.reactor, self._sockets[name])  # type: ignore[arg-type]

    def _open(self, listener: ListenerConfig, via: Any) -> None:
        """Listen for ``listener`` through ``via`` (started at once when the service runs).

        Raises ConfigError when its TLS material can't be loaded: contexts are
        built here from the checked files, and a file that changed since the
        check refuses the start.
        """
        secure = listener.tls or listener.bind.startswith("ssl:")
        proto = b"https" if secure else b"http"
        factory = GatewayFactory(self.reactor, self.runtime, listener.name, proto)
        served = self.certificates.wrap(listener, factory) if listener.tls else factory
        service = listen_service(via, listener.bind, served)
        service.setServiceParent(self)
        self.factories.append(factory)
        self._listening[listener.name] = _Listening(factory, service)

    def _close(self, name: str, runtime: Runtime) -> None:
        """Stop listening for ``name``; its connections finish their request on ``runtime``.

        They close when idle (``stop_accepting``), and until then they read
        the configuration they were accepted under: the new one has no such
        listener.
        """
        listening = self._listening.pop(name)
        listening.factory.runtime = lambda: runtime
        listening.factory.stop_accepting()
        stopped = self.removeService(listening.service)
        if stopped is not None:
            stopped.addErrback(lambda f: log.failure("listener {name}: closing failed", f, name=name))

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._runtime.config

    def runtime(self) -> Runtime:
        """The live runtime; request handling calls this at each request."""
        return self._runtime

    def privilegedStartService(self) -> None:
        """Prepare the spool directory, then bind the ports (twistd does this first).

        The directory is ready before the first connection can be accepted, and
        its start-up check file is gone before anyone can look.
        """
        prepare_spool_dir(self._runtime.spooling.directory)
        super().privilegedStartService()

    def startService(self) -> None:
        """Listen on every endpoint, start health checks, freeze the start-up heap, catch SIGHUP."""
        super().startService()
        self._runtime.start()
        freeze_startup_heap()
        self.certificates.start()
        # SIGHUP always reloads something (the configuration, or at least the
        # certificates): its default action would end the process.
        self._restore_sighup = install_sighup(self.reactor, self.sighup)

    def sighup(self) -> None:
        """SIGHUP: read the configuration file again and reload it, or only certificates.

        A file with problems, or a listener that can't be opened, changes
        nothing (certificates included); each reason is logged.
        """
        source = self._source
        if source is None or source.path is None:
            why = ("this worker runs the supervisor's configuration (send SIGHUP to the "
                   "supervisor to reload it)" if self._sockets is not None
                   else "started with --listen/--upstream, there is no configuration file")
            log.info("SIGHUP: {why}; reloading TLS certificates only", why=why)
            self.reload_certificates()
            return
        config = read_again(source)
        if config is None:
            return
        try:
            self.reload(config, "SIGHUP")
        except ReloadRefused as exc:
            log.error("reload refused: {why}; the configuration in use stays in force", why=exc)
            return
        log.info(
            "reload: applied {path} ({listeners} listeners, {routes} routes, "
            "{backends} backends)",
            path=source.path, listeners=len(config.listeners), routes=len(config.routes),
            backends=len(config.backends),
        )

    def reload_certificates(self) -> None:
        """Read every TLS file again; what fails keeps what it had (logged)."""
        self.certificates.reload("SIGHUP")

    def reload(self, config: Config, reason: str = "configuration reload") -> None:
        """Swap in ``config`` whole: runtime, certificates, and listeners opened or closed.

        The sockets of new listeners and of listeners whose ``bind`` changed
        are bound first; when one can't be, :class:`ReloadRefused` is raised
        and nothing has changed.  Then the runtime is swapped (connections
        see it at their next request), certificates reload for the new
        configuration, removed and rebound listeners stop listening (their
        connections drain), and the new sockets start accepting.  What only
        a restart can change is logged (:func:`gateway.reload.restart_notes`).
        ``reason`` names the reload in the certificates' log lines.
        """
        old_config = self.config
        changes = listener_changes(old_config, config)
        bound = self._bind_ahead(config, changes.opened) if self.running else {}
        source = self._source or ConfigSource(None)
        for note in restart_notes(old_config, config, source, in_place=True):
            log.warn("reload: {note}", note=note)
        old, self._runtime = self._runtime, Runtime(self.reactor, config, self._runtime)
        old.retire(self._runtime)
        self.certificates.configure(config, reason)
        for name in changes.removed + changes.rebound:
            self._close(name, old)
        for listener in config.listeners:
            if listener.name not in changes.opened:
                continue
            sock = bound.get(listener.name)
            fd = -1 if sock is None else sock.detach()
            via = self.reactor if sock is None else InheritedPort(
                self.reactor, InheritedSocket(fd, sock.family)  # type: ignore[arg-type]
            )
            try:
                self._open(listener, via)
            except ConfigError as exc:
                # A TLS file changed between the check and now; the socket
                # bound for it was never adopted, so it is closed here.
                if fd >= 0:
                    os.close(fd)
                log.error("reload: listener {name} not opened: {why}", name=listener.name, why=exc)
        self.factories = [
            f for f in self.factories
            if f.connections or any(f is lst.factory for lst in self._listening.values())
        ]
        for name in changes.removed:
            log.info("reload: listener {name} closed", name=name)
        if self.running:
            self._runtime.start()

    def _bind_ahead(self, config: Config, names: tuple[str, ...]) -> dict[str, socket.socket]:
        """Bind the sockets of the listeners ``names`` of ``config``; all, or none and ReloadRefused."""
        bound: dict[str, socket.socket] = {}
        try:
            for listener in config.listeners:
                if listener.name not in names:
                    continue
                spec = listen_spec(listener.bind)
                if spec is None:
                    raise ReloadRefused(
                        f"[listener:{listener.name}] bind: {listener.bind!r} can only be "
                        "opened at start; restart to apply it"
                    )
                bound[listener.name] = self._bind(spec, False)
                log.info("reload: listener {name} opening on {bind}",
                         name=listener.name, bind=listener.bind)
        except CannotListenError as exc:
            for sock in bound.values():
                sock.close()
            raise ReloadRefused(f"a new listener can't listen: {exc}") from exc
        except ReloadRefused:
            for sock in bound.values():
                sock.close()
            raise
        return bound

    def stopService(self) -> Deferred[None]:
        """Stop listening, drain in-flight requests, then close upstream pools."""
        stopped = super().stopService()
        self.certificates.stop()
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        for factory in self.factories:
            factory.stop_accepting()
        drained: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.config.gateway.shutdown_grace

        def poll() -> None:
            busy = [c for f in self.factories for c in f.connections]
            if busy and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.05, poll)
                return
            for conn in busy:
                conn.transport.abortConnection()
            self._runtime.retire(None)
            drained.callback(None)

        poll()
        both = DeferredList([stopped, drained], consumeErrors=True)
        return both.addCallback(lambda _: None)
