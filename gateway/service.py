"""The gateway's service tree: listeners, demo origins, and an ordered stop.

Startup listens on every ``[listener:*]`` and ``[demo:*]`` endpoint (bind errors
fail the start). A listener is one of three kinds: proxying over plain TCP,
proxying behind TLS (``tls = true``: :mod:`gateway.tls`, its certificates kept
by :class:`gateway.tlsreload.Certificates` and reloaded on SIGHUP), or
redirecting to HTTPS (``redirect_https = true``: the front end answers every
request with :mod:`gateway.redirect`'s redirect).

In a worker of a multi-process gateway (:mod:`gateway.supervisor`) the same
service is built with the ``sockets`` the supervisor bound: each listener's
endpoint then adopts its inherited socket (:class:`gateway.adoption.InheritedPort`)
instead of binding, TLS wrapping included, demo origins are left to the
supervisor, and SIGHUP is always caught (the supervisor forwards it).
Stop closes the listening ports, lets in-flight exchanges finish
for up to ``shutdown_grace`` seconds, closes what remains, then drops idle
upstream connections.
"""

from __future__ import annotations

import gc
import os

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway.adoption import InheritedPort
from gateway.compat import freeze_heap
from gateway.demo import demo_site
from gateway.frontend import GatewayFactory
from gateway.runtime import Runtime
from gateway.spool import SpoolDirError, check_spool_dir, sweep_spool_dir
from gateway.workers import DEFAULT_BACKLOG, endpoint_options, listen_spec
from gateway.tlsreload import Certificates, install_sighup

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.upstream import Reactor
    from gateway.workers import InheritedSocket

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


class GatewayService(MultiService):
    """Owns the live :class:`Runtime` and every listening port.

    ``sockets`` (listener name -> inherited socket) makes this a worker's
    service: listeners adopt those sockets, and demo origins are not run.
    """

    def __init__(self, reactor: Reactor, config: Config,
                 sockets: Mapping[str, InheritedSocket] | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self._runtime = Runtime(reactor, config)
        self._sockets = sockets
        self.factories: list[GatewayFactory] = []
        self.certificates = Certificates(reactor, config)
        self._restore_sighup: Callable[[], None] | None = None
        if sockets is None:
            for demo in config.demos:
                self._listen(demo.bind, demo_site(demo.name))
        for listener in config.listeners:
            secure = listener.tls or listener.bind.startswith("ssl:")
            proto = b"https" if secure else b"http"
            factory = GatewayFactory(reactor, self.runtime, listener.name, proto)
            self.factories.append(factory)
            if listener.tls:
                # Contexts are built here from the checked files; a file that
                # changed since the check refuses the start (ConfigError).
                wrapped = self.certificates.wrap(listener, factory)
                self._listen(listener.bind, wrapped, listener.name)
            else:
                self._listen(listener.bind, factory, listener.name)

    def _listen(self, bind: str, factory: object, name: str = "") -> None:
        reactor: Any = self.reactor
        if self._sockets is not None:
            if name not in self._sockets:
                raise ValueError(f"listener {name}: no socket inherited from the supervisor")
            reactor = InheritedPort(self.reactor, self._sockets[name])  # type: ignore[arg-type]
        listen_service(reactor, bind, factory).setServiceParent(self)

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
        """Listen on every endpoint, start health checks, freeze the start-up heap."""
        super().startService()
        self._runtime.start()
        freeze_startup_heap()
        self.certificates.start()
        # A worker always catches SIGHUP: the supervisor forwards every one,
        # and the default action would kill it.
        if self.certificates.in_use or self._sockets is not None:
            self._restore_sighup = install_sighup(self.reactor, self.reload_certificates)

    def reload_certificates(self) -> None:
        """SIGHUP: read every TLS file again; what fails keeps what it had (logged)."""
        self.certificates.reload("SIGHUP")

    def reload(self, config: Config) -> None:
        """Swap in a new configuration whole (listener binds need a restart)."""
        old, self._runtime = self._runtime, Runtime(self.reactor, config, self._runtime)
        old.retire(self._runtime)
        self.certificates.configure(config)
        if self.running:
            self._runtime.start()

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
