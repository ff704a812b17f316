"""The gateway's service tree: listeners, demo origins, and an ordered stop.

Startup listens on every ``[listener:*]`` and ``[demo:*]`` endpoint (bind errors
fail the start). Stop closes the listening ports, lets in-flight exchanges finish
for up to ``shutdown_grace`` seconds, closes what remains, then drops idle
upstream connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway.demo import demo_site
from gateway.frontend import GatewayFactory
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.upstream import Reactor

log = Logger()

SHUTDOWN_GRACE = 10.0


class GatewayService(MultiService):
    """Owns the live :class:`Runtime` and every listening port."""

    def __init__(self, reactor: Reactor, config: Config) -> None:
        super().__init__()
        self.reactor = reactor
        self._runtime = Runtime(reactor, config)
        self.factories: list[GatewayFactory] = []
        for demo in config.demos:
            self._listen(demo.bind, demo_site(demo.name))
        for listener in config.listeners:
            proto = b"https" if listener.bind.startswith("ssl:") else b"http"
            factory = GatewayFactory(reactor, self.runtime, listener.name, proto)
            self.factories.append(factory)
            self._listen(listener.bind, factory)

    def _listen(self, bind: str, factory: object) -> None:
        endpoint = serverFromString(self.reactor, bind)
        child = StreamServerEndpointService(endpoint, factory)
        # Fail the start when a port can't be bound, like strports does.
        child._raiseSynchronously = True
        child.setServiceParent(self)

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._runtime.config

    def runtime(self) -> Runtime:
        """The live runtime; request handling calls this at each request."""
        return self._runtime

    def startService(self) -> None:
        """Listen on every endpoint, then start health checks."""
        super().startService()
        self._runtime.start()

    def reload(self, config: Config) -> None:
        """Swap in a new configuration whole (listener binds need a restart)."""
        old, self._runtime = self._runtime, Runtime(self.reactor, config, self._runtime)
        old.retire(self._runtime)
        if self.running:
            self._runtime.start()

    def stopService(self) -> Deferred[None]:
        """Stop listening, drain in-flight requests, then close upstream pools."""
        stopped = super().stopService()
        for factory in self.factories:
            factory.stop_accepting()
        drained: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + SHUTDOWN_GRACE

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
