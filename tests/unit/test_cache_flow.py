"""The cache on the request path (gateway.cache.flow), driven in memory.

Each test plays the clients and the origin over StringTransports on a
MemoryReactorClock (gateway.testing); the store is a real directory in the
system's temporary space. Time moves only with ``clock.advance``.
"""

from __future__ import annotations

import os

import shutil
import tempfile
from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from gateway.bodystore import CHUNK_SIZE
from gateway.cache.flow import CacheExchange
from gateway.cache.shared import CacheState
from gateway.runtime import Runtime
from gateway.testing import Harness, Peer, simple_config

OK_60 = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n"
    b'ETag: "v1"\r\nLast-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\nhello'
)


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one response with a Content-Length body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


class Cache:
    """A harness with one caching route ``all`` to backend ``app`` (servers s1, s2)."""

    def __init__(
        self,
        case: SynchronousTestCase,
        servers: int = 1,
        directory: str | None = None,
        backend: dict[str, object] | None = None,
        **route: object,
    ) -> None:
        if directory is None:
            directory = tempfile.mkdtemp(prefix="gateway-cache-")
            case.addCleanup(shutil.rmtree, directory, True)
        self.directory = directory
        gateway = {"cache_dir": directory, "cache_purge_from": ("192.0.2.0/24",)}
        for key in [k for k in route if k.startswith("gw_")]:
            gateway[key[3:]] = route.pop(key)
        self.h = Harness(
            simple_config(servers=servers, route={"cache": True, **route}, backend=backend, **gateway)
        )
        self.clock = self.h.clock

    @property
    def store(self):
        cache = self.h.runtime.cache
        assert cache is not None
        return cache.store

    def request(self, target: str = "/x", headers: str = "", method: str = "GET",
                client: Peer | None = None, host: str = "192.0.2.10") -> Peer:
        client = client or self.h.client(host=host)
        client.send(f"{method} {target} HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n".encode())
        return client

    def answer(self, client: Peer) -> tuple[int, dict[str, str], bytes]:
        """Run pending reactor turns, then parse what the client received."""
        for _ in range(100):
            self.clock.advance(0)
        return parse(client.received())

    def upstream(self) -> Peer:
        """The origin of the request just sent: a new connection, or the pooled one reused."""
        if self.h.pending_connects():
            self.last = self.h.upstream()
        return self.last

    def fill(self, target: str = "/x", response: bytes = OK_60, headers: str = "") -> Peer:
        """One miss answered by the origin with ``response``; the origin peer."""
        client = self.request(target, headers)
        origin = self.upstream()
        origin.received()
        origin.send(response)
        self.answer(client)
        return origin

    def entry_files(self) -> list[str]:
        """Entry files and their temporaries: everything under the ``ab/cd/`` fan directories
        (the journal and the janitor lock sit at the top)."""
        found = []
        for root, _, files in os.walk(self.directory):
            if root != self.directory:
                found += [os.path.join(root, f) for f in files]
        return found


