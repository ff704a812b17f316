"""gateway.fastwrite over a real loopback TCP connection.

The send-now path reads Twisted's transport internals, so it is checked on a
real ``tcp.Connection``: bytes arrive complete and in order whether the kernel
takes a write whole, in part (a large write fills the socket buffer), or not
at all (later writes queue behind earlier ones).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from gateway.fastwrite import writer_for

BIG = bytes(range(256)) * 32768  # 8 MiB: more than any socket buffer takes at once


class _Sender(Protocol):
    """Writes a fixed script of pieces with the fast writer, then closes."""

    def connectionMade(self) -> None:
        write, write_sequence = writer_for(self.transport)
        write(b"head;")
        write(BIG)
        write_sequence([b"one;", b"two;", b"three;"])
        write(b"tail")
        self.transport.loseConnection()


class _Collector(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object) -> None:
        self.done.callback(b"".join(self.received))


class FastWriteTests(TestCase):
    """Immediate sends keep every byte and the order of writes."""

    def test_order_and_completeness(self) -> None:
        """Small, huge and vectored writes arrive whole and in order."""
        port = reactor.listenTCP(0, Factory.forProtocol(_Sender), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        collector = _Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connectProtocol(endpoint, collector)

        def check(data: bytes) -> None:
            self.assertEqual(data, b"head;" + BIG + b"one;two;three;tail")

        return collector.done.addCallback(check)

    def test_nodelay_set(self) -> None:
        """writer_for turns on TCP_NODELAY (no Nagle stalls between head and body)."""
        import socket

        seen: Deferred[int] = Deferred()

        class _Probe(Protocol):
            def connectionMade(self) -> None:
                writer_for(self.transport)
                sock = self.transport.getHandle()
                seen.callback(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(_Probe), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        collector = _Collector()
        connectProtocol(endpoint, collector)
        return seen.addCallback(lambda flag: self.assertTrue(flag)).addCallback(
            lambda _: collector.done
        )
