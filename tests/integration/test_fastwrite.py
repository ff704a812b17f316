"""gateway.fastwrite over a real loopback TCP connection.

The send-now path reads Twisted's transport internals, so it is checked on a
real ``tcp.Connection``: bytes arrive complete and in order whether the kernel
takes a write whole, in part (a large write fills the socket buffer), or not
at all (later writes queue behind earlier ones).
"""

from __future__ import annotations

import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from gateway.fastwrite import file_sender_for, writer_for

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


class _FileSender(Protocol):
    """Sends a head, then a file with ``send_file`` and the rest (if any) with write.

    With ``queued_first`` a huge write goes first, so the transport has a
    queue and ``send_file`` must send nothing; ``sent`` records what it took.
    """

    def __init__(self, queued_first: bool) -> None:
        self.queued_first = queued_first
        self.sent: list[int] = []

    def connectionMade(self) -> None:
        write, _ = writer_for(self.transport)
        send_file = file_sender_for(self.transport)
        write(BIG if self.queued_first else b"head;")
        with tempfile.TemporaryFile() as file:
            file.write(b"skip" + BIG)
            file.flush()
            sent = send_file(file.fileno(), 4, len(BIG))
            self.sent.append(sent)
            file.seek(4 + sent)
            write(file.read())
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

    def file_sent(self, queued_first: bool) -> Deferred[tuple[bytes, int]]:
        sender = _FileSender(queued_first)
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: sender), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        collector = _Collector()
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), collector)
        return collector.done.addCallback(lambda data: (data, sender.sent[0]))

    def test_file_sent_then_rest(self) -> None:
        """sendfile takes what the socket takes now (not all of 8 MiB); the rest written after keeps order."""

        def check(result: tuple[bytes, int]) -> None:
            data, sent = result
            self.assertEqual(data, b"head;" + BIG + b"tail")
            self.assertGreater(sent, 0)
            self.assertLess(sent, len(BIG))

        return self.file_sent(False).addCallback(check)

    def test_file_not_sent_behind_a_queue(self) -> None:
        """With bytes already queued on the transport, send_file sends nothing (order would break)."""

        def check(result: tuple[bytes, int]) -> None:
            data, sent = result
            self.assertEqual(sent, 0)
            self.assertEqual(data, BIG + BIG + b"tail")

        return self.file_sent(True).addCallback(check)

    def test_no_file_sender_off_the_socket(self) -> None:
        """A transport whose bytes are not the socket's (here a test transport) gets no sendfile."""
        from twisted.internet.testing import StringTransport

        self.assertIsNone(file_sender_for(StringTransport()))