class HitTests(SynchronousTestCase):
    """Storing a response and answering from the store (RFC 9111 §3, §4)."""

    def test_miss_stored_then_hit(self) -> None:
        """RFC 9111 §3: a storable 200 is stored; the next request is answered without the origin."""
        c = Cache(self)
        client = c.request()
        origin = c.h.upstream()
        origin.send(OK_60)
        status, headers, body = c.answer(client)
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(headers["cache-status"], "gateway; fwd=uri-miss; fwd-status=200; ttl=60; stored")
        c.clock.advance(10)
        status, headers, body = c.answer(c.request())
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(headers["age"], "10")
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=50")
        self.assertEqual(c.h.pending_connects(), 0)
        self.assertEqual(origin.received().count(b"GET /x"), 1)

    def test_hit_keeps_origin_date_and_adds_via(self) -> None:
        """RFC 9110 §6.6.1: a stored response keeps its Date; §7.6.3: Via is added; Server is ours."""
        c = Cache(self)
        c.fill(response=OK_60.replace(b"ETag", b"Server: origin/9\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nETag"))
        c.clock.advance(5)
        _, headers, _ = c.answer(c.request())
        self.assertEqual(headers["date"], "Thu, 01 Jan 1970 00:00:00 GMT")
        self.assertEqual(headers["via"], "1.1 gateway")
        self.assertEqual(headers["server"], "gateway")

    def test_age_includes_upstream_age(self) -> None:
        """RFC 9111 §4.2.3: the stored Age counts in the corrected initial age."""
        c = Cache(self)
        c.fill(response=OK_60.replace(b"ETag", b"Age: 20\r\nETag"))
        c.clock.advance(5)
        _, headers, _ = c.answer(c.request())
        self.assertEqual(headers["age"], "25")
        self.assertIn("ttl=35", headers["cache-status"])

    def test_head_from_stored_get(self) -> None:
        """RFC 9110 §9.3.2: HEAD is answered from a stored GET, with its Content-Length and no body."""
        c = Cache(self)
        c.fill()
        client = c.request(method="HEAD")
        c.clock.advance(0)
        data = client.received()
        self.assertTrue(data.endswith(b"\r\n\r\n"), data)
        self.assertIn(b"Content-Length: 5\r\n", data)
        self.assertIn(b"gateway; hit", data)

    def test_conditional_if_none_match_gets_304(self) -> None:
        """RFC 9111 §4.3.2: a matching If-None-Match is answered 304 from the cache."""
        c = Cache(self)
        c.fill()
        status, headers, body = c.answer(c.request(headers='If-None-Match: "v1"\r\n'))
        self.assertEqual((status, body), (304, b""))
        self.assertEqual(headers["etag"], '"v1"')
        self.assertNotIn("content-length", headers)

    def test_conditional_if_modified_since_gets_304(self) -> None:
        """RFC 9111 §4.3.2: If-Modified-Since not before Last-Modified gets 304."""
        c = Cache(self)
        c.fill()
        status, _, _ = c.answer(c.request(headers="If-Modified-Since: Thu, 01 Jan 1970 00:00:10 GMT\r\n"))
        self.assertEqual(status, 304)

    def test_non_matching_conditional_gets_200(self) -> None:
        """RFC 9110 §13.1.2: another entity tag means the full stored response."""
        c = Cache(self)
        c.fill()
        status, _, body = c.answer(c.request(headers='If-None-Match: "v0"\r\n'))
        self.assertEqual((status, body), (200, b"hello"))

    def test_range_answered_206_from_full_response(self) -> None:
        """RFC 9110 §14.2: a single range of a stored 200 is answered 206 with Content-Range."""
        c = Cache(self)
        c.fill()
        status, headers, body = c.answer(c.request(headers="Range: bytes=1-3\r\n"))
        self.assertEqual((status, body), (206, b"ell"))
        self.assertEqual(headers["content-range"], "bytes 1-3/5")
        self.assertEqual(headers["content-length"], "3")

    def test_unsatisfiable_range_gets_416(self) -> None:
        """RFC 9110 §15.5.17: 416 with Content-Range: bytes */length."""
        c = Cache(self)
        c.fill()
        status, headers, _ = c.answer(c.request(headers="Range: bytes=10-\r\n"))
        self.assertEqual(status, 416)
        self.assertEqual(headers["content-range"], "bytes */5")
        self.assertIn("cache-status", headers)

    def test_if_range_mismatch_sends_whole(self) -> None:
        """RFC 9110 §13.1.5: an If-Range that doesn't match gets the whole 200."""
        c = Cache(self)
        c.fill()
        status, _, body = c.answer(c.request(headers='Range: bytes=1-3\r\nIf-Range: "v0"\r\n'))
        self.assertEqual((status, body), (200, b"hello"))

    def test_range_miss_forwarded_and_not_stored(self) -> None:
        """A Range request on a miss goes to the origin as it is; its 206 is never stored (§3.3)."""
        c = Cache(self)
        client = c.request(headers="Range: bytes=0-1\r\n")
        origin = c.h.upstream()
        self.assertIn(b"Range: bytes=0-1", origin.received())
        origin.send(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/5\r\nContent-Length: 2\r\n\r\nhe")
        status, _, body = c.answer(client)
        self.assertEqual((status, body), (206, b"he"))
        self.assertEqual(len(c.store), 0)

    def test_miss_drops_client_conditionals(self) -> None:
        """A conditional request on a miss is forwarded without its conditions, so the answer is storable."""
        c = Cache(self)
        client = c.request(headers='If-None-Match: "v1"\r\n')
        origin = c.h.upstream()
        self.assertNotIn(b"If-None-Match", origin.received())
        origin.send(OK_60)
        status, _, _ = c.answer(client)
        self.assertEqual(status, 200)
        self.assertEqual(len(c.store), 1)

    def test_cache_status_off(self) -> None:
        """cache_status = false: no Cache-Status field, hit or miss."""
        c = Cache(self, cache_status=False)
        client = c.request()
        c.h.upstream().send(OK_60)
        self.assertNotIn("cache-status", c.answer(client)[1])
        self.assertNotIn("cache-status", c.answer(c.request())[1])

    def test_cache_status_name(self) -> None:
        """cache_status_name names the cache in Cache-Status (RFC 9211 §2)."""
        c = Cache(self, gw_cache_status_name="edge-1")
        c.fill()
        self.assertTrue(c.answer(c.request())[1]["cache-status"].startswith("edge-1; hit"))

    def test_upstream_cache_status_kept(self) -> None:
        """RFC 9211 §2: an existing Cache-Status list is kept; ours goes last."""
        c = Cache(self)
        client = c.request()
        c.h.upstream().send(OK_60.replace(b"ETag", b"Cache-Status: origin-cache; hit\r\nETag"))
        self.assertEqual(
            c.answer(client)[1]["cache-status"],
            "origin-cache; hit, gateway; fwd=uri-miss; fwd-status=200; ttl=60; stored",
        )

    def test_non_caching_route_untouched(self) -> None:
        """A route without cache = true gets no Cache-Status and stores nothing."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        h = Harness(simple_config(servers=1, cache_dir=directory))
        client = h.client()
        client.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertNotIsInstance(client.protocol._exchange, CacheExchange)
        h.upstream().send(OK_60)
        self.assertNotIn(b"Cache-Status", client.received())


class StorabilityTests(SynchronousTestCase):
    """What is not stored, and the detail Cache-Status gives (RFC 9111 §3)."""

    def miss_twice(self, response: bytes, headers: str = "", **route: object) -> tuple[dict[str, str], int]:
        """Cache-Status of the first answer, and how many requests reached the origin for two."""
        c = Cache(self, **route)
        client = c.request(headers=headers)
        origin = c.h.upstream()
        origin.send(response)
        first = c.answer(client)[1]
        client = c.request(headers=headers)
        seen = origin.received().count(b"GET /x")
        if seen < 2:
            self.assertEqual(c.answer(client)[0], 200)
        return first, seen

    def test_private_not_stored(self) -> None:
        """RFC 9111 §5.2.2.7: a shared cache MUST NOT store a private response."""
        status, seen = self.miss_twice(OK_60.replace(b"max-age=60", b"private, max-age=60"))
        self.assertIn("detail=private", status["cache-status"])
        self.assertEqual(seen, 2)

    def test_no_store_not_stored(self) -> None:
        """RFC 9111 §5.2.2.5: no-store."""
        status, seen = self.miss_twice(OK_60.replace(b"max-age=60", b"no-store"))
        self.assertIn("detail=no-store", status["cache-status"])
        self.assertEqual(seen, 2)

    def test_set_cookie_not_stored_by_default(self) -> None:
        """Responses with Set-Cookie are not stored unless cache_store_set_cookie (RFC 9111 §7.3)."""
        response = OK_60.replace(b"ETag", b"Set-Cookie: s=1\r\nETag")
        status, seen = self.miss_twice(response)
        self.assertIn("detail=set-cookie", status["cache-status"])
        self.assertEqual(seen, 2)

    def test_set_cookie_stored_when_allowed(self) -> None:
        """cache_store_set_cookie = true stores the response with its Set-Cookie."""
        response = OK_60.replace(b"ETag", b"Set-Cookie: s=1\r\nETag")
        c = Cache(self, cache_store_set_cookie=True)
        c.fill(response=response)
        status, headers, _ = c.answer(c.request())
        self.assertEqual(headers["set-cookie"], "s=1")
        self.assertIn("hit", headers["cache-status"])

    def test_authorization_not_stored_without_public(self) -> None:
        """RFC 9111 §3.5: a response to a request with Authorization is stored only if public/s-maxage/must-revalidate."""
        status, seen = self.miss_twice(OK_60, headers="Authorization: Basic eDp5\r\n")
        self.assertIn("detail=authorization", status["cache-status"])
        self.assertEqual(seen, 2)
        status, seen = self.miss_twice(
            OK_60.replace(b"max-age=60", b"public, max-age=60"), headers="Authorization: Basic eDp5\r\n"
        )
        self.assertEqual(seen, 1)

    def test_vary_star_not_stored(self) -> None:
        """RFC 9111 §4.1: Vary: * always fails to match, so it is not stored."""
        status, seen = self.miss_twice(OK_60.replace(b"ETag", b"Vary: *\r\nETag"))
        self.assertIn("detail=vary-star", status["cache-status"])
        self.assertEqual(seen, 2)

    def test_head_miss_not_stored(self) -> None:
        """A HEAD miss is forwarded as HEAD and stores nothing (no content to store)."""
        c = Cache(self)
        client = c.request(method="HEAD")
        origin = c.h.upstream()
        self.assertTrue(origin.received().startswith(b"HEAD /x"))
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\n")
        c.clock.advance(0)
        self.assertIn(b"fwd=uri-miss", client.received())
        self.assertEqual(len(c.store), 0)

    def test_max_object_size_content_length(self) -> None:
        """A body announced larger than cache_max_object is passed on, not stored."""
        c = Cache(self, gw_cache_max_object=1024, gw_cache_max_size=1024 * 1024)
        body = b"z" * 2000
        client = c.request()
        c.h.upstream().send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2000\r\n\r\n" + body)
        status, headers, got = c.answer(client)
        self.assertEqual((status, got), (200, body))
        self.assertIn("detail=too-large", headers["cache-status"])
        self.assertEqual(len(c.store), 0)

    def test_max_object_size_chunked_stops_storing_midway(self) -> None:
        """A chunked body that grows past cache_max_object stops being stored; the client gets it all."""
        c = Cache(self, gw_cache_max_object=1024, gw_cache_max_size=1024 * 1024)
        client = c.request()
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            origin.send(b"200\r\n" + b"q" * 512 + b"\r\n")
        origin.send(b"0\r\n\r\n")
        c.clock.advance(0)
        data = client.received()
        self.assertEqual(data.count(b"q"), 2048)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))
        self.assertEqual(len(c.store), 0)
        self.assertEqual(c.entry_files(), [])

    def test_body_streams_before_it_is_stored(self) -> None:
        """The body reaches the client as it arrives; the entry appears only after the last byte."""
        c = Cache(self)
        client = c.request()
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 6\r\n\r\nabc")
        self.assertTrue(client.received().endswith(b"abc"))
        self.assertEqual(len(c.store), 0)
        origin.send(b"def")
        self.assertEqual(client.received(), b"def")
        self.assertEqual(len(c.store), 1)

    def test_write_failure_still_answers(self) -> None:
        """A store write that fails stops storing; the client still gets the whole response."""
        c = Cache(self)
        client = c.request()
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 6\r\n\r\nabc")
        client.received()
        writer = client.protocol._exchange._intake._writer
        writer._file.close()
        writer._file = _Broken()
        origin.send(b"def")
        self.assertEqual(client.received(), b"def")
        self.assertEqual(len(c.store), 0)

    def test_cut_response_not_stored(self) -> None:
        """An origin that dies mid-body leaves no entry and no temporary file."""
        c = Cache(self)
        client = c.request()
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 6\r\n\r\nabc")
        origin.lose()
        self.assertTrue(client.closed)
        self.assertEqual(len(c.store), 0)
        self.assertEqual(c.entry_files(), [])


class _Broken:
    """A file whose writes fail like a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


class VaryTests(SynchronousTestCase):
    """Secondary keys (RFC 9111 §4.1)."""

    def test_vary_selects_by_request_field(self) -> None:
        """RFC 9111 §4.1: a stored response is used only for matching varied fields."""
        c = Cache(self)
        response = OK_60.replace(b"ETag", b"Vary: Accept-Language\r\nETag")
        origin = c.fill(response=response, headers="Accept-Language: en\r\n")
        self.assertIn("hit", c.answer(c.request(headers="Accept-Language: en\r\n"))[1]["cache-status"])
        client = c.request(headers="Accept-Language: fr\r\n")
        c.clock.advance(0)
        self.assertIn(b"Accept-Language: fr", origin.received())
        origin.send(response.replace(b"hello", b"salut"))
        status, headers, body = c.answer(client)
        self.assertEqual(body, b"salut")
        self.assertIn("fwd=vary-miss", headers["cache-status"])
        self.assertEqual(c.answer(c.request(headers="Accept-Language: en\r\n"))[2], b"hello")
        self.assertEqual(c.answer(c.request(headers="Accept-Language: fr\r\n"))[2], b"salut")

    def test_vary_normalises_whitespace(self) -> None:
        """RFC 9111 §4.1: values match after whitespace normalisation."""
        c = Cache(self)
        response = OK_60.replace(b"ETag", b"Vary: Accept-Encoding\r\nETag")
        c.fill(response=response, headers="Accept-Encoding: gzip,br\r\n")
        headers = c.answer(c.request(headers="Accept-Encoding: gzip, br\r\n"))[1]
        self.assertIn("hit", headers["cache-status"])


class RevalidationTests(SynchronousTestCase):
    """Stale entries, no-cache, and the 304 update (RFC 9111 §4.3)."""

    def test_stale_revalidated_and_freshened(self) -> None:
        """RFC 9111 §4.3.1/§4.3.4: If-None-Match and If-Modified-Since go up; a 304 freshens the entry."""
        c = Cache(self)
        origin = c.fill()
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        sent = origin.received()
        self.assertIn(b'If-None-Match: "v1"', sent)
        self.assertIn(b"If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT", sent)
        origin.send(b'HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=120\r\nETag: "v1"\r\nX-New: 1\r\n\r\n')
        status, headers, body = c.answer(client)
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(headers["cache-status"], "gateway; fwd=stale; fwd-status=304; ttl=120")
        self.assertEqual(headers["cache-control"], "max-age=120")
        self.assertEqual(headers["x-new"], "1")
        c.clock.advance(100)
        status, headers, _ = c.answer(c.request())
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=20")
        self.assertEqual(headers["x-new"], "1")

    def test_stale_replaced_by_200(self) -> None:
        """RFC 9111 §4.3.3: a full response to a revalidation is used and stored instead."""
        c = Cache(self)
        origin = c.fill()
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        origin.received()
        origin.send(OK_60.replace(b"hello", b"world").replace(b'"v1"', b'"v2"'))
        status, headers, body = c.answer(client)
        self.assertEqual(body, b"world")
        self.assertIn("fwd=stale; fwd-status=200", headers["cache-status"])
        self.assertIn("stored", headers["cache-status"])
        self.assertEqual(c.answer(c.request())[2], b"world")

    def test_304_for_another_representation_refetches(self) -> None:
        """RFC 9111 §4.3.4: a 304 whose strong validator selects no stored response updates nothing."""
        c = Cache(self)
        origin = c.fill()
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        origin.received()
        origin.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v9"\r\n\r\n')
        c.clock.advance(0)
        sent = origin.received()
        self.assertIn(b"GET /x", sent)
        self.assertNotIn(b"If-None-Match", sent)
        origin.send(OK_60.replace(b"hello", b"fresh"))
        self.assertEqual(c.answer(client)[2], b"fresh")

    def test_head_revalidated_with_head(self) -> None:
        """A stale entry and a HEAD request: a conditional HEAD goes up; a 304 is answered from the store."""
        c = Cache(self)
        origin = c.fill()
        c.clock.advance(61)
        client = c.request(method="HEAD")
        c.clock.advance(0)
        sent = origin.received()
        self.assertTrue(sent.startswith(b"HEAD /x"), sent)
        self.assertIn(b'If-None-Match: "v1"', sent)
        origin.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n')
        for _ in range(5):
            c.clock.advance(0)
        data = client.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertTrue(data.endswith(b"\r\n\r\n"))
        self.assertIn(b"fwd-status=304", data)

    def test_response_no_cache_always_revalidated(self) -> None:
        """RFC 9111 §5.2.2.4: no-cache: never reused without successful validation."""
        c = Cache(self)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"no-cache, max-age=60"))
        client = c.request()
        c.clock.advance(0)
        self.assertIn(b'If-None-Match: "v1"', origin.received())
        origin.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        self.assertEqual(c.answer(client)[2], b"hello")

    def test_request_no_cache_revalidates_fresh_entry(self) -> None:
        """RFC 9111 §5.2.1.4: request no-cache: the cache MUST NOT use a stored response without validation."""
        c = Cache(self)
        origin = c.fill()
        client = c.request(headers="Cache-Control: no-cache\r\n")
        c.clock.advance(0)
        self.assertIn(b"If-None-Match", origin.received())
        origin.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n')
        headers = c.answer(client)[1]
        self.assertIn("fwd=request; fwd-status=304", headers["cache-status"])

    def test_request_max_age(self) -> None:
        """RFC 9111 §5.2.1.1: max-age=5 refuses a stored response 10 seconds old."""
        c = Cache(self)
        origin = c.fill()
        c.clock.advance(10)
        c.request(headers="Cache-Control: max-age=5\r\n")
        c.clock.advance(0)
        self.assertIn(b"If-None-Match", origin.received())

    def test_request_max_stale_serves_stale(self) -> None:
        """RFC 9111 §5.2.1.2: max-stale lets a stale response be served without validation."""
        c = Cache(self)
        c.fill()
        c.clock.advance(70)
        status, headers, body = c.answer(c.request(headers="Cache-Control: max-stale=60\r\n"))
        self.assertEqual(body, b"hello")
        self.assertIn("hit; ttl=-10", headers["cache-status"])

    def test_only_if_cached_miss_gets_504(self) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached with nothing stored: 504."""
        c = Cache(self)
        status, headers, _ = c.answer(c.request(headers="Cache-Control: only-if-cached\r\n"))
        self.assertEqual(status, 504)
        self.assertIn("detail=only-if-cached", headers["cache-status"])
        self.assertEqual(c.h.pending_connects(), 0)

    def test_only_if_cached_hit(self) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached with a fresh stored response: served."""
        c = Cache(self)
        c.fill()
        self.assertEqual(c.answer(c.request(headers="Cache-Control: only-if-cached\r\n"))[0], 200)

    def test_must_revalidate_not_served_stale_on_error(self) -> None:
        """RFC 9111 §5.2.2.2: once stale, must-revalidate forbids reuse when the origin fails."""
        c = Cache(self, cache_stale_if_error=3600.0)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, must-revalidate"))
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        origin.received()
        origin.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
        status, _, body = c.answer(client)
        self.assertEqual((status, body), (503, b"down"))

    def test_proxy_revalidate_not_served_stale_with_max_stale(self) -> None:
        """RFC 9111 §5.2.2.8: proxy-revalidate beats the request's max-stale in a shared cache."""
        c = Cache(self)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, proxy-revalidate"))
        c.clock.advance(61)
        c.request(headers="Cache-Control: max-stale\r\n")
        c.clock.advance(0)
        self.assertIn(b"If-None-Match", origin.received())

    def test_heuristic_freshness_from_last_modified(self) -> None:
        """RFC 9111 §4.2.2: no explicit freshness: 10% of Date - Last-Modified."""
        c = Cache(self)
        c.clock.advance(1000)
        c.fill(response=(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Thu, 01 Jan 1970 00:16:40 GMT\r\n"
            b"Last-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\nhello"
        ))  # fmt: skip
        headers = c.answer(c.request())[1]
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=100")

    def test_targeted_field_overrides_cache_control(self) -> None:
        """RFC 9213 §2.2: CDN-Cache-Control overrides Cache-Control for this cache."""
        c = Cache(self)
        c.fill(response=OK_60.replace(b"max-age=60", b"no-store\r\nCDN-Cache-Control: max-age=30"))
        headers = c.answer(c.request())[1]
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=30")

    def test_own_targeted_field_first(self) -> None:
        """cache_target_field is more specific than CDN-Cache-Control (RFC 9213 §2.2 target list)."""
        c = Cache(self, cache_target_field="Gateway-Cache-Control")
        c.fill(response=OK_60.replace(
            b"max-age=60", b"max-age=60\r\nCDN-Cache-Control: max-age=30\r\nGateway-Cache-Control: max-age=10"
        ))  # fmt: skip
        headers = c.answer(c.request())[1]
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=10")


