"""GatewayService start-up: what starting does to the process beyond listening."""

from __future__ import annotations

import gc
import unittest

from twisted.trial.unittest import SynchronousTestCase

#: CPython's gc.freeze; PyPy has none (gateway.compat.freeze_heap).
_FREEZES = hasattr(gc, "freeze")
_unfreeze = getattr(gc, "unfreeze", lambda: None)


class HeapTests(SynchronousTestCase):
    """Starting the service freezes the startup heap out of full collections."""

    @unittest.skipUnless(_FREEZES, "gc.freeze is CPython's")
    def test_start_freezes_heap(self) -> None:
        """After startService, the collector's permanent generation holds the startup objects."""
        from twisted.internet.testing import MemoryReactorClock

        from gateway.service import GatewayService
        from gateway.testing import simple_config

        gc.unfreeze()
        self.addCleanup(gc.unfreeze)
        service = GatewayService(MemoryReactorClock(), simple_config())
        service.startService()
        self.addCleanup(service.stopService)
        self.assertGreater(gc.get_freeze_count(), 1000)


class ShutdownTests(SynchronousTestCase):
    """``shutdown_grace`` bounds how long a stop waits for requests in flight."""

    def busy_service(self, grace: float) -> tuple[object, object, object]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from gateway.service import GatewayService
        from gateway.testing import simple_config

        clock = MemoryReactorClock()
        service = GatewayService(clock, simple_config(shutdown_grace=grace))
        service.startService()
        self.addCleanup(_unfreeze)
        factory = service.factories[0]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # waits for an upstream
        return clock, service, transport

    def test_request_in_flight_kept_within_grace(self) -> None:
        """Just before shutdown_grace, a busy connection is still open."""
        clock, service, transport = self.busy_service(2.0)
        service.stopService()
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)

    def test_request_cut_after_grace(self) -> None:
        """Once shutdown_grace has passed, what is still busy is cut and the stop ends."""
        clock, service, transport = self.busy_service(2.0)
        stopped = service.stopService()
        for _ in range(50):
            clock.advance(0.05)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.successResultOf(stopped)


class StopAcceptingTests(SynchronousTestCase):
    """At shutdown, idle keep-alive connections close; new ones get timeout_header first."""

    def connect(self, header_timeout: float) -> tuple[object, object, object]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from gateway.service import GatewayService
        from gateway.testing import simple_config

        clock = MemoryReactorClock()
        config = simple_config(listener={"timeout_header": header_timeout})
        service = GatewayService(clock, config)
        factory = service.factories[0]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return clock, factory, (protocol, transport)

    def test_new_connection_kept_for_its_first_request(self) -> None:
        """A connection that sent nothing yet stays open just under timeout_header."""
        clock, factory, (_protocol, transport) = self.connect(2.0)
        factory.stop_accepting()
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_first_request_answered_then_closed(self) -> None:
        """A request arriving after stop_accepting on a new connection starts its exchange."""
        clock, factory, (protocol, transport) = self.connect(2.0)
        factory.stop_accepting()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(protocol.requests, 1)
        self.assertEqual(len(clock.tcpClients), 1)  # forwarded upstream
        self.assertFalse(transport.disconnecting)

    def test_idle_keep_alive_closed_at_once(self) -> None:
        """A connection idle after an answered request closes at stop_accepting."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        clock, factory, (protocol, transport) = self.connect(2.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        host, port, upstream_factory, _, _ = clock.tcpClients[-1]
        upstream = upstream_factory.buildProtocol(IPv4Address("TCP", host, port))
        upstream.makeConnection(StringTransport())
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(transport.disconnecting)
        factory.stop_accepting()
        self.assertTrue(transport.disconnecting)
