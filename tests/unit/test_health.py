"""Tests for gateway.health and gateway.probe: checks, ejection, slow start, logging.

No sockets and no real time: the reactor is a ``MemoryReactorClock``. A test
plays each server by completing the connect the monitor asked for (the
factory recorded in ``clock.tcpClients``) over a ``StringTransport``, or by
failing it; time moves only with ``clock.advance()``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.balancer import ServerState
from gateway.config import BackendConfig, ServerConfig
from gateway.health import (
    HealthMonitor,
    Hysteresis,
    cooldown,
    eject_limit,
    ramp_steps,
    ramp_weight,
)
from gateway.probe import MAX_BODY, Probe, ProbeResult, check_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _state_ready() -> bool:
    """Whether balancer.ServerState already has settable ``ejected`` and ``weight``."""
    state = ServerState(ServerConfig("x", "app", "http", "h", 1))
    try:
        state.ejected = False  # type: ignore[attr-defined]
        state.weight = 1  # type: ignore[misc]
    except AttributeError:
        return False
    return True


class _StandInState:
    """ServerState's health fields, for as long as balancer.py lacks them."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.inflight = 0
        self.up = True
        self.ejected = False
        self.weight = config.weight


def make_state(config: ServerConfig) -> Any:
    return ServerState(config) if _state_ready() else _StandInState(config)


class Selector:
    """Counts ``update()`` calls, the only thing the monitor asks of a selector."""

    def __init__(self) -> None:
        self.updates = 0

    def update(self) -> None:
        self.updates += 1