class StaleTests(SynchronousTestCase):
    """stale-while-revalidate and stale-if-error (RFC 5861)."""

    def test_stale_while_revalidate_serves_and_refreshes_once(self) -> None:
        """RFC 5861 §3: served stale at once; one background revalidation however many requests."""
        c = Cache(self)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-while-revalidate=30"))
        c.clock.advance(70)
        status, headers, body = c.answer(c.request())
        self.assertEqual((status, body), (200, b"hello"))
        self.assertIn("hit; ttl=-10; detail=stale-while-revalidate", headers["cache-status"])
        self.assertEqual(c.answer(c.request())[2], b"hello")
        sent = origin.received()
        self.assertEqual(sent.count(b"GET /x"), 1)
        self.assertIn(b'If-None-Match: "v1"', sent)
        origin.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n')
        c.clock.advance(0)
        self.assertEqual(c.h.runtime.cache.refreshing, 0)
        headers = c.answer(c.request())[1]
        self.assertEqual(headers["cache-status"], "gateway; hit; ttl=60")

    def test_stale_while_revalidate_head_refreshes_with_get(self) -> None:
        """A HEAD that triggers a background revalidation revalidates the stored GET with GET."""
        c = Cache(self)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-while-revalidate=30"))
        c.clock.advance(70)
        c.answer(c.request(method="HEAD"))
        self.assertTrue(origin.received().startswith(b"GET /x"))
        origin.send(OK_60.replace(b"hello", b"newer"))
        c.clock.advance(0)
        self.assertEqual(c.answer(c.request())[2], b"newer")

    def test_background_revalidation_failure_releases_claim(self) -> None:
        """A failed background revalidation is logged; the next stale request may start another."""
        c = Cache(self, backend={"retries": 0, "pool_max_idle": 0})
        c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-while-revalidate=30"))
        c.clock.advance(70)
        self.assertEqual(c.answer(c.request())[0], 200)
        self.assertEqual(c.h.runtime.cache.refreshing, 1)
        c.h.refuse()
        self.assertEqual(c.h.runtime.cache.refreshing, 0)
        self.assertEqual(c.answer(c.request())[0], 200)
        self.assertEqual(c.h.pending_connects(), 1)

    def test_stale_if_error_on_connect_failure(self) -> None:
        """RFC 5861 §4: stale-if-error serves stale when the origin can't be reached, then stops."""
        c = Cache(self, backend={"retries": 0, "pool_max_idle": 0})
        c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-if-error=100"))
        c.clock.advance(61)
        client = c.request()
        c.h.refuse()
        status, headers, body = c.answer(client)
        self.assertEqual((status, body), (200, b"hello"))
        self.assertIn("fwd=stale", headers["cache-status"])
        self.assertIn("detail=stale-if-error", headers["cache-status"])
        c.clock.advance(100)
        client = c.request()
        c.h.refuse()
        status, headers, _ = c.answer(client)
        self.assertEqual(status, 502)
        self.assertIn("cache-status", headers)

    def test_stale_if_error_on_5xx(self) -> None:
        """RFC 5861 §4: a 500/502/503/504 from the origin counts as an error."""
        c = Cache(self)
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-if-error=100"))
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        origin.received()
        origin.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
        status, headers, body = c.answer(client)
        self.assertEqual((status, body), (200, b"hello"))
        self.assertIn("fwd=stale; fwd-status=503", headers["cache-status"])

    def test_stale_if_error_on_timeout(self) -> None:
        """RFC 5861 §4: an origin that times out counts as an error."""
        c = Cache(self, backend={"retries": 0, "timeout_response": 2.0})
        origin = c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-if-error=100"))
        c.clock.advance(61)
        client = c.request()
        c.clock.advance(0)
        origin.received()
        c.clock.advance(2.5)
        status, _, body = c.answer(client)
        self.assertEqual((status, body), (200, b"hello"))

    def test_default_stale_if_error_window(self) -> None:
        """cache_stale_if_error applies when the origin gives no stale-if-error (RFC 9111 §4.2.4)."""
        c = Cache(self, cache_stale_if_error=30.0, backend={"retries": 0, "pool_max_idle": 0})
        c.fill()
        c.clock.advance(80)
        client = c.request()
        c.h.refuse()
        self.assertEqual(c.answer(client)[0], 200)
        c.clock.advance(20)
        client = c.request()
        c.h.refuse()
        self.assertEqual(c.answer(client)[0], 502)

    def test_no_stale_if_error_without_window(self) -> None:
        """Without any stale-if-error window, a failed revalidation answers the error."""
        c = Cache(self, backend={"retries": 0, "pool_max_idle": 0})
        c.fill()
        c.clock.advance(61)
        client = c.request()
        c.h.refuse()
        self.assertEqual(c.answer(client)[0], 502)

    def test_stale_if_error_when_no_server_available(self) -> None:
        """Every server down (no lease: 503) counts as an error too."""
        c = Cache(self, backend={"retries": 0, "eject_consecutive": 1, "eject_max_share": 1.0, "pool_max_idle": 0})
        c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-if-error=100"))
        c.clock.advance(61)
        client = c.request()
        c.h.refuse()  # ejects s1
        self.assertEqual(c.answer(client)[0], 200)
        client = c.request()
        status, _, body = c.answer(client)
        self.assertEqual(c.h.pending_connects(), 0)
        self.assertEqual((status, body), (200, b"hello"))


