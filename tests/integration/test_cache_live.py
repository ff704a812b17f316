"""The HTTP cache over real sockets, with a real origin that counts its requests.

The origin's ``/cache/NAME`` endpoint (tests/integration/origin.py) answers with
a body naming which request to that path it was (``n=COUNT``) and echoing the
client's ``X-Token``, so a client can tell whether it got a shared response or
its own. The origin's ``/_hits`` says how many requests reached it per path.

Every gateway here runs one process (``workers = 1``) with its cache in a
fresh temporary directory.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from .support import IO_TIMEOUT, Gateway, Origin, backend_ini, listener_ini, new_tempdir, wait_until

#: Concurrent clients for the stampede tests.
CLIENTS = 200


def cache_ini(urls: list[str], directory: str, gateway: dict[str, object] | None = None,
              route: dict[str, object] | None = None, backend: dict[str, object] | None = None) -> str:
    """One listener, backend ``app`` over ``urls``, and a caching catch-all route."""
    settings = {"workers": 1, "cache_dir": directory, **(gateway or {})}
    lines = ["[gateway]"] + [f"{key} = {value}" for key, value in settings.items()]
    text = "\n".join(lines) + "\n\n" + listener_ini() + "\n" + backend_ini(urls, **(backend or {}))
    keys = {"cache": "yes", **(route or {})}
    return text + "".join(f"{key} = {value}\n" for key, value in keys.items())


def target(name: str, control: str = "", **query: object) -> str:
    """``/cache/NAME?cc=...&...`` for the origin's cacheable endpoint."""
    params = ([f"cc={quote(control)}"] if control else []) + [f"{k}={v}" for k, v in query.items()]
    return f"/cache/{name}" + ("?" + "&".join(params) if params else "")


def fetch(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
          source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (from ``source``): status, headers (lower-case names), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def entry_files(directory: str) -> list[str]:
    """The committed entry files in a cache directory (32 hex digits, in ab/cd/)."""
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, name) for name in files if len(name) == 32]
    return found


class StampedeTests(SynchronousTestCase):
    """Collapsing under load: one origin request for a shared response, N for private ones."""

    def setUp(self) -> None:
        self.origin = Origin(self).start()
        self.directory = new_tempdir(self)
        ini = cache_ini([self.origin.url], self.directory, backend={"pool_max_conns": 64})
        self.gateway = Gateway(self, ini).start()

    def concurrently(self, path: str) -> list[tuple[int, dict[str, str], bytes, str]]:
        """CLIENTS requests for ``path`` at once, each with its own X-Token."""

        def one(number: int) -> tuple[int, dict[str, str], bytes, str]:
            token = f"client-{number}"
            status, headers, body = fetch(self.gateway.port, path, {"X-Token": token})
            return status, headers, body, token

        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(one, range(CLIENTS)))

    def test_cold_url_one_origin_request(self) -> None:
        """200 concurrent requests for one cold URL make exactly one origin request."""
        path = target("cold", "max-age=60", delay=1.0)
        results = self.concurrently(path)
        self.assertEqual({status for status, _, _, _ in results}, {200})
        self.assertEqual(len({body for _, _, body, _ in results}), 1)
        self.assertEqual(self.origin.hits().get("/cache/cold"), 1)
        statuses = [headers["cache-status"] for _, headers, _, _ in results]
        self.assertEqual(sum("stored" in s for s in statuses), 1)
        self.assertEqual(sum("collapsed" in s or "hit" in s for s in statuses), CLIENTS - 1)

    def test_private_never_shared(self) -> None:
        """200 concurrent requests for a private URL: each client gets its own response."""
        path = target("private", "private, max-age=60", delay=0.3)
        results = self.concurrently(path)
        self.assertEqual({status for status, _, _, _ in results}, {200})
        for _, _, body, token in results:
            self.assertIn(f"token={token}\n".encode(), body)
        self.assertEqual(len({body for _, _, body, _ in results}), CLIENTS)
        self.assertEqual(self.origin.hits().get("/cache/private"), CLIENTS)
        self.assertEqual(entry_files(self.directory), [])


