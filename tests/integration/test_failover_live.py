"""Load balancing, health checks and failover over real sockets and real processes.

Each origin names itself in an ``X-Served-By`` header, so a client can count
per server even across a SIGKILL (which loses the origin's own counters). The
gateway's log says when it marked a server DOWN or UP, and which requests it
retried after which server: that is how the tests see the attempts the client
never sees.

Timing: active checks run every 200 ms with ``check_fall = check_rise = 2``,
so a dead server is marked down within about half a second; every wait for a
transition has a deadline of :data:`TRANSITION_TIMEOUT`.
"""

from __future__ import annotations

import http.client
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from .support import (
    IO_TIMEOUT,
    Gateway,
    Origin,
    backend_ini,
    free_port,
    listener_ini,
    wait_until,
)

#: Fast active checks, so that failover takes well under a second.
FAST_CHECKS: dict[str, object] = {
    "check": "http",
    "check_path": "/_health",
    "check_interval": "200ms",
    "check_timeout": "100ms",
    "check_rise": 2,
    "check_fall": 2,
}
#: How long a DOWN or UP transition may take (a few check intervals, generously).
TRANSITION_TIMEOUT = 5.0
#: A request that the gateway should answer at once (no server to wait for).
QUICK = 1.0
#: Seconds a "slow" GET sleeps at the origin: long enough to kill it meanwhile.
SLOW = 0.5

_RETRY = re.compile(r"retrying (\S+) /echo\?n=([0-9]+) after (app[0-9]+)")


def gateway_for(case: SynchronousTestCase, origins: list[Origin], *,
                server_keys: list[dict[str, object]] | None = None, **backend: object) -> Gateway:
    """A started gateway balancing over ``origins`` (servers app1, app2, ...)."""
    ini = listener_ini() + "\n" + backend_ini(
        [origin.url for origin in origins], server_keys=server_keys or (), **backend
    )
    return Gateway(case, ini).start()


def start_origins(case: SynchronousTestCase, *names: str, delay: float = 0.0) -> list[Origin]:
    """Started origins, each naming itself in ``X-Served-By``."""
    return [Origin(case, name=name, delay=delay).start() for name in names]


def transition(gateway: Gateway, server: str, what: str) -> str:
    """The log once ``server`` has made transition ``what`` (DOWN, UP, EJECTED)."""
    return gateway.wait_for_log(rf"server {server} {what} ", timeout=TRANSITION_TIMEOUT)


def in_service(gateway: Gateway, server: str) -> bool:
    """Whether, by the log, ``server`` is in service: not DOWN and not EJECTED.

    Active checks (DOWN/UP) and passive ejection (EJECTED/RETURNED) are
    independent; a server restarted while still ejected is UP but takes no
    requests until it returns.
    """
    text = gateway.log()
    checks = re.findall(rf"server {server} (DOWN|UP) ", text)
    ejected = len(re.findall(rf"server {server} EJECTED ", text))
    returned = len(re.findall(rf"server {server} RETURNED ", text))
    return (not checks or checks[-1] == "UP") and ejected == returned


def transitions(gateway: Gateway) -> str:
    """The log's health lines, to explain a failure."""
    wanted = re.compile(r"server app[0-9]+ (DOWN|UP|EJECTED|RETURNED|not ejected) |budget")
    return "\n".join(line for line in gateway.log().splitlines() if wanted.search(line))


def retried_after(gateway: Gateway, server: str) -> list[int]:
    """Numbers of the ``/echo?n=N`` requests the gateway retried after ``server``."""
    return [int(n) for _, n, name in _RETRY.findall(gateway.log()) if name == server]


