"""An in-memory harness for driving the gateway without sockets or real time.

Like ``treq.testing``: a :class:`Harness` owns a ``MemoryReactorClock``, a
runtime built from a Config, and a listener factory. ``client()`` connects a
client over a ``StringTransport``; ``upstream()`` completes the next outgoing
connect the gateway asked the reactor for, so a test plays the origin server by
writing bytes into it. Time moves only with ``harness.clock.advance()``.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.config import BackendConfig, Config, ListenerConfig, RouteConfig, ServerConfig
from gateway.frontend import ClientConnection, GatewayFactory
from gateway.runtime import Runtime
from gateway.upstream import UpstreamConnection


def simple_config(
    servers: int = 2,
    listener: dict[str, object] | None = None,
    backend: dict[str, object] | None = None,
    route: dict[str, object] | None = None,
    **gateway: object,
) -> Config:
    """One listener ``web``, one route to backend ``app`` with ``servers`` servers."""
    server_configs = tuple(
        ServerConfig(f"s{i}", "app", "http", "127.0.0.1", 9000 + i) for i in range(1, servers + 1)
    )
    base = Config(
        source="<test>",
        listeners=(ListenerConfig("web", "tcp:0", **(listener or {})),),  # type: ignore[arg-type]
        routes=(RouteConfig("all", "app", **(route or {})),),  # type: ignore[arg-type]
        backends=(BackendConfig("app", server_configs, **(backend or {})),),  # type: ignore[arg-type]
    )
    if gateway:
        base = replace(base, gateway=replace(base.gateway, **gateway))  # type: ignore[arg-type]
    return base


class Peer:
    """One end the test plays: a protocol on a StringTransport."""

    def __init__(self, protocol: ClientConnection | UpstreamConnection, transport: StringTransport):
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        """Deliver ``data`` to the gateway as if it came over the wire."""
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """Everything the gateway wrote to this peer so far, and forget it."""
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closed(self) -> bool:
        """True once the gateway asked to close (gracefully or not)."""
        return self.transport.disconnecting or self.transport.disconnected

    def lose(self) -> None:
        """The peer drops the connection."""
        self.protocol.connectionLost(Failure(ConnectionRefusedError()))


class Harness:
    """A gateway listener on a memory reactor, with clients and upstreams played by tests."""

    def __init__(self, config: Config | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.config = config or simple_config()
        self.runtime = Runtime(self.clock, self.config)
        self.runtime.start()
        name = self.config.listeners[0].name
        self.factory = GatewayFactory(self.clock, lambda: self.runtime, name)
        self._connects = 0

    def client(self, host: str = "192.0.2.10", port: int = 50000) -> Peer:
        """A new client connection to the listener."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None, "listener refused the connection"
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def pending_connects(self) -> int:
        """How many upstream connects the gateway asked for and nobody answered yet."""
        return len(self.clock.tcpClients) - self._connects

    def upstream(self) -> Peer:
        """Complete the oldest pending upstream connect; the test is now the origin."""
        host, port, factory, _timeout, _bind = self.clock.tcpClients[self._connects]
        self._connects += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def refuse(self) -> None:
        """Fail the oldest pending upstream connect with ECONNREFUSED."""
        _host, _port, factory, _timeout, _bind = self.clock.tcpClients[self._connects]
        self._connects += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