class CollapseTests(SynchronousTestCase):
    """Concurrent misses for one key make one origin request."""

    def test_concurrent_misses_one_origin_request(self) -> None:
        """Three clients, one origin request; the waiters are answered from the store, collapsed."""
        c = Cache(self)
        first = c.request()
        others = [c.request(host=f"192.0.2.{20 + i}") for i in range(2)]
        self.assertEqual(c.h.pending_connects(), 1)
        origin = c.h.upstream()
        self.assertEqual(origin.received().count(b"GET /x"), 1)
        origin.send(OK_60)
        self.assertEqual(c.answer(first)[2], b"hello")
        for client in others:
            status, headers, body = c.answer(client)
            self.assertEqual((status, body), (200, b"hello"))
            self.assertEqual(headers["cache-status"], "gateway; fwd=uri-miss; ttl=60; collapsed")
        self.assertEqual(c.h.pending_connects(), 0)

    def test_unstorable_releases_waiters_at_head(self) -> None:
        """A private response releases the waiters at its head; each makes its own request."""
        c = Cache(self)
        first = c.request()
        second = c.request(host="192.0.2.30")
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 6\r\n\r\nfir")
        self.assertEqual(c.h.pending_connects(), 1)
        other = c.h.upstream()
        other.send(b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 6\r\n\r\nsecond")
        status, headers, body = c.answer(second)
        self.assertEqual(body, b"second")
        self.assertIn("collapsed=?0", headers["cache-status"])
        origin.send(b"st")
        self.assertEqual(c.answer(first)[2], b"first")

    def test_vary_mismatch_releases_waiter(self) -> None:
        """A waiter whose varied field differs from the leader's is released at the head."""
        c = Cache(self)
        first = c.request(headers="Accept-Language: en\r\n")
        same = c.request(headers="Accept-Language: en\r\n", host="192.0.2.31")
        other = c.request(headers="Accept-Language: fr\r\n", host="192.0.2.32")
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Language\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(c.h.pending_connects(), 1)
        fr = c.h.upstream()
        self.assertIn(b"Accept-Language: fr", fr.received())
        origin.send(b"en")
        self.assertEqual(c.answer(first)[2], b"en")
        self.assertEqual(c.answer(same)[2], b"en")
        fr.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Language\r\nContent-Length: 2\r\n\r\nfr")
        self.assertEqual(c.answer(other)[2], b"fr")

    def test_collapse_timeout(self) -> None:
        """A waiter gives up after cache_collapse_timeout and makes its own request."""
        c = Cache(self, cache_collapse_timeout=2.0)
        c.request()
        waiter = c.request(host="192.0.2.33")
        c.h.upstream()
        c.clock.advance(1.9)
        self.assertEqual(c.h.pending_connects(), 0)
        c.clock.advance(0.2)
        self.assertEqual(c.h.pending_connects(), 1)
        own = c.h.upstream()
        own.send(OK_60)
        self.assertEqual(c.answer(waiter)[2], b"hello")

    def test_no_collapsing_with_zero_timeout(self) -> None:
        """cache_collapse_timeout = 0: every miss goes to the origin."""
        c = Cache(self, cache_collapse_timeout=0.0)
        c.request()
        c.request(host="192.0.2.34")
        self.assertEqual(c.h.pending_connects(), 2)

    def test_leader_failure_releases_waiters(self) -> None:
        """The leader's origin failing lets the waiters try for themselves."""
        c = Cache(self, backend={"retries": 0, "pool_max_idle": 0})
        first = c.request()
        second = c.request(host="192.0.2.35")
        c.h.refuse()
        self.assertEqual(c.answer(first)[0], 502)
        self.assertEqual(c.h.pending_connects(), 1)
        c.h.upstream().send(OK_60)
        self.assertEqual(c.answer(second)[2], b"hello")

    def test_leader_failure_waiters_served_stale(self) -> None:
        """Waiters on a revalidation that fails are served stale when allowed, without asking again."""
        c = Cache(self, backend={"retries": 0, "pool_max_idle": 0})
        c.fill(response=OK_60.replace(b"max-age=60", b"max-age=60, stale-if-error=100"))
        c.clock.advance(61)
        first = c.request()
        second = c.request(host="192.0.2.36")
        c.h.refuse()
        self.assertEqual(c.answer(first)[0], 200)
        status, headers, _ = c.answer(second)
        self.assertEqual(status, 200)
        self.assertIn("collapsed", headers["cache-status"])
        self.assertEqual(c.h.pending_connects(), 0)

    def test_leader_client_gone_releases_waiters(self) -> None:
        """A leader whose client goes away releases its waiters to ask for themselves."""
        c = Cache(self)
        first = c.request()
        second = c.request(host="192.0.2.37")
        c.h.upstream()
        first.lose()
        self.assertEqual(c.h.pending_connects(), 1)
        c.h.upstream().send(OK_60)
        self.assertEqual(c.answer(second)[2], b"hello")

    def test_leader_cut_mid_body_releases_waiters(self) -> None:
        """An origin that dies in the leader's body: nothing stored, the waiters ask for themselves."""
        c = Cache(self, backend={"pool_max_idle": 0})
        first = c.request()
        second = c.request(host="192.0.2.39")
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 6\r\n\r\nabc")
        origin.lose()
        self.assertTrue(first.closed)
        self.assertEqual(c.h.pending_connects(), 1)
        c.h.upstream().send(OK_60)
        self.assertEqual(c.answer(second)[2], b"hello")

    def test_waiter_gone_is_forgotten(self) -> None:
        """A waiting client that goes away is never woken."""
        c = Cache(self)
        first = c.request()
        second = c.request(host="192.0.2.38")
        origin = c.h.upstream()
        second.lose()
        origin.send(OK_60)
        self.assertEqual(c.answer(first)[2], b"hello")
        self.assertEqual(len(c.h.runtime.cache.fills), 0)


class InvalidationTests(SynchronousTestCase):
    """RFC 9111 §4.4: unsafe methods invalidate."""

    def test_post_invalidates_target(self) -> None:
        """A 2xx to POST removes the stored responses for its target URI."""
        c = Cache(self)
        origin = c.fill()
        client = c.request(method="POST", headers="Content-Length: 0\r\n")
        c.clock.advance(0)
        origin.received()
        origin.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"fwd=method; fwd-status=204", client.received())
        self.assertEqual(len(c.store), 0)

    def test_location_same_origin_invalidated(self) -> None:
        """Same-origin Location and Content-Location are invalidated; another origin's are not."""
        c = Cache(self)
        c.fill("/a")
        c.fill("/b")
        client = c.request("/x", method="PUT", headers="Content-Length: 0\r\n")
        c.clock.advance(0)
        up = c.upstream()
        up.received()
        up.send(b"HTTP/1.1 201 Created\r\nLocation: /a\r\nContent-Location: http://other.example/b\r\nContent-Length: 0\r\n\r\n")
        c.clock.advance(0)
        client.received()
        self.assertEqual(c.store.variants(b"http://example.com/a"), [])
        self.assertEqual(len(c.store.variants(b"http://example.com/b")), 1)

    def test_error_does_not_invalidate(self) -> None:
        """A 4xx/5xx to an unsafe method invalidates nothing (not a "non-error" status)."""
        c = Cache(self)
        origin = c.fill()
        c.request(method="DELETE")
        c.clock.advance(0)
        origin.received()
        origin.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(c.store), 1)