class Client:
    """Sequential keep-alive GETs of ``/echo?n=N`` through the gateway, all recorded.

    ``results[n]`` is ``(status, served_by)`` of request n; a request that fails
    below HTTP (reset, timeout, truncated) is recorded with status 0 and the
    connection is opened again. Requests are paced at least :data:`PACE` apart
    so that each phase of a test is a steady stream of bounded length.
    """

    PACE = 0.004
    #: How often :meth:`run_until` looks at the condition (it may read the log).
    CHECK_EVERY = 0.05

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn = gateway.connection()
        self.results: list[tuple[int, str]] = []
        self._last = 0.0

    @property
    def sent(self) -> int:
        return len(self.results)

    def one(self) -> tuple[int, str]:
        """Send the next request; its ``(status, served_by)``."""
        wait = self._last + self.PACE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
        n = len(self.results)
        try:
            self.conn.request("GET", f"/echo?n={n}")
            response = self.conn.getresponse()
            response.read()
            result = (response.status, response.getheader("X-Served-By", ""))
            if response.will_close:
                self.conn.close()
        except (OSError, http.client.HTTPException) as exc:
            result = (0, type(exc).__name__)
            self.conn.close()
        self.results.append(result)
        return result

    def run(self, count: int) -> list[tuple[int, str]]:
        """Send ``count`` requests; their results."""
        return [self.one() for _ in range(count)]

    def run_until(self, condition: Callable[[], object], what: str,
                  timeout: float = TRANSITION_TIMEOUT, limit: int = 2000) -> int:
        """Keep sending until ``condition()`` holds; the number sent so far.

        Bounded by ``timeout`` and by ``limit`` requests.
        """
        deadline = time.monotonic() + timeout
        checked = 0.0
        for _ in range(limit):
            now = time.monotonic()
            if now - checked >= self.CHECK_EVERY:
                checked = now
                if condition():
                    return self.sent
                if now >= deadline:
                    break
            self.one()
        raise AssertionError(f"no {what} within {timeout}s / {limit} requests")

    def failures(self, start: int = 0) -> list[tuple[int, tuple[int, str]]]:
        """``(n, result)`` of every request from ``start`` on that did not get 200."""
        return [(n, r) for n, r in enumerate(self.results) if n >= start and r[0] != 200]

    def served(self, start: int, end: int | None = None) -> Counter[str]:
        """How many of requests ``start``..``end`` each origin answered."""
        return Counter(name for status, name in self.results[start:end] if status == 200)


class FailoverTests(SynchronousTestCase):
    """Servers die and come back under a steady stream: the client sees only 200s."""

    def test_kill_restart_kill_two_without_failures(self) -> None:
        """SIGKILL one of three, restart it on its port, then kill two: every answer 200.

        Along the way: the dead server is not tried once it is marked DOWN (no
        retry after it for later requests), it takes traffic again once UP, and
        with two servers dead the survivor answers everything.
        """
        a, b, c = origins = start_origins(self, "a", "b", "c")
        gateway = gateway_for(
            self, origins, balance="roundrobin", retries=2,
            eject_consecutive=2, eject_time="1s", eject_max_share=0.7, **FAST_CHECKS,
        )
        log = gateway.log
        client = Client(gateway)

        client.run(30)
        self.assertEqual(set(client.served(0)), {"a", "b", "c"})

        # One dies: the others answer, and it is tried no more once DOWN.
        killed = client.sent
        a.kill()
        down = client.run_until(lambda: "server app1 DOWN " in log(), "app1 DOWN")
        client.run(60)
        self.assertEqual(set(client.served(killed)), {"b", "c"})
        late = [n for n in retried_after(gateway, "app1") if n >= down]
        self.assertEqual(late, [], "app1 was still tried after it was marked DOWN")

        # It comes back on the same port and gets its share again.
        a.start()
        up = client.run_until(
            lambda: "server app1 UP " in log() and in_service(gateway, "app1"), "app1 UP"
        )
        client.run(60)
        self.assertEqual(set(client.served(up)), {"a", "b", "c"})

        # Two die at once: the survivor answers everything, without a failure.
        killed = client.sent
        b.kill()
        c.kill()
        both_down = client.run_until(
            lambda: "server app2 DOWN " in log() and "server app3 DOWN " in log(),
            "app2 and app3 DOWN",
        )
        client.run(60)
        self.assertEqual(set(client.served(killed)), {"a"})
        for server in ("app2", "app3"):
            late = [n for n in retried_after(gateway, server) if n >= both_down]
            self.assertEqual(late, [], f"{server} was still tried after it was marked DOWN")

        self.assertEqual(client.failures(), [], transitions(gateway))
        self.assertEqual(sum(client.served(0).values()), client.sent)

    def test_get_in_flight_on_killed_server_is_retried(self) -> None:
        """A GET its server took, then died on (SIGKILL) unanswered, is answered by another.

        Three slow GETs, one per server; the first server dies while they sleep.
        GET is idempotent (RFC 9110 §9.2.2), so the gateway may send it again.
        """
        origins = start_origins(self, "a", "b", "c")
        gateway = gateway_for(self, origins, balance="roundrobin", retries=2)

        def slow_get(_: int) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=IO_TIMEOUT)
            try:
                conn.request("GET", f"/sleep/{SLOW}")
                response = conn.getresponse()
                response.read()
                return response.status, response.getheader("X-Served-By", "")
            finally:
                conn.close()

        with ThreadPoolExecutor(3) as pool:
            answers = pool.map(slow_get, range(3))
            wait_until(
                lambda: all(o.hits().get(f"/sleep/{SLOW}") for o in origins),
                IO_TIMEOUT, "a slow GET at every origin",
            )
            origins[0].kill()
            results = list(answers)
        self.assertEqual(sorted(status for status, _ in results), [200, 200, 200], results)
        self.assertEqual({name for _, name in results}, {"b", "c"})
        self.assertIn(f"retrying GET /sleep/{SLOW} after app1", gateway.log())