class Server:
    """One server connection the test completed: the test writes as the server."""

    def __init__(self, protocol: Protocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Fixture:
    """A monitor over servers s1..sN (host 10.0.0.i), with a log and a selector."""

    def __init__(self, servers: int = 1, weights: tuple[int, ...] = (), **backend: Any) -> None:
        self.clock = MemoryReactorClock()
        configs = tuple(
            ServerConfig(f"s{i}", "app", "http", f"10.0.0.{i}", 8000, weight=(weights or (1,) * servers)[i - 1])
            for i in range(1, servers + 1)
        )
        settings: dict[str, Any] = {"check": "tcp", "check_interval": 2.0, "check_timeout": 1.0}
        settings.update(backend)
        self.backend = BackendConfig("app", configs, **settings)
        self.states = [make_state(c) for c in configs]
        self.selector = Selector()
        self.events: list[dict[str, Any]] = []
        self.monitor = HealthMonitor(
            self.clock, self.backend, self.states, self.selector, log=Logger(observer=self.events.append)
        )
        self._taken: set[int] = set()

    def state(self, name: str) -> Any:
        return next(s for s in self.states if s.config.name == name)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def pending(self, name: str) -> list[int]:
        host = f"10.0.0.{name[1:]}"
        return [
            i
            for i, (h, _port, _factory, _timeout, _bind) in enumerate(self.clock.tcpClients)
            if h == host and i not in self._taken
        ]

    def _take(self, name: str) -> tuple[str, int, Any]:
        pending = self.pending(name)
        assert pending, f"no pending connect to {name}"
        index = pending[0]
        self._taken.add(index)
        host, port, factory, _timeout, _bind = self.clock.tcpClients[index]
        return host, port, factory

    def accept(self, name: str) -> Server:
        host, port, factory = self._take(name)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return Server(protocol, transport)

    def refuse(self, name: str) -> None:
        _host, _port, factory = self._take(name)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def fail_checks(self, name: str, count: int) -> None:
        """``count`` checks of ``name`` refused, one per interval."""
        for _ in range(count):
            self.refuse(name)
            self.clock.advance(self.backend.check_interval)

    def pass_checks(self, name: str, count: int) -> None:
        for _ in range(count):
            self.accept(name)
            self.clock.advance(self.backend.check_interval)


# -- pure decisions ------------------------------------------------------------------


class HysteresisTests(SynchronousTestCase):
    def test_down_after_exactly_fall(self) -> None:
        """An up verdict survives fall-1 failures and flips on the fall-th."""
        h = Hysteresis(up=True)
        self.assertEqual([h.record(False, 2, 3) for _ in range(3)], [False, False, True])
        self.assertFalse(h.up)

    def test_up_after_exactly_rise(self) -> None:
        """A down verdict flips on the rise-th success in a row."""
        h = Hysteresis(up=False)
        self.assertEqual([h.record(True, 2, 3) for _ in range(2)], [False, True])
        self.assertTrue(h.up)

    def test_agreeing_result_resets_streak(self) -> None:
        """A success between failures starts the fall count over."""
        h = Hysteresis(up=True)
        for ok in (False, False, True, False, False):
            self.assertFalse(h.record(ok, 2, 3))
        self.assertTrue(h.record(False, 2, 3))


class EjectLimitTests(SynchronousTestCase):
    def test_floor_of_share(self) -> None:
        """The limit is floor(share * servers)."""
        self.assertEqual(eject_limit(0.5, 4), 2)
        self.assertEqual(eject_limit(0.5, 5), 2)
        self.assertEqual(eject_limit(0.3, 10), 3)

    def test_at_least_one_of_two_or_more(self) -> None:
        """A positive share lets one of two or more servers go even if it rounds to 0."""
        self.assertEqual(eject_limit(0.1, 2), 1)
        self.assertEqual(eject_limit(0.2, 3), 1)

    def test_lone_server_stays_unless_share_is_one(self) -> None:
        """One server is never ejected below share 1; share 0 ejects none."""
        self.assertEqual(eject_limit(0.5, 1), 0)
        self.assertEqual(eject_limit(1.0, 1), 1)
        self.assertEqual(eject_limit(0.0, 5), 0)


class CooldownTests(SynchronousTestCase):
    def test_doubles_then_caps(self) -> None:
        """eject_time * 2**(k-1), capped at eject_time_max."""
        self.assertEqual([cooldown(30, 300, k) for k in range(1, 7)], [30, 60, 120, 240, 300, 300])

    def test_huge_count_does_not_overflow(self) -> None:
        """A server ejected thousands of times still gets the cap."""
        self.assertEqual(cooldown(30, 300, 5000), 300)


class RampTests(SynchronousTestCase):
    def test_steps(self) -> None:
        """At least 10 steps, at most one second apart."""
        self.assertEqual(ramp_steps(2), 10)
        self.assertEqual(ramp_steps(10), 10)
        self.assertEqual(ramp_steps(30), 30)
        self.assertEqual(ramp_steps(10.5), 11)

    def test_weights(self) -> None:
        """Linear from max(1, full // 10) to full, in integers."""
        self.assertEqual([ramp_weight(100, s, 10) for s in range(11)], [10, 19, 28, 37, 46, 55, 64, 73, 82, 91, 100])
        self.assertEqual([ramp_weight(10, s, 10) for s in range(11)], [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        self.assertEqual(ramp_weight(3, 0, 10), 1)


# -- probes ------------------------------------------------------------------------------


class ProbeFixture:
    """One probe of server s1 (10.0.0.1:8000) and the results it gave."""

    def __init__(self, request: bytes | None = b"GET / HTTP/1.1\r\n\r\n", **options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.results: list[ProbeResult] = []
        self.config = ServerConfig("s1", "app", "http", "10.0.0.1", 8000)
        self.probe = Probe(self.clock, self.config, 1.0, self.results.append, request=request, **options)
        self.probe.start()

    def accept(self) -> Server:
        host, port, factory, _timeout, _bind = self.clock.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return Server(protocol, transport)


class CheckRequestTests(SynchronousTestCase):
    def test_request_bytes(self) -> None:
        """METHOD PATH, Host, Connection: close and the User-Agent, nothing else."""
        backend = BackendConfig("app", check="http", check_method="HEAD", check_path="/healthz", check_host="app.internal")
        server = ServerConfig("s1", "app", "http", "10.0.0.1", 8000)
        self.assertEqual(
            check_request(backend, server),
            b"HEAD /healthz HTTP/1.1\r\nHost: app.internal\r\nConnection: close\r\n"
            b"User-Agent: gateway-health\r\n\r\n",
        )

    def test_host_defaults(self) -> None:
        """Without check_host: the backend's host_header, else the server's host:port."""
        server = ServerConfig("s1", "app", "http", "10.0.0.1", 8000)
        self.assertIn(b"Host: 10.0.0.1:8000\r\n", check_request(BackendConfig("app"), server))
        self.assertIn(b"Host: a.b\r\n", check_request(BackendConfig("app", host_header="a.b"), server))
        on80 = ServerConfig("s1", "app", "http", "::1", 80)
        self.assertIn(b"Host: [::1]\r\n", check_request(BackendConfig("app"), on80))

    def test_path_is_encoded(self) -> None:
        """A path with spaces or non-ASCII can't break the request line."""
        backend = BackendConfig("app", check_path="/a b/é")
        server = ServerConfig("s1", "app", "http", "h", 80)
        self.assertTrue(check_request(backend, server).startswith(b"GET /a%20b/%C3%A9 HTTP/1.1\r\n"))


class ProbeTests(SynchronousTestCase):
    def test_tcp_connect_passes(self) -> None:
        """A TCP check passes on connect and closes the connection gracefully."""
        f = ProbeFixture(request=None)
        server = f.accept()
        self.assertEqual(f.results, [ProbeResult(True, "connected")])
        self.assertTrue(server.transport.disconnecting)
        self.assertFalse(server.transport.disconnected)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_tcp_refused_fails(self) -> None:
        """A refused connect fails with that reason."""
        f = ProbeFixture(request=None)
        f.clock.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(f.results, [ProbeResult(False, "connect refused")])

    def test_connect_timeout(self) -> None:
        """A connect that never completes fails after the timeout; connecting stops."""
        f = ProbeFixture(request=None)
        f.clock.advance(0.999)
        self.assertEqual(f.results, [])
        f.clock.advance(0.001)
        self.assertEqual(f.results, [ProbeResult(False, "connect timed out after 1s")])
        self.assertTrue(f.clock.connectors[-1].stoppedConnecting)
        # A late failure from the reactor is ignored.
        f.clock.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(len(f.results), 1)

    def test_connect_timeout_uses_check_timeout(self) -> None:
        """The reactor's connect timeout is check_timeout too."""
        f = ProbeFixture(request=None)
        self.assertEqual(f.clock.tcpClients[-1][3], 1.0)

    def test_response_timeout_aborts(self) -> None:
        """A server that accepts but never answers fails the check at the timeout, aborted."""
        f = ProbeFixture()
        server = f.accept()
        self.assertEqual(server.transport.value(), b"GET / HTTP/1.1\r\n\r\n")
        f.clock.advance(1.0)
        self.assertEqual(f.results, [ProbeResult(False, "no response within 1s")])
        self.assertTrue(server.transport.disconnected)
        server.send(OK)  # too late
        self.assertEqual(len(f.results), 1)

    def test_status_in_range(self) -> None:
        """Both ends of check_status pass."""
        for status in (200, 399):
            f = ProbeFixture(status=(200, 399))
            f.accept().send(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
            self.assertEqual(f.results, [ProbeResult(True, f"status {status}")])

    def test_status_out_of_range(self) -> None:
        """One below and one above check_status fail."""
        for status in (200, 300):
            f = ProbeFixture(status=(201, 299))
            f.accept().send(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
            self.assertEqual(f.results, [ProbeResult(False, f"status {status} outside 201-299")])

    def test_interim_response_skipped(self) -> None:
        """A 100 Continue before the final head is skipped."""
        f = ProbeFixture()
        f.accept().send(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        self.assertEqual(f.results, [ProbeResult(True, "status 200")])

    def test_head_in_pieces(self) -> None:
        """A head split over reads is judged once complete."""
        f = ProbeFixture()
        server = f.accept()
        server.send(OK[:10])
        self.assertEqual(f.results, [])
        server.send(OK[10:])
        self.assertEqual(f.results, [ProbeResult(True, "status 200")])

    def test_malformed_response(self) -> None:
        """A response that doesn't parse fails the check."""
        f = ProbeFixture()
        f.accept().send(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertFalse(f.results[0].ok)
        self.assertTrue(f.results[0].reason.startswith("malformed response"))

    def test_closed_before_response(self) -> None:
        """A server that hangs up without answering fails the check."""
        f = ProbeFixture()
        f.accept().close()
        self.assertEqual(f.results, [ProbeResult(False, "connection closed before the response")])

    def test_body_not_read_without_check_body(self) -> None:
        """Without check_body the verdict comes with the head."""
        f = ProbeFixture()
        f.accept().send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.assertEqual(f.results, [ProbeResult(True, "status 200")])

    def test_body_substring_found(self) -> None:
        """The check passes when the body holds check_body, even split across reads."""
        f = ProbeFixture(expect=b"healthy")
        server = f.accept()
        server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nall hea")
        self.assertEqual(f.results, [])
        server.send(b"lthy here...")
        self.assertEqual(f.results, [ProbeResult(True, "body has 'healthy'")])

    def test_body_substring_missing(self) -> None:
        """A complete body without check_body fails."""
        f = ProbeFixture(expect=b"healthy")
        f.accept().send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsick")
        self.assertEqual(f.results, [ProbeResult(False, "body lacks 'healthy'")])

    def test_body_status_checked_first(self) -> None:
        """A bad status fails without reading the body."""
        f = ProbeFixture(expect=b"healthy")
        f.accept().send(b"HTTP/1.1 503 X\r\nContent-Length: 7\r\n\r\nhealthy")
        self.assertEqual(f.results, [ProbeResult(False, "status 503 outside 200-399")])

    def test_chunked_body(self) -> None:
        """A chunked body is decoded before the search."""
        f = ProbeFixture(expect=b"ok")
        f.accept().send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n")
        self.assertEqual(f.results, [ProbeResult(True, "body has 'ok'")])

    def test_chunked_body_missing(self) -> None:
        """A chunked body that ends without the substring fails."""
        f = ProbeFixture(expect=b"ok")
        f.accept().send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
        self.assertEqual(f.results, [ProbeResult(False, "body lacks 'ok'")])

    def test_body_until_close(self) -> None:
        """A body framed by close is judged when the server closes."""
        f = ProbeFixture(expect=b"ok")
        server = f.accept()
        server.send(b"HTTP/1.1 200 OK\r\n\r\nnope")
        self.assertEqual(f.results, [])
        server.close()
        self.assertEqual(f.results, [ProbeResult(False, "body lacks 'ok'")])

    def test_body_limit_at_bound(self) -> None:
        """The substring ending exactly at max_body is found."""
        f = ProbeFixture(expect=b"ok", max_body=10)
        f.accept().send(b"HTTP/1.1 200 OK\r\n\r\n12345678ok")
        self.assertEqual(f.results, [ProbeResult(True, "body has 'ok'")])

    def test_body_limit_one_over(self) -> None:
        """The substring one byte past max_body is not looked for; the check fails."""
        f = ProbeFixture(expect=b"ok", max_body=10)
        server = f.accept()
        server.send(b"HTTP/1.1 200 OK\r\n\r\n123456789ok")
        self.assertEqual(f.results, [ProbeResult(False, "no 'ok' in the first 10 body bytes")])
        self.assertTrue(server.transport.disconnected)

    def test_default_body_limit(self) -> None:
        """The default limit is 64 KiB."""
        self.assertEqual(MAX_BODY, 65536)

    def test_abort_reports_nothing(self) -> None:
        """An aborted probe cancels its timer, drops its connection and stays silent."""
        f = ProbeFixture()
        server = f.accept()
        f.probe.abort()
        self.assertTrue(server.transport.disconnected)
        self.assertEqual(f.clock.getDelayedCalls(), [])
        server.send(OK)
        self.assertEqual(f.results, [])


# -- the monitor: active checks ------------------------------------------------------------


class ActiveCheckTests(SynchronousTestCase):
    def test_servers_start_up(self) -> None:
        """Before any check every server is up."""
        f = Fixture(servers=2)
        f.monitor.start()
        self.assertEqual(f.monitor.status(), {"s1": "up", "s2": "up"})

    def test_first_checks_are_staggered(self) -> None:
        """Server i of n is first checked at i * interval / n."""
        f = Fixture(servers=3, check_interval=3.0)
        f.monitor.start()
        f.clock.advance(0)
        self.assertEqual([len(f.pending(n)) for n in ("s1", "s2", "s3")], [1, 0, 0])
        f.clock.advance(1.0)
        self.assertEqual([len(f.pending(n)) for n in ("s1", "s2", "s3")], [1, 1, 0])
        f.clock.advance(1.0)
        self.assertEqual([len(f.pending(n)) for n in ("s1", "s2", "s3")], [1, 1, 1])

    def test_next_check_one_interval_after_start(self) -> None:
        """The next check starts check_interval after the previous one started."""
        f = Fixture()
        f.monitor.start()
        f.clock.advance(0)
        f.clock.advance(0.5)
        f.accept("s1")
        f.clock.advance(1.499)
        self.assertEqual(f.pending("s1"), [])
        f.clock.advance(0.001)
        self.assertEqual(len(f.pending("s1")), 1)

    def test_slow_check_delays_next(self) -> None:
        """A check that outlasts the interval is followed at once, never overlapped."""
        f = Fixture(check_interval=1.0, check_timeout=3.0)
        f.monitor.start()
        f.clock.advance(0)
        f.clock.advance(2.5)
        self.assertEqual(len(f.clock.tcpClients), 1)
        f.refuse("s1")
        f.clock.advance(0)
        self.assertEqual(len(f.pending("s1")), 1)

    def test_down_after_exactly_fall(self) -> None:
        """fall-1 failed checks leave the server up; the fall-th marks it down."""
        f = Fixture(check_fall=3)
        f.monitor.start()
        f.clock.advance(0)
        f.fail_checks("s1", 2)
        self.assertTrue(f.state("s1").up)
        self.assertEqual(f.selector.updates, 0)
        f.refuse("s1")
        self.assertFalse(f.state("s1").up)
        self.assertEqual(f.selector.updates, 1)
        self.assertEqual(f.monitor.status(), {"s1": "down"})

    def test_up_after_exactly_rise(self) -> None:
        """A down server needs rise successes in a row: rise-1 are not enough."""
        f = Fixture(check_fall=1, check_rise=3)
        f.monitor.start()
        f.clock.advance(0)
        f.fail_checks("s1", 1)
        self.assertFalse(f.state("s1").up)
        f.pass_checks("s1", 2)
        self.assertFalse(f.state("s1").up)
        f.accept("s1")
        self.assertTrue(f.state("s1").up)
        self.assertEqual(f.selector.updates, 2)

    def test_http_check_end_to_end(self) -> None:
        """An HTTP check sends the configured request; a bad status counts as a failure."""
        f = Fixture(check="http", check_fall=1, check_path="/health", check_status=(200, 299))
        f.monitor.start()
        f.clock.advance(0)
        server = f.accept("s1")
        self.assertEqual(
            server.transport.value(),
            b"GET /health HTTP/1.1\r\nHost: 10.0.0.1:8000\r\nConnection: close\r\n"
            b"User-Agent: gateway-health\r\n\r\n",
        )
        server.send(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(f.state("s1").up)
        self.assertIn("status 302 outside 200-299", f.lines()[-1])

    def test_http_check_body(self) -> None:
        """check_body from the configuration is looked for in the body."""
        f = Fixture(check="http", check_fall=1, check_body="ready")
        f.monitor.start()
        f.clock.advance(0)
        f.accept("s1").send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnotready")
        self.assertTrue(f.state("s1").up)
        f.clock.advance(2.0)
        f.accept("s1").send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbusy")
        self.assertFalse(f.state("s1").up)

    def test_probe_timeout_counts_as_failure(self) -> None:
        """A server that never answers fails its check at check_timeout."""
        f = Fixture(check="http", check_fall=1)
        f.monitor.start()
        f.clock.advance(0)
        server = f.accept("s1")
        f.clock.advance(1.0)
        self.assertFalse(f.state("s1").up)
        self.assertTrue(server.transport.disconnected)
        self.assertEqual(
            f.lines(), ["backend app server s1 DOWN after 1 failed check: no response within 1s"]
        )

    def test_check_none(self) -> None:
        """check = none connects nowhere, and puts a server found down back up."""
        f = Fixture(check="none")
        f.state("s1").up = False
        f.monitor.start()
        f.clock.advance(10)
        self.assertEqual(f.clock.tcpClients, [])
        self.assertTrue(f.state("s1").up)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_starts_from_current_verdict(self) -> None:
        """A server already down (a previous monitor's verdict) needs rise successes."""
        f = Fixture(check_rise=2)
        f.state("s1").up = False
        f.monitor.start()
        f.clock.advance(0)
        f.pass_checks("s1", 1)
        self.assertFalse(f.state("s1").up)
        f.pass_checks("s1", 1)
        self.assertTrue(f.state("s1").up)


# -- the monitor: passive ejection -------------------------------------------------------


def passive(servers: int = 4, **backend: Any) -> Fixture:
    settings: dict[str, Any] = {"check": "none", "eject_consecutive": 3, "eject_time": 10.0, "eject_time_max": 35.0}
    settings.update(backend)
    f = Fixture(servers=servers, **settings)
    f.monitor.start()
    return f


class PassiveTests(SynchronousTestCase):
    def test_ejected_after_exactly_n(self) -> None:
        """N-1 consecutive failures leave the server in; the N-th ejects it."""
        f = passive()
        s1 = f.state("s1")
        for _ in range(2):
            f.monitor.report(s1, "reset")
        self.assertFalse(s1.ejected)
        f.monitor.report(s1, "status:503")
        self.assertTrue(s1.ejected)
        self.assertEqual(f.selector.updates, 1)
        self.assertEqual(f.monitor.status()["s1"], "ejected")

    def test_success_resets_streak(self) -> None:
        """An ok between failures starts the count over."""
        f = passive()
        s1 = f.state("s1")
        for outcome in ("timeout", "timeout", "ok", "timeout", "timeout"):
            f.monitor.report(s1, outcome)
        self.assertFalse(s1.ejected)

    def test_status_outside_eject_statuses_is_success(self) -> None:
        """A 500 or 404 is not in the default eject_statuses and resets the streak."""
        f = passive()
        s1 = f.state("s1")
        for outcome in ("status:502", "status:504", "status:500", "status:502", "status:404", "connect_failure"):
            f.monitor.report(s1, outcome)
        self.assertFalse(s1.ejected)

    def test_returns_after_cooldown(self) -> None:
        """An ejected server returns after eject_time, logged once."""
        f = passive()
        s1 = f.state("s1")
        for _ in range(3):
            f.monitor.report(s1, "connect_failure")
        f.clock.advance(9.999)
        self.assertTrue(s1.ejected)
        f.clock.advance(0.001)
        self.assertFalse(s1.ejected)
        self.assertEqual(
            f.lines(),
            [
                "backend app server s1 EJECTED for 10s after 3 consecutive failures: connect_failure",
                "backend app server s1 RETURNED after 10s out",
            ],
        )

    def eject(self, f: Fixture, name: str = "s1") -> float:
        """Eject ``name`` and return its cool-down, measured by the clock."""
        state = f.state(name)
        for _ in range(f.backend.eject_consecutive):
            f.monitor.report(state, "reset")
        assert state.ejected
        start = f.clock.seconds()
        while state.ejected:
            f.clock.advance(1.0)
        return f.clock.seconds() - start

    def test_cooldown_grows_and_caps(self) -> None:
        """Repeat ejections double the cool-down up to eject_time_max."""
        f = passive()
        self.assertEqual([self.eject(f) for _ in range(4)], [10, 20, 35, 35])

    def test_cooldown_resets_after_healthy_spell(self) -> None:
        """A server in service for eject_time_max since returning starts over at eject_time."""
        f = passive()
        self.assertEqual([self.eject(f) for _ in range(2)], [10, 20])
        f.clock.advance(34.0)
        self.assertEqual(self.eject(f), 35)  # 34s < 35s: still growing (40, capped)
        f.clock.advance(35.0)
        self.assertEqual(self.eject(f), 10)

    def test_max_share(self) -> None:
        """With share 0.5 of 4, a third bad server stays in until one returns."""
        f = passive(servers=4, eject_max_share=0.5)
        for name in ("s1", "s2"):
            for _ in range(3):
                f.monitor.report(f.state(name), "reset")
        f.clock.advance(5.0)
        s3 = f.state("s3")
        for _ in range(5):
            f.monitor.report(s3, "reset")
        self.assertFalse(s3.ejected)
        withheld = [line for line in f.lines() if "not ejected" in line]
        self.assertEqual(
            withheld,
            [
                "backend app server s3 not ejected after 3 consecutive failures (reset):"
                " 2 of 4 servers already out (eject_max_share 0.5)"
            ],
        )
        f.clock.advance(5.0)  # s1 and s2 return
        f.monitor.report(s3, "reset")
        self.assertTrue(s3.ejected)

    def test_lone_server_never_ejected(self) -> None:
        """A backend of one server keeps it whatever happens (share below 1)."""
        f = passive(servers=1)
        for _ in range(10):
            f.monitor.report(f.state("s1"), "reset")
        self.assertFalse(f.state("s1").ejected)

    def test_disabled(self) -> None:
        """eject_consecutive = 0 turns passive ejection off."""
        f = passive(eject_consecutive=0)
        for _ in range(100):
            f.monitor.report(f.state("s1"), "reset")
        self.assertFalse(f.state("s1").ejected)
        self.assertEqual(f.events, [])

    def test_reports_while_ejected_ignored(self) -> None:
        """Late failures of an ejected server don't extend or stack its ejection."""
        f = passive()
        s1 = f.state("s1")
        for _ in range(10):
            f.monitor.report(s1, "reset")
        self.assertEqual(len(f.clock.getDelayedCalls()), 1)
        self.assertEqual(len(f.events), 1)

    def test_reports_ignored_when_stopped(self) -> None:
        """Before start and after stop, reports change nothing."""
        f = Fixture(servers=4, check="none", eject_consecutive=1)
        f.monitor.report(f.state("s1"), "reset")
        self.assertFalse(f.state("s1").ejected)
        f.monitor.start()
        f.monitor.stop()
        f.monitor.report(f.state("s1"), "reset")
        self.assertFalse(f.state("s1").ejected)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_unknown_outcome_logged(self) -> None:
        """A nonsense outcome is logged as an error and not counted."""
        f = passive(eject_consecutive=1)
        f.monitor.report(f.state("s1"), "bogus")
        self.assertFalse(f.state("s1").ejected)
        self.assertEqual(len(f.events), 1)
        self.assertIn("unknown outcome 'bogus'", f.lines()[0])

    def test_report_time(self) -> None:
        """``now`` dates the failure: the cool-down runs from then."""
        f = passive(eject_consecutive=1)
        f.clock.advance(100.0)
        f.monitor.report(f.state("s1"), "reset", now=96.0)
        f.clock.advance(5.999)
        self.assertTrue(f.state("s1").ejected)
        f.clock.advance(0.001)
        self.assertFalse(f.state("s1").ejected)


# -- the monitor: slow start ------------------------------------------------------------------


class SlowStartTests(SynchronousTestCase):
    def test_ramp_after_ejection(self) -> None:
        """A returning server ramps 1, 1, 2, ... 10 over slow_start, one step a second."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1, slow_start=10.0)
        s1 = f.state("s1")
        f.monitor.report(s1, "reset")
        f.clock.advance(10.0)
        self.assertFalse(s1.ejected)
        weights = [s1.weight]
        for _ in range(12):
            f.clock.advance(1.0)
            weights.append(s1.weight)
        self.assertEqual(weights, [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10])
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_update_per_weight_change(self) -> None:
        """The selector hears of every weight change and of nothing else."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1, slow_start=10.0)
        f.monitor.report(f.state("s1"), "reset")  # 1 update
        f.clock.advance(10.0)  # return: 1 update (weight 1)
        for _ in range(15):
            f.clock.advance(1.0)  # weights 2..10: 9 updates
        self.assertEqual(f.selector.updates, 11)

    def test_late_timer_catches_up(self) -> None:
        """A ramp timer that fires late jumps to the weight due by the clock."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1, slow_start=10.0)
        s1 = f.state("s1")
        f.monitor.report(s1, "reset")
        f.clock.advance(10.0)
        f.clock.advance(6.5)  # one timer call, 5.5s late
        self.assertEqual(s1.weight, 6)
        f.clock.advance(0.5)
        self.assertEqual(s1.weight, 7)
        f.clock.advance(10.0)
        self.assertEqual(s1.weight, 10)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_ramp_after_down_up(self) -> None:
        """A server marked up by its checks ramps too."""
        f = Fixture(weights=(100,), check_fall=1, check_rise=1, slow_start=5.0)
        f.monitor.start()
        f.clock.advance(0)
        f.fail_checks("s1", 1)
        f.accept("s1")
        s1 = f.state("s1")
        self.assertEqual(s1.weight, 10)
        f.clock.advance(2.5)
        self.assertEqual(s1.weight, 55)
        f.clock.advance(2.5)
        self.assertEqual(s1.weight, 100)

    def test_no_slow_start(self) -> None:
        """slow_start = 0 gives the full weight at once."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1)
        f.monitor.report(f.state("s1"), "reset")
        f.clock.advance(10.0)
        self.assertEqual(f.state("s1").weight, 10)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_ramp_stops_when_out_again(self) -> None:
        """An ejection mid-ramp cancels the ramp; the next return starts it over."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1, slow_start=10.0)
        s1 = f.state("s1")
        f.monitor.report(s1, "reset")
        f.clock.advance(10.0)
        f.clock.advance(5.0)
        self.assertEqual(s1.weight, 5)
        f.monitor.report(s1, "reset")
        self.assertEqual(len(f.clock.getDelayedCalls()), 1)  # the ejection timer only
        f.clock.advance(20.0)
        self.assertEqual(s1.weight, 1)


# -- logging, status and stop -------------------------------------------------------------------


class LoggingTests(SynchronousTestCase):
    def test_one_line_per_transition(self) -> None:
        """Down and up are logged once each; results that change nothing log nothing."""
        f = Fixture(check_fall=2, check_rise=2)
        f.monitor.start()
        f.clock.advance(0)
        f.pass_checks("s1", 3)
        f.fail_checks("s1", 5)
        f.pass_checks("s1", 4)
        self.assertEqual(
            f.lines(),
            [
                "backend app server s1 DOWN after 2 failed checks: connect refused",
                "backend app server s1 UP after 2 successful checks: connected",
            ],
        )
        self.assertEqual([e["transition"] for e in f.events], ["down", "up"])
        self.assertEqual([e["log_level"].name for e in f.events], ["warn", "info"])

    def test_global_publisher_by_default(self) -> None:
        """Without an injected Logger, lines go to the global log publisher."""
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        clock = MemoryReactorClock()
        backend = BackendConfig("app", (ServerConfig("s1", "app", "http", "h", 1),), check="tcp", check_fall=1)
        state = make_state(backend.servers[0])
        monitor = HealthMonitor(clock, backend, [state], Selector())
        monitor.start()
        clock.advance(0)
        clock.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        monitor.stop()
        mine = [formatEvent(e) for e in seen if e.get("transition")]
        self.assertEqual(mine, ["backend app server s1 DOWN after 1 failed check: connect refused"])


class StatusTests(SynchronousTestCase):
    def test_every_status(self) -> None:
        """up, down, ejected and draining, with down taking precedence."""
        f = Fixture(servers=4, check="none")
        configs = list(f.backend.servers)
        configs[3] = replace(configs[3], drain=True)
        states = [make_state(c) for c in configs]
        states[1].up = False
        states[2].ejected = True
        monitor = HealthMonitor(f.clock, replace(f.backend, servers=tuple(configs)), states, Selector())
        self.assertEqual(monitor.status(), {"s1": "up", "s2": "down", "s3": "ejected", "s4": "draining"})


class StopTests(SynchronousTestCase):
    def test_stop_cancels_everything(self) -> None:
        """stop() leaves no delayed call and aborts running probes and connects."""
        f = Fixture(servers=3, check="http", weights=(10, 10, 10), eject_consecutive=1, slow_start=10.0)
        f.monitor.start()
        f.clock.advance(0)
        s1 = f.accept("s1")  # probe waiting for its response
        f.clock.advance(0.7)  # s2's connect pending
        f.monitor.report(f.state("s3"), "reset")  # ejection timer
        self.assertTrue(f.clock.getDelayedCalls())
        f.monitor.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])
        self.assertTrue(s1.transport.disconnected)
        self.assertTrue(f.clock.connectors[-1].stoppedConnecting)
        self.assertFalse(f.state("s3").ejected)
        f.clock.advance(100)
        self.assertEqual(len(f.clock.tcpClients), 2)

    def test_stop_ends_ramp_at_full_weight(self) -> None:
        """A server mid-ramp gets its full weight when the monitor stops."""
        f = passive(servers=2, weights=(10, 10), eject_consecutive=1, slow_start=10.0)
        f.monitor.report(f.state("s1"), "reset")
        f.clock.advance(12.0)
        f.monitor.stop()
        self.assertEqual(f.state("s1").weight, 10)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        """A stopped monitor can be started again and checks again."""
        f = Fixture()
        f.monitor.start()
        f.monitor.stop()
        f.monitor.start()
        f.clock.advance(0)
        self.assertEqual(len(f.pending("s1")), 1)