class PurgeTests(SynchronousTestCase):
    """PURGE of a URL or prefix, from cache_purge_from only."""

    def test_purge_url(self) -> None:
        """An allowed address purges a URL; the next GET goes to the origin."""
        c = Cache(self)
        c.fill()
        status, _, body = c.answer(c.request(method="PURGE"))
        self.assertEqual((status, body), (200, b"purged 1\n"))
        self.assertEqual(len(c.store), 0)

    def test_purge_prefix(self) -> None:
        """A target ending in * purges every URL under it."""
        c = Cache(self)
        c.fill("/img/a")
        c.fill("/img/b")
        c.fill("/other")
        status, _, body = c.answer(c.request("/img/*", method="PURGE"))
        self.assertEqual(body, b"purged 2\n")
        self.assertEqual(len(c.store), 1)

    def test_purge_refused_from_other_address(self) -> None:
        """PURGE from an address not in cache_purge_from gets 405 and purges nothing."""
        c = Cache(self)
        c.fill()
        status, _, _ = c.answer(c.request(method="PURGE", host="198.51.100.7"))
        self.assertEqual(status, 405)
        self.assertEqual(len(c.store), 1)

    def test_purge_refused_by_default(self) -> None:
        """With cache_purge_from empty nobody may purge."""
        c = Cache(self, gw_cache_purge_from=())
        self.assertEqual(c.answer(c.request(method="PURGE"))[0], 405)

    def test_purge_uses_route_key_rules(self) -> None:
        """An exact purge finds the entry stored under the route's normalised key."""
        c = Cache(self, cache_key_sort_query=True, cache_key_drop_params=("utm",))
        c.fill("/q?b=2&a=1&utm=x")
        self.assertEqual(c.answer(c.request("/q?a=1&b=2", method="PURGE"))[2], b"purged 1\n")

    def test_key_rules_share_entries(self) -> None:
        """cache_key_sort_query and cache_key_drop_params make spellings share one entry."""
        c = Cache(self, cache_key_sort_query=True, cache_key_drop_params=("utm",))
        c.fill("/q?b=2&a=1&utm=x")
        self.assertIn("hit", c.answer(c.request("/q?a=1&b=2&utm=y"))[1]["cache-status"])