class RetryTests(SynchronousTestCase):
    """What is retried on another server and what must never be."""

    def setUp(self) -> None:
        self.origins = start_origins(self, "a", "b")

    def post_hits(self) -> int:
        """How many times the origins together saw ``/close-after-body``."""
        return sum(origin.hits().get("/close-after-body", 0) for origin in self.origins)

    def test_post_taken_then_dropped_is_not_replayed(self) -> None:
        """A POST whose body a server took before closing unanswered gets 502, sent once."""
        gateway = gateway_for(self, self.origins, retries=2)
        status, _, body = gateway.get(
            "/close-after-body", method="POST", body=b"x" * 10_000
        )
        self.assertEqual(status, 502, body[:200])
        self.assertEqual(self.post_hits(), 1)

    def test_bodyless_post_is_not_replayed(self) -> None:
        """A POST without a body, taken and dropped unanswered: 502, sent once.

        RFC 9110 §9.2.2 and RFC 9112 §9.3.1.1: "A proxy MUST NOT automatically
        retry non-idempotent requests." Having no body to replay does not make
        a POST idempotent.
        """
        gateway = gateway_for(self, self.origins, retries=2)
        status, _, body = gateway.get("/close-after-body", method="POST", body=b"")
        hits = self.post_hits()
        self.assertEqual(status, 502, body[:200])
        self.assertEqual(hits, 1)

    def test_post_on_reused_connection_is_not_replayed(self) -> None:
        """The same POST over a pooled keep-alive connection: still 502, still sent once.

        A reused connection that dies before answering gets one free retry when
        nothing of the request could have been processed; a body that went up
        rules that out.
        """
        gateway = gateway_for(self, self.origins, retries=2)
        for _ in range(4):  # an idle pooled connection to each server
            self.assertEqual(gateway.get("/echo")[0], 200)
        status, _, body = gateway.get(
            "/close-after-body", method="POST", body=b"x" * 10_000
        )
        self.assertEqual(status, 502, body[:200])
        self.assertEqual(self.post_hits(), 1)
        self.assertEqual(sum(o.stats()["connections"] for o in self.origins), 2)

    def test_get_is_retried_after_refused_connect(self) -> None:
        """With one server's port closed, every GET still gets 200 from the other.

        Passive ejection is off, so the dead server stays in the rotation and
        the retry is what saves the requests that land on it.
        """
        live = self.origins[0]
        dead_url = f"http://127.0.0.1:{free_port()}"
        ini = listener_ini() + "\n" + backend_ini(
            [dead_url, live.url], retries=2, eject_consecutive=0
        )
        gateway = Gateway(self, ini).start()
        for n in range(10):
            status, headers, body = gateway.get(f"/echo?n={n}")
            self.assertEqual(status, 200, body[:200])
            self.assertEqual(headers.get("X-Served-By"), "a")
        self.assertGreaterEqual(len(retried_after(gateway, "app1")), 4)
        self.assertEqual(live.hits(), {"/echo": 10})


