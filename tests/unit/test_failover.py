"""Failover in the request path: retry limits and budget, passive ejection, 503s.

Driven in memory with gateway.testing: the test refuses connects or plays the
origin, and time moves only with clock.advance().
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.testing import Harness, simple_config

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def serve(h: Harness, peers: dict[int, list], refuse: frozenset[int] = frozenset()) -> list[int]:
    """Play every origin until the gateway waits for nothing; return the ports that answered.

    Pending connects to a port in ``refuse`` are refused; others are accepted.
    Any origin connection (new or pooled) that received a request answers OK.
    """
    answered = []
    while True:
        if h.pending_connects():
            port = h.clock.tcpClients[h._connects][1]
            if port in refuse:
                h.refuse()
            else:
                peers.setdefault(port, []).append(h.upstream())
            continue
        busy = [(port, peer) for port, ps in peers.items() for peer in ps if peer.transport.value()]
        if not busy:
            return answered
        for port, peer in busy:
            peer.received()
            peer.send(OK)
            answered.append(port)


class RetryLimitTests(SynchronousTestCase):
    """``retries`` bounds the tries of one request."""

    def test_retries_used_up_to_limit(self) -> None:
        """With retries = 2, two refused connects are retried and the third try answers."""
        h = Harness(simple_config(servers=3, backend={"retries": 2}))
        client = h.client()
        client.send(GET)
        h.refuse()
        h.refuse()
        h.upstream().send(OK)
        self.assertEqual(status_of(client.received()), 200)

    def test_no_retry_past_limit(self) -> None:
        """With retries = 1, the second refused connect is the client's 502."""
        h = Harness(simple_config(servers=3, backend={"retries": 1}))
        client = h.client()
        client.send(GET)
        h.refuse()
        h.refuse()
        self.assertEqual(status_of(client.received()), 502)
        self.assertEqual(h.pending_connects(), 0)

    def test_retries_zero(self) -> None:
        """With retries = 0, a refused connect is answered 502 at once."""
        h = Harness(simple_config(servers=2, backend={"retries": 0}))
        client = h.client()
        client.send(GET)
        h.refuse()
        self.assertEqual(status_of(client.received()), 502)


class BudgetTests(SynchronousTestCase):
    """The retry budget caps retries across requests."""

    def test_budget_exhausted_stops_retries(self) -> None:
        """With a budget of 0% and no minimum, no request is retried."""
        config = simple_config(
            servers=2, backend={"retry_budget": 0.0, "retry_budget_min": 0}
        )
        h = Harness(config)
        client = h.client()
        client.send(GET)
        h.refuse()
        self.assertEqual(status_of(client.received()), 502)

    def test_budget_minimum_allows_retry(self) -> None:
        """With a budget of 0% but a minimum of 1, the first failure is retried."""
        config = simple_config(
            servers=2, backend={"retry_budget": 0.0, "retry_budget_min": 1}
        )
        h = Harness(config)
        client = h.client()
        client.send(GET)
        h.refuse()
        h.upstream().send(OK)
        self.assertEqual(status_of(client.received()), 200)


class EjectionTests(SynchronousTestCase):
    """Passive checks take a failing server out of rotation."""

    def test_server_ejected_after_consecutive_failures(self) -> None:
        """After eject_consecutive refused connects, s1 gets no more connect attempts."""
        config = simple_config(
            servers=2,
            backend={"eject_consecutive": 2, "retries": 1, "eject_time": 30.0},
        )
        h = Harness(config)
        peers: dict[int, list] = {}
        for _ in range(6):
            client = h.client()
            client.send(GET)
            serve(h, peers, refuse=frozenset({9001}))
            self.assertEqual(status_of(client.received()), 200)
        attempts = [port for _host, port, *_rest in h.clock.tcpClients]
        self.assertEqual(attempts.count(9001), 2)

    def test_ejected_server_returns_after_cooldown(self) -> None:
        """After eject_time, the ejected server is tried again."""
        config = simple_config(
            servers=2, backend={"eject_consecutive": 1, "eject_time": 10.0}
        )
        h = Harness(config)
        states = {s.name: s for s in h.runtime.backends["app"].selector.servers}
        client = h.client()
        client.send(GET)
        host, port, *_ = h.clock.tcpClients[0]
        failing = "s1" if port == 9001 else "s2"
        h.refuse()
        h.upstream().send(OK)
        self.assertTrue(states[failing].ejected)
        h.clock.advance(10.1)
        self.assertFalse(states[failing].ejected)


class NoServerTests(SynchronousTestCase):
    """With every server out, answers are quick 503s that say when to come back."""

    def test_all_down_503_with_retry_after(self) -> None:
        """No available server: 503 with Retry-After from retry_after, no connect attempt."""
        h = Harness(simple_config(servers=2, backend={"retry_after": 7.0}))
        for state in h.runtime.backends["app"].selector.servers:
            state.up = False
        h.runtime.backends["app"].selector.update()
        client = h.client()
        client.send(GET)
        answer = client.received()
        self.assertEqual(status_of(answer), 503)
        self.assertIn(b"Retry-After: 7\r\n", answer)
        self.assertEqual(h.pending_connects(), 0)


class HashTests(SynchronousTestCase):
    """balance = hash keeps a key on one server."""

    def test_same_header_same_server(self) -> None:
        """Requests with the same X-User go to the same server."""
        h = Harness(
            simple_config(servers=3, backend={"balance": "hash", "hash_key": "header:x-user"})
        )
        peers: dict[int, list] = {}
        answered = []
        for _ in range(5):
            client = h.client()
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-User: alice\r\n\r\n")
            answered += serve(h, peers)
            self.assertEqual(status_of(client.received()), 200)
        self.assertEqual(len(answered), 5)
        self.assertEqual(len(set(answered)), 1)