class DiskTests(SynchronousTestCase):
    """Corruption, restarts, reloads and the janitor."""

    def test_corrupted_body_refetched(self) -> None:
        """A body that fails its CRC-32 is never served: the entry is dropped and refetched."""
        c = Cache(self)
        origin = c.fill()
        (path,) = c.entry_files()
        with open(path, "r+b") as file:
            file.seek(36 + 1)
            file.write(b"X")
        client = c.request()
        c.clock.advance(0)
        c.clock.advance(0)
        self.assertIn(b"GET /x", origin.received())
        origin.send(OK_60.replace(b"hello", b"again"))
        self.assertEqual(c.answer(client)[2], b"again")

    def test_truncated_entry_refetched(self) -> None:
        """A truncated entry file fails validation on open: dropped, counted as a miss."""
        c = Cache(self)
        origin = c.fill()
        (path,) = c.entry_files()
        os.truncate(path, 40)
        client = c.request()
        self.assertIn(b"GET /x", origin.received())
        origin.send(OK_60)
        status, headers, _ = c.answer(client)
        self.assertIn("fwd=uri-miss", headers["cache-status"])
        self.assertEqual(len(c.store), 1)

    def test_restart_keeps_entries(self) -> None:
        """A new runtime on the same directory loads the entries at start."""
        c = Cache(self)
        c.fill()
        again = Cache(self, directory=c.directory)
        self.assertEqual(len(again.store), 1)
        self.assertIn("hit", again.answer(again.request())[1]["cache-status"])

    def test_reload_carries_cache(self) -> None:
        """A reload with the same cache_dir keeps the store object; bounds are updated."""
        c = Cache(self)
        c.fill()
        old = c.h.runtime
        config = replace(old.config, gateway=replace(old.config.gateway, cache_max_size=2 * 1024**2,
                                                     cache_max_object=1024**2, cache_hot_entries=7))  # fmt: skip
        new = Runtime(c.clock, config, old)
        old.retire(new)
        new.start()
        self.assertIs(new.cache, old.cache)
        self.assertEqual(new.cache.store.max_size, 2 * 1024**2)
        self.assertEqual(new.cache.store.hot_entries, 7)
        self.assertEqual(new.cache.state, CacheState.READY)

    def test_reload_to_other_directory(self) -> None:
        """A reload that moves cache_dir opens a new store and stops the old janitor."""
        c = Cache(self)
        old = c.h.runtime
        other = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, other, True)
        config = replace(old.config, gateway=replace(old.config.gateway, cache_dir=other))
        new = Runtime(c.clock, config, old)
        old.retire(new)
        new.start()
        self.assertIsNot(new.cache, old.cache)
        self.assertEqual(old.cache.state, CacheState.STOPPED)

    def test_janitor_drops_expired(self) -> None:
        """The janitor runs on the clock and removes entries past their use."""
        c = Cache(self)
        c.fill(response=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=5\r\n\r\nhi")
        self.assertEqual(len(c.store), 1)
        c.clock.advance(6)
        self.assertEqual(len(c.store), 0)

    def test_unusable_directory_bypasses(self) -> None:
        """A cache_dir that can't be used is logged; requests are forwarded, nothing stored."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        blocker = os.path.join(directory, "file")
        open(blocker, "w").close()
        c = Cache(self, directory=blocker)
        self.assertEqual(c.h.runtime.cache.state, CacheState.BROKEN)
        client = c.request()
        c.h.upstream().send(OK_60)
        self.assertIn("detail=cache-unavailable", c.answer(client)[1]["cache-status"])
        self.flushLoggedErrors()


class HitWriteTests(SynchronousTestCase):
    """A hit of at most one chunk leaves with its head in one write; a larger one streams with backpressure."""

    def stored(self, size: int) -> Cache:
        c = Cache(self)
        head = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % size
        c.fill(response=head + b"z" * size)
        return c

    def test_one_chunk_written_at_once(self) -> None:
        """CHUNK_SIZE bytes: the whole answer is written before any reactor turn, no producer registered."""
        c = self.stored(CHUNK_SIZE)
        client = c.request()
        self.assertIsNone(client.transport.producer)
        head, body = client.received().split(b"\r\n\r\n", 1)
        self.assertIn(b"Cache-Status: gateway; hit", head)
        self.assertEqual(body, b"z" * CHUNK_SIZE)

    def test_deep_pipeline_of_hits(self) -> None:
        """5000 pipelined hits, each answered at once: all answered in order, no recursion."""
        c = self.stored(100)
        client = c.h.client()
        request = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
        client.send(request * 5000)
        self.assertEqual(client.received().count(b"Cache-Status: gateway; hit"), 5000)
        self.assertFalse(client.closed)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_larger_body_streams(self) -> None:
        """CHUNK_SIZE + 1 bytes: a producer is registered and the body follows on later turns."""
        c = self.stored(CHUNK_SIZE + 1)
        client = c.request()
        self.assertIsNotNone(client.transport.producer)
        self.assertEqual(client.received(), b"")
        status, headers, body = c.answer(client)
        self.assertEqual((status, body), (200, b"z" * (CHUNK_SIZE + 1)))
        self.assertIn("hit", headers["cache-status"])

    def test_one_chunk_corrupted_refetched(self) -> None:
        """The one-write path checks the body's CRC-32 too: a bad body is refetched, never sent."""
        c = self.stored(CHUNK_SIZE)
        (path,) = c.entry_files()
        with open(path, "r+b") as file:
            file.seek(36 + 100)
            file.write(b"X")
        client = c.request()
        origin = c.upstream()
        self.assertIn(b"GET /x", origin.received())
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
        self.assertEqual(c.answer(client)[2], b"again")
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class SpoolTests(SynchronousTestCase):
    """Spoon feeding still works on a miss: the store sees the body as it arrives upstream."""

    def test_slow_client_miss_spooled_and_stored(self) -> None:
        """The client falls behind: the rest goes to the spool, the store gets every byte."""
        spool = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, spool, True)
        c = Cache(self, gw_spool_dir=spool)
        client = c.request()
        origin = c.h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 300000\r\n\r\n" + b"a" * 1000)
        client.transport.producer.pauseProducing()
        origin.send(b"b" * 299000)
        self.assertEqual(len(c.store), 1)
        pool = c.h.runtime.backends["app"].pools["s1"]
        self.assertEqual(pool.idle, [origin.protocol])
        client.transport.producer.resumeProducing()
        for _ in range(200):
            c.clock.advance(0)
        body = client.received().split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"a" * 1000 + b"b" * 299000)
        hit = c.request()
        for _ in range(200):
            c.clock.advance(0)
        self.assertTrue(hit.received().endswith(b"b" * 1000))