class LeastConnTests(SynchronousTestCase):
    """``leastconn`` steers concurrent load away from a slow server."""

    CLIENTS = 8
    REQUESTS = 12
    DELAY = 0.2

    def shares(self, balance: str) -> Counter[str]:
        """Answers per origin for CLIENTS threads of REQUESTS keep-alive GETs each."""
        origins = [Origin(self, name="fast").start(),
                   Origin(self, name="slow", delay=self.DELAY).start()]
        gateway = gateway_for(self, origins, balance=balance)

        def worker(index: int) -> list[str]:
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=IO_TIMEOUT)
            names = []
            try:
                for n in range(self.REQUESTS):
                    conn.request("GET", f"/echo?client={index}&n={n}")
                    response = conn.getresponse()
                    response.read()
                    self.assertEqual(response.status, 200)
                    names.append(response.getheader("X-Served-By", ""))
            finally:
                conn.close()
            return names

        with ThreadPoolExecutor(self.CLIENTS) as pool:
            results = list(pool.map(worker, range(self.CLIENTS)))
        counts = Counter(name for names in results for name in names)
        self.assertEqual(sum(counts.values()), self.CLIENTS * self.REQUESTS)
        return counts

    def test_slow_server_gets_small_share(self) -> None:
        """With 8 concurrent clients, the server 200 ms slower takes under 35%."""
        counts = self.shares("leastconn")
        share = counts["slow"] / sum(counts.values())
        self.assertLess(share, 0.35, counts)
        self.assertGreater(counts["fast"], 0, counts)

    def test_roundrobin_ignores_slowness(self) -> None:
        """The contrast: round-robin gives the slow server about half."""
        counts = self.shares("roundrobin")
        share = counts["slow"] / sum(counts.values())
        self.assertGreaterEqual(share, 0.4, counts)
        self.assertLessEqual(share, 0.6, counts)


class AllDownTests(SynchronousTestCase):
    """With no server left, the gateway answers 503 at once and leaves them alone."""

    def assert_quick_503(self, gateway: Gateway, retry_after: str) -> None:
        started = time.monotonic()
        status, headers, body = gateway.get("/echo")
        self.assertLess(time.monotonic() - started, QUICK)
        self.assertEqual(status, 503, body[:200])
        self.assertEqual(headers.get("Retry-After"), retry_after)
        self.assertEqual(headers.get("Content-Type"), "text/html; charset=utf-8")
        self.assertIn(b"<h1>503 Service Unavailable</h1>", body)

    def test_checks_down_gives_503_with_retry_after(self) -> None:
        """Both servers marked DOWN by active checks: 503, Retry-After, own page, quickly."""
        urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
        ini = listener_ini() + "\n" + backend_ini(urls, retry_after="7s", **FAST_CHECKS)
        gateway = Gateway(self, ini).start()
        transition(gateway, "app1", "DOWN")
        transition(gateway, "app2", "DOWN")
        for _ in range(5):
            self.assert_quick_503(gateway, "7")
        self.assertNotIn("retrying", gateway.log())

    def test_ejected_all_gives_quick_503_without_connecting(self) -> None:
        """Checks off, passive ejection on: after the first failure, 503s with no attempt.

        The first request fails on both servers (502) and ejects them; every
        later one is answered 503 at once, and the access log shows it never
        went upstream (``upstream=-``).
        """
        urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
        ini = listener_ini() + "\n" + backend_ini(
            urls, retries=2, retry_after="3s", eject_consecutive=1, eject_max_share=1,
            eject_time="30s",
        )
        gateway = Gateway(self, ini).start()
        started = time.monotonic()
        status, _, body = gateway.get("/echo")
        self.assertLess(time.monotonic() - started, QUICK)
        self.assertEqual(status, 502, body[:200])
        gateway.wait_for_log(r"server app2 EJECTED ")
        for _ in range(5):
            self.assert_quick_503(gateway, "3")
        lines = gateway.wait_for_log(r'"GET /echo HTTP/1.1" 503 ', count=5)
        answered = [line for line in lines.splitlines() if '"GET /echo HTTP/1.1" 503 ' in line]
        self.assertEqual(len(answered), 5)
        for line in answered:
            self.assertIn(" upstream=- ", line)
        self.assertEqual(len(re.findall(r"retrying GET", gateway.log())), 2)