class StaleIfErrorTests(SynchronousTestCase):
    """stale-if-error keeps serving with every origin dead, for its window only."""

    def test_serves_stale_then_stops(self) -> None:
        """Origins killed: 200 from the store within stale-if-error, then an error."""
        origins = [Origin(self).start(), Origin(self).start()]
        directory = new_tempdir(self)
        gateway = Gateway(self, cache_ini([o.url for o in origins], directory)).start()
        path = target("sie", "max-age=1, stale-if-error=3")
        status, headers, body = fetch(gateway.port, path)
        filled = time.monotonic()
        self.assertIn("stored", headers["cache-status"])
        for origin in origins:
            origin.kill()
        seen: list[tuple[float, int, str]] = []
        while time.monotonic() - filled < 5.0:
            status, headers, got = fetch(gateway.port, path)
            seen.append((time.monotonic() - filled, status, headers.get("cache-status", "")))
            if status == 200:
                self.assertEqual(got, body)
            time.sleep(0.1)
        # Ages count from the origin's Date, which has whole seconds: the
        # response was up to 1 s old when it arrived. So it is stale after
        # at most 1 s, may stand in until at least 3 s, and not after 4 s.
        stale = [(t, s, cs) for t, s, cs in seen if 1.05 < t < 2.9]
        self.assertTrue(stale)
        for when, status, cache_status in stale:
            self.assertEqual(status, 200, (when, cache_status))
            self.assertIn("stale-if-error", cache_status)
        late = [(t, s) for t, s, _ in seen if t > 4.3]
        self.assertTrue(late)
        self.assertTrue(all(status >= 500 for _, status in late), late)


