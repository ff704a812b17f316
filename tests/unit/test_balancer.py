"""Tests for gateway.balancer: leases, smooth weighted round-robin, least-connections."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.balancer import ISelector, LeastConn, Lease, RoundRobin, ServerState, make_selector
from gateway.config import BackendConfig, ServerConfig


def server(name: str, weight: int = 1) -> ServerState:
    return ServerState(ServerConfig(name=name, backend="app", scheme="http", host=f"{name}.internal", port=8000, weight=weight))


def names(selector, count: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Names of ``count`` picks, each lease released at once."""
    picked = []
    for _ in range(count):
        lease = selector.pick(exclude)
        picked.append(lease.server.config.name)
        lease.release()
    return picked


class ServerStateTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A new server is up with nothing in flight."""
        state = server("a")
        self.assertEqual((state.inflight, state.up), (0, True))

    def test_address(self) -> None:
        """address is (host, port) from the config."""
        self.assertEqual(server("a").address, ("a.internal", 8000))


class LeaseTests(SynchronousTestCase):
    def test_counts_inflight(self) -> None:
        """A lease adds one to the server's in-flight count."""
        state = server("a")
        Lease(state)
        Lease(state)
        self.assertEqual(state.inflight, 2)

    def test_release(self) -> None:
        """release() takes the count back."""
        state = server("a")
        lease = Lease(state)
        lease.release()
        self.assertEqual(state.inflight, 0)
        self.assertTrue(lease.released)

    def test_release_idempotent(self) -> None:
        """A second release() does nothing."""
        state = server("a")
        lease = Lease(state)
        Lease(state)
        lease.release()
        lease.release()
        self.assertEqual(state.inflight, 1)


class RoundRobinTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """RoundRobin provides ISelector."""
        self.assertTrue(verifyObject(ISelector, RoundRobin([server("a")])))

    def test_smooth_weighted_sequence(self) -> None:
        """Weights 5:1:1 give nginx's smooth cycle a a b a c a a, repeated."""
        selector = RoundRobin([server("a", 5), server("b"), server("c")])
        self.assertEqual(names(selector, 14), list("aabacaa") * 2)

    def test_equal_weights_rotate(self) -> None:
        """Equal weights take plain turns."""
        selector = RoundRobin([server("a"), server("b"), server("c")])
        self.assertEqual(names(selector, 6), list("abcabc"))

    def test_skips_down(self) -> None:
        """A down server is never picked."""
        a, b = server("a"), server("b")
        b.up = False
        self.assertEqual(names(RoundRobin([a, b]), 3), list("aaa"))

    def test_skips_excluded(self) -> None:
        """A server named in exclude (already tried) is not picked."""
        selector = RoundRobin([server("a"), server("b"), server("c")])
        self.assertEqual(names(selector, 4, frozenset({"a"})), list("bcbc"))

    def test_none_eligible(self) -> None:
        """None when every server is down or excluded."""
        a, b = server("a"), server("b")
        a.up = False
        self.assertIsNone(RoundRobin([a, b]).pick(frozenset({"b"})))

    def test_no_servers(self) -> None:
        """None for a backend without servers."""
        self.assertIsNone(RoundRobin([]).pick())

    def test_lease_counts(self) -> None:
        """pick() returns a lease that counts in the server's in-flight number."""
        a = server("a")
        lease = RoundRobin([a]).pick()
        self.assertIs(lease.server, a)
        self.assertEqual(a.inflight, 1)

    def test_weight_below_one(self) -> None:
        """A weight below 1 is refused at construction."""
        self.assertRaises(ValueError, RoundRobin, [server("a", 0)])


class LeastConnTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """LeastConn provides ISelector."""
        self.assertTrue(verifyObject(ISelector, LeastConn([server("a")])))

    def test_fewest_inflight(self) -> None:
        """The server with the fewest requests in flight is picked."""
        a, b, c = server("a"), server("b"), server("c")
        a.inflight, b.inflight, c.inflight = 3, 1, 2
        self.assertIs(LeastConn([a, b, c]).pick().server, b)

    def test_weighted(self) -> None:
        """Load is in-flight per unit of weight: 3/3 beats 2/1."""
        a, b = server("a", weight=3), server("b")
        a.inflight, b.inflight = 3, 2
        self.assertIs(LeastConn([a, b]).pick().server, a)

    def test_ties_rotate(self) -> None:
        """Equally loaded servers take turns."""
        selector = LeastConn([server("a"), server("b"), server("c")])
        self.assertEqual(names(selector, 6), list("abcabc"))

    def test_held_leases_spread(self) -> None:
        """Leases held open push picks to the less loaded server."""
        selector = LeastConn([server("a"), server("b")])
        held = [selector.pick() for _ in range(3)]
        self.assertEqual([lease.server.config.name for lease in held], ["a", "b", "a"])
        self.assertEqual([s.inflight for s in selector.servers], [2, 1])

    def test_released_server_preferred(self) -> None:
        """A server whose requests finished is preferred over a busy one."""
        selector = LeastConn([server("a"), server("b")])
        first, _ = selector.pick(), selector.pick()
        selector.pick()  # a again: a=2, b=1
        first.release()  # a=1, b=1
        selector.servers[1].inflight += 1  # b=2
        self.assertEqual(selector.pick().server.config.name, "a")

    def test_skips_down_and_excluded(self) -> None:
        """Down and excluded servers are not picked, however idle."""
        a, b, c = server("a"), server("b"), server("c")
        a.up = False
        c.inflight = 10
        self.assertIs(LeastConn([a, b, c]).pick(frozenset({"b"})).server, c)

    def test_none_eligible(self) -> None:
        """None when nothing is eligible."""
        self.assertIsNone(LeastConn([server("a")]).pick(frozenset({"a"})))
        self.assertIsNone(LeastConn([]).pick())


class MakeSelectorTests(SynchronousTestCase):
    def backend(self, balance: str) -> BackendConfig:
        configs = tuple(ServerConfig(name=n, backend="app", scheme="http", host="h", port=1) for n in "ab")
        return BackendConfig(name="app", servers=configs, balance=balance)

    def test_roundrobin(self) -> None:
        """balance=roundrobin builds a RoundRobin over the backend's servers, all up."""
        selector = make_selector(self.backend("roundrobin"))
        self.assertIsInstance(selector, RoundRobin)
        self.assertTrue(verifyObject(ISelector, selector))
        self.assertEqual([(s.config.name, s.up, s.inflight) for s in selector.servers], [("a", True, 0), ("b", True, 0)])

    def test_leastconn(self) -> None:
        """balance=leastconn builds a LeastConn."""
        selector = make_selector(self.backend("leastconn"))
        self.assertIsInstance(selector, LeastConn)
        self.assertTrue(verifyObject(ISelector, selector))

    def test_unknown(self) -> None:
        """An unknown balance is refused, naming the backend and the value."""
        with self.assertRaises(ValueError) as caught:
            make_selector(self.backend("rr"))
        self.assertIn("'app'", str(caught.exception))
        self.assertIn("'rr'", str(caught.exception))