class BackupTests(SynchronousTestCase):
    """A backup server stands in only while no primary is up."""

    def test_backup_takes_over_and_hands_back(self) -> None:
        """Idle beside a live primary; serves when it dies; idle again once it is back UP."""
        primary, backup = origins = start_origins(self, "primary", "backup")
        gateway = gateway_for(
            self, origins, server_keys=[{}, {"backup": "yes"}], eject_time="1s", **FAST_CHECKS
        )
        client = Client(gateway)
        client.run(20)
        self.assertEqual(client.served(0), Counter(primary=20))
        self.assertEqual(backup.stats()["requests"], 0)

        primary.kill()
        transition(gateway, "app1", "DOWN")
        start = client.sent
        client.run(20)
        self.assertEqual(client.served(start), Counter(backup=20))

        primary.start()
        transition(gateway, "app1", "UP")
        wait_until(lambda: in_service(gateway, "app1"), TRANSITION_TIMEOUT, "app1 in service")
        start = client.sent
        client.run(20)
        self.assertEqual(client.served(start), Counter(primary=20))
        self.assertEqual(client.failures(), [])


class HashTests(SynchronousTestCase):
    """``hash`` on a header keeps each user on one server."""

    USERS = 24
    ROUNDS = 4

    def setUp(self) -> None:
        self.origins = start_origins(self, "a", "b", "c")
        self.gateway = gateway_for(
            self, self.origins, balance="hash", hash_key="header:X-User", eject_consecutive=0,
            **FAST_CHECKS,
        )

    def placement(self) -> dict[str, set[str]]:
        """User -> the origins that answered it, ROUNDS interleaved rounds on one connection."""
        conn = self.gateway.connection()
        seen: dict[str, set[str]] = {}
        for round_ in range(self.ROUNDS):
            for user in range(self.USERS):
                conn.request("GET", f"/echo?r={round_}", headers={"X-User": f"user-{user}"})
                response = conn.getresponse()
                response.read()
                self.assertEqual(response.status, 200)
                seen.setdefault(f"user-{user}", set()).add(response.getheader("X-Served-By", ""))
        return seen

    def test_same_user_same_server(self) -> None:
        """Every request of a user lands on one server; the users spread over several."""
        seen = self.placement()
        for user, servers in seen.items():
            self.assertEqual(len(servers), 1, f"{user} went to {servers}")
        used = {server for servers in seen.values() for server in servers}
        self.assertGreaterEqual(len(used), 2, seen)

    def test_only_dead_servers_users_move(self) -> None:
        """A server dies: its users move to the others, everyone else stays put."""
        before = {user: servers.pop() for user, servers in self.placement().items()}
        victim = Counter(before.values()).most_common(1)[0][0]
        index = "abc".index(victim)
        self.origins[index].kill()
        transition(self.gateway, f"app{index + 1}", "DOWN")
        after = self.placement()
        for user, servers in after.items():
            self.assertEqual(len(servers), 1, f"{user} went to {servers}")
            (server,) = servers
            if before[user] == victim:
                self.assertNotEqual(server, victim)
            else:
                self.assertEqual(server, before[user], f"{user} moved")