class DiskTests(SynchronousTestCase):
    """What lives on disk: restarts, the size limit, truncated files."""

    def test_restart_keeps_entries(self) -> None:
        """A gateway restarted on the same cache_dir answers from the entries it had."""
        origin = Origin(self).start()
        directory = new_tempdir(self)
        ini = cache_ini([origin.url], directory)
        first = Gateway(self, ini).start()
        paths = [target(f"keep{i}", "max-age=600") for i in range(3)]
        # The key holds the Host, and the second gateway listens on another port.
        host = {"Host": "www.example.com"}
        bodies = [fetch(first.port, path, host)[2] for path in paths]
        first.stop()
        second = Gateway(self, ini).start()
        for path, body in zip(paths, bodies):
            status, headers, got = fetch(second.port, path, host)
            self.assertEqual((status, got), (200, body))
            self.assertIn("hit", headers["cache-status"])
        hits = origin.hits()
        self.assertEqual([hits[f"/cache/keep{i}"] for i in range(3)], [1, 1, 1])
        self.assertRegex(second.log(), r"cache: 3 entries")

    def test_eviction_holds_size_limit(self) -> None:
        """Filling past cache_max_size evicts the least recently used; the files stay under it."""
        origin = Origin(self).start()
        directory = new_tempdir(self)
        limit = 1024 * 1024
        ini = cache_ini([origin.url], directory, gateway={"cache_max_size": "1m", "cache_max_object": "256k"})
        gateway = Gateway(self, ini).start()
        for i in range(20):
            status, _, body = fetch(gateway.port, target(f"big{i}", "max-age=600", size=100_000))
            self.assertEqual((status, len(body)), (200, 100_000))
            self.assertLessEqual(used_bytes(directory), limit)
        self.assertLess(len(entry_files(directory)), 20)
        _, headers, _ = fetch(gateway.port, target("big19", "max-age=600", size=100_000))
        self.assertIn("hit", headers["cache-status"])
        _, headers, _ = fetch(gateway.port, target("big0", "max-age=600", size=100_000))
        self.assertIn("fwd=uri-miss", headers["cache-status"])

    def test_large_hits_whole(self) -> None:
        """A body of several chunks: the first hit checks it as it reads, later ones go by sendfile; all whole.

        Also a Range hit, which goes by sendfile from the start. (A socket
        that takes only part is covered in unit tests: loopback buffers take
        a megabyte at once.)
        """
        origin = Origin(self).start()
        directory = new_tempdir(self)
        gateway = Gateway(self, cache_ini([origin.url], directory)).start()
        path = target("large", "max-age=600", size=1_000_000)
        _, _, body = fetch(gateway.port, path)
        self.assertEqual(len(body), 1_000_000)
        for _ in range(3):
            status, headers, got = fetch(gateway.port, path)
            self.assertEqual((status, got), (200, body))
            self.assertIn("hit", headers["cache-status"])
        status, headers, part = fetch(gateway.port, path, {"Range": "bytes=100000-899999"})
        self.assertEqual((status, part), (206, body[100_000:900_000]))
        self.assertEqual(origin.hits()["/cache/large"], 1)

    def test_truncated_entry_refetched(self) -> None:
        """A truncated entry file is detected, dropped and fetched again; no wrong bytes."""
        origin = Origin(self).start()
        directory = new_tempdir(self)
        gateway = Gateway(self, cache_ini([origin.url], directory)).start()
        path = target("cut", "max-age=600", size=50_000)
        _, _, body = fetch(gateway.port, path)
        # The entry is committed just after the last byte went to the client.
        (entry,) = wait_until(lambda: entry_files(directory), IO_TIMEOUT, "the entry file")
        with open(entry, "r+b") as file:
            file.truncate(os.path.getsize(entry) // 2)
        status, headers, again = fetch(gateway.port, path)
        self.assertEqual(status, 200)
        self.assertIn("fwd=uri-miss", headers["cache-status"])
        self.assertEqual(len(again), len(body))
        self.assertIn(b"cut n=2", again)
        self.assertEqual(origin.hits()["/cache/cut"], 2)
        _, headers, third = fetch(gateway.port, path)
        self.assertEqual(third, again)
        self.assertIn("hit", headers["cache-status"])
        gateway.wait_for_log("cache: dropping")


class PurgeTests(SynchronousTestCase):
    """PURGE works from cache_purge_from only."""

    def test_purge_from_allowed_address_only(self) -> None:
        """127.0.0.2 may purge; 127.0.0.1 gets 405 and purges nothing."""
        if not _can_bind("127.0.0.2"):
            self.skipTest("127.0.0.2 is not a usable loopback address here")
        origin = Origin(self).start()
        directory = new_tempdir(self)
        ini = cache_ini([origin.url], directory, gateway={"cache_purge_from": "127.0.0.2"})
        gateway = Gateway(self, ini).start()
        path = target("p", "max-age=600")
        fetch(gateway.port, path)
        status, _, _ = fetch(gateway.port, path, method="PURGE")
        self.assertEqual(status, 405)
        self.assertIn("hit", fetch(gateway.port, path)[1]["cache-status"])
        status, _, body = fetch(gateway.port, path, method="PURGE", source="127.0.0.2")
        self.assertEqual((status, body), (200, b"purged 1\n"))
        self.assertIn("fwd=uri-miss", fetch(gateway.port, path)[1]["cache-status"])
        fetch(gateway.port, target("p2", "max-age=600"))
        status, _, body = fetch(gateway.port, "/cache/*", method="PURGE", source="127.0.0.2")
        self.assertEqual(body, b"purged 2\n")
        wait_until(lambda: entry_files(directory) == [], IO_TIMEOUT, "the purged files to go")


def used_bytes(directory: str) -> int:
    """The total size of the entry files in a cache directory (one may go as we look)."""
    total = 0
    for path in entry_files(directory):
        try:
            total += os.path.getsize(path)
        except FileNotFoundError:
            pass
    return total


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True
