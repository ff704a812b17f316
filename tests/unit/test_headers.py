"""Tests for gateway.headers: hop-by-hop removal, forwarding fields, Via, Server."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.headers import (
    HOP_BY_HOP,
    TrustedProxies,
    forwarded_element,
    is_hop_by_hop,
    request_headers,
    response_headers,
    serialize_head,
)

NO_CONNECTION: frozenset[bytes] = frozenset()


def forward(headers, **overrides):
    """request_headers with a plain untrusted IPv4 client unless overridden."""
    arguments = dict(
        connection=NO_CONNECTION,
        peer_ip="192.0.2.7",
        peer_port=0,
        proto=b"http",
        host=b"example.com",
        via=b"gateway",
        version=b"1.1",
        trusted=False,
        host_override=None,
        listener=b"",
    )
    arguments.update(overrides)
    return request_headers(headers, **arguments)


DATE = b"Sun, 22 Nov 2026 18:01:57 GMT"


def answer(headers, **overrides):
    """response_headers with our defaults unless overridden."""
    arguments = dict(
        connection=NO_CONNECTION, via=b"gateway", version=b"1.1", server=b"gateway", date=DATE
    )
    arguments.update(overrides)
    return response_headers(headers, **arguments)


def values(headers, name):
    """Every value of the fields called ``name`` (case-insensitive), in order."""
    return [value for field, value in headers if field.lower() == name]


class HopByHopTests(SynchronousTestCase):
    def test_fixed_list(self) -> None:
        """RFC 9110 §7.6.1: the connection-specific fields are hop-by-hop."""
        for name in (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"):
            self.assertIn(name, HOP_BY_HOP)
            self.assertTrue(is_hop_by_hop(name))

    def test_proxy_prefix(self) -> None:
        """Every proxy-* field is hop-by-hop, matched on the prefix."""
        self.assertTrue(is_hop_by_hop(b"proxy-authorization"))
        self.assertTrue(is_hop_by_hop(b"proxy-authenticate"))
        self.assertTrue(is_hop_by_hop(b"proxy-anything"))

    def test_end_to_end_fields(self) -> None:
        """Ordinary fields, and names that merely contain 'proxy', are end-to-end."""
        self.assertFalse(is_hop_by_hop(b"content-length"))
        self.assertFalse(is_hop_by_hop(b"x-proxy-id"))
        self.assertFalse(is_hop_by_hop(b"proxy"))


class TrustedProxiesTests(SynchronousTestCase):
    def test_exact_address(self) -> None:
        """A bare address trusts that address only."""
        trusted = TrustedProxies(("192.0.2.1",))
        self.assertIn("192.0.2.1", trusted)
        self.assertNotIn("192.0.2.2", trusted)

    def test_network(self) -> None:
        """A CIDR entry trusts every address inside it."""
        trusted = TrustedProxies(("10.0.0.0/8",))
        self.assertIn("10.200.3.4", trusted)
        self.assertNotIn("11.0.0.1", trusted)

    def test_host_bits_set(self) -> None:
        """'10.0.0.1/8' is read as the network 10.0.0.0/8 rather than rejected."""
        self.assertIn("10.9.9.9", TrustedProxies(("10.0.0.1/8",)))

    def test_ipv6_network(self) -> None:
        """IPv6 networks match IPv6 peers."""
        trusted = TrustedProxies(("2001:db8::/32",))
        self.assertIn("2001:db8:1::5", trusted)
        self.assertNotIn("2001:db9::5", trusted)

    def test_ipv4_mapped_peer(self) -> None:
        """A dual-stack listener's ::ffff:a.b.c.d peer is checked as the IPv4 address."""
        trusted = TrustedProxies(("192.0.2.0/24",))
        self.assertIn("::ffff:192.0.2.9", trusted)

    def test_not_an_address(self) -> None:
        """Strings that are not addresses, and non-str values, are never trusted."""
        trusted = TrustedProxies(("0.0.0.0/0", "::/0"))
        self.assertNotIn("", trusted)
        self.assertNotIn("example.com", trusted)
        self.assertNotIn(b"\x0a\x00\x00\x01", trusted)

    def test_empty(self) -> None:
        """With no entries nothing is trusted, and the set is falsy."""
        trusted = TrustedProxies(())
        self.assertNotIn("127.0.0.1", trusted)
        self.assertFalse(trusted)

    def test_bad_entry(self) -> None:
        """A malformed entry is rejected with a message that names it."""
        with self.assertRaises(ValueError) as caught:
            TrustedProxies(("10.0.0.0/8", "ten"))
        self.assertIn("'ten'", str(caught.exception))

    def test_cache_answers_repeat(self) -> None:
        """A repeated address is answered from the cache."""
        trusted = TrustedProxies(("192.0.2.0/24",))
        self.assertIn("192.0.2.1", trusted)
        self.assertEqual(trusted._cache, {"192.0.2.1": True})
        self.assertIn("192.0.2.1", trusted)

    def test_cache_below_bound(self) -> None:
        """The cache keeps up to cache_size entries."""
        trusted = TrustedProxies(("192.0.2.0/24",), cache_size=3)
        for last in range(3):
            self.assertIn(f"192.0.2.{last}", trusted)
        self.assertEqual(len(trusted._cache), 3)

    def test_cache_cleared_at_bound(self) -> None:
        """A miss with a full cache clears it first, so it never exceeds cache_size."""
        trusted = TrustedProxies(("192.0.2.0/24",), cache_size=3)
        for last in range(4):
            self.assertIn(f"192.0.2.{last}", trusted)
        self.assertEqual(trusted._cache, {"192.0.2.3": True})

    def test_cache_size_positive(self) -> None:
        """A cache_size below 1 is refused."""
        self.assertRaises(ValueError, TrustedProxies, (), cache_size=0)


class RequestHopByHopTests(SynchronousTestCase):
    def test_drops_hop_by_hop(self) -> None:
        """RFC 9110 §7.6.1: hop-by-hop fields are not forwarded."""
        out = forward(
            [
                (b"Host", b"example.com"),
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"TE", b"trailers"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Upgrade", b"websocket"),
                (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
                (b"Proxy-Connection", b"keep-alive"),
                (b"Trailer", b"Expires"),
            ]
        )
        names = {name.lower() for name, _ in out}
        self.assertEqual(names & (HOP_BY_HOP | {b"proxy-authorization"}), set())

    def test_drops_connection_listed(self) -> None:
        """RFC 9110 §7.6.1: fields named in Connection are removed, whatever their case."""
        out = forward(
            [(b"Host", b"example.com"), (b"X-Secret", b"1"), (b"x-secret", b"2"), (b"Accept", b"*/*")],
            connection=frozenset({b"x-secret"}),
        )
        self.assertEqual(values(out, b"x-secret"), [])
        self.assertEqual(values(out, b"accept"), [b"*/*"])

    def test_keeps_content_length(self) -> None:
        """Content-Length is end-to-end framing and stays; the caller decides framing."""
        out = forward([(b"Host", b"example.com"), (b"Content-Length", b"5")])
        self.assertEqual(values(out, b"content-length"), [b"5"])

    def test_passes_others_in_order_with_case(self) -> None:
        """Fields without a rule keep their order, their repeats and their name's case."""
        received = [
            (b"Host", b"example.com"),
            (b"accept", b"a"),
            (b"X-Thing", b"1"),
            (b"COOKIE", b"c=1"),
            (b"X-Thing", b"2"),
        ]
        out = forward(received)
        self.assertEqual(out[: len(received)], received)

    def test_input_untouched(self) -> None:
        """The received list is not modified."""
        received = [(b"Host", b"example.com"), (b"Connection", b"close")]
        forward(received, host_override=b"backend")
        self.assertEqual(received, [(b"Host", b"example.com"), (b"Connection", b"close")])


class RequestHostTests(SynchronousTestCase):
    def test_keeps_client_host_in_place(self) -> None:
        """Without an override the client's Host stays where it was, as received."""
        out = forward([(b"Accept", b"*/*"), (b"host", b"Example.COM:8080")], host=b"Example.COM:8080")
        self.assertEqual(out[:2], [(b"Accept", b"*/*"), (b"host", b"Example.COM:8080")])

    def test_absolute_form_authority_replaces_host(self) -> None:
        """RFC 9112 §3.2.2: for an absolute-form target the received Host is replaced by its authority."""
        out = forward([(b"Host", b"stale.example"), (b"Accept", b"*/*")], host=b"target.example")
        self.assertEqual(out[0], (b"Host", b"target.example"))
        self.assertEqual(values(out, b"host"), [b"target.example"])

    def test_empty_host_keeps_received(self) -> None:
        """With no authority known (host=b''), the received Host value is kept."""
        out = forward([(b"Host", b"example.com")], host=b"")
        self.assertEqual(values(out, b"host"), [b"example.com"])

    def test_override_replaces_in_place(self) -> None:
        """A non-empty host_override replaces the Host value in place."""
        out = forward([(b"Accept", b"*/*"), (b"Host", b"example.com")], host_override=b"internal:8000")
        self.assertEqual(out[1], (b"Host", b"internal:8000"))
        self.assertEqual(values(out, b"host"), [b"internal:8000"])

    def test_empty_override_keeps_client_host(self) -> None:
        """host_override=b'' means no override."""
        out = forward([(b"Host", b"example.com")], host_override=b"")
        self.assertEqual(values(out, b"host"), [b"example.com"])

    def test_first_host_only(self) -> None:
        """RFC 9112 §3.2: only one Host is valid; the first is kept, repeats dropped."""
        out = forward([(b"Host", b"a.example"), (b"Host", b"b.example")], host=b"a.example")
        self.assertEqual(values(out, b"host"), [b"a.example"])

    def test_missing_host_added_first(self) -> None:
        """RFC 9112 §3.2: an HTTP/1.1 request must carry Host, sent first; we add it."""
        out = forward([(b"Accept", b"*/*")], host=b"example.com")
        self.assertEqual(out[0], (b"Host", b"example.com"))

    def test_missing_host_uses_override(self) -> None:
        """A missing Host is added with the override when there is one."""
        out = forward([], host=b"example.com", host_override=b"backend")
        self.assertEqual(out[0], (b"Host", b"backend"))

    def test_host_survives_connection_listing(self) -> None:
        """Connection: host cannot strip the Host field from the request."""
        out = forward([(b"Host", b"example.com")], connection=frozenset({b"host"}))
        self.assertEqual(values(out, b"host"), [b"example.com"])


class ForwardedForTests(SynchronousTestCase):
    def test_untrusted_replaced(self) -> None:
        """An untrusted peer's X-Forwarded-For is replaced by its own address."""
        out = forward([(b"Host", b"h"), (b"X-Forwarded-For", b"6.6.6.6")], trusted=False)
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_untrusted_added(self) -> None:
        """Without X-Forwarded-For the peer's address is sent."""
        out = forward([(b"Host", b"h")])
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_trusted_appended(self) -> None:
        """A trusted peer's X-Forwarded-For gets the peer's address appended."""
        out = forward([(b"Host", b"h"), (b"x-forwarded-for", b"203.0.113.5")], trusted=True)
        self.assertEqual(values(out, b"x-forwarded-for"), [b"203.0.113.5, 192.0.2.7"])

    def test_trusted_joins_repeats(self) -> None:
        """Repeated X-Forwarded-For fields from a trusted peer become one list."""
        out = forward(
            [(b"X-Forwarded-For", b"203.0.113.5"), (b"Host", b"h"), (b"X-Forwarded-For", b"198.51.100.1, 10.0.0.1")],
            trusted=True,
        )
        self.assertEqual(values(out, b"x-forwarded-for"), [b"203.0.113.5, 198.51.100.1, 10.0.0.1, 192.0.2.7"])

    def test_trusted_empty_value_ignored(self) -> None:
        """An empty received X-Forwarded-For adds no empty list member."""
        out = forward([(b"Host", b"h"), (b"X-Forwarded-For", b"")], trusted=True)
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_connection_listed_counts_as_absent(self) -> None:
        """Connection: X-Forwarded-For drops the received value; ours is still sent."""
        out = forward(
            [(b"Host", b"h"), (b"X-Forwarded-For", b"203.0.113.5")],
            trusted=True,
            connection=frozenset({b"x-forwarded-for"}),
        )
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_ipv6_peer_bare(self) -> None:
        """An IPv6 peer is written bare, without brackets, in X-Forwarded-For."""
        out = forward([(b"Host", b"h")], peer_ip="2001:db8::1")
        self.assertEqual(values(out, b"x-forwarded-for"), [b"2001:db8::1"])


class ForwardedProtoHostTests(SynchronousTestCase):
    def test_untrusted_set(self) -> None:
        """An untrusted peer's X-Forwarded-Proto/Host are replaced by ours."""
        out = forward(
            [(b"Host", b"example.com"), (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil")],
            proto=b"http",
            host=b"example.com",
        )
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"example.com"])

    def test_trusted_kept(self) -> None:
        """A trusted peer's X-Forwarded-Proto/Host are kept in place."""
        received = [(b"Host", b"example.com"), (b"X-Forwarded-Proto", b"https"), (b"x-forwarded-host", b"public.example")]
        out = forward(received, trusted=True)
        self.assertEqual(out[:3], received)
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"public.example"])

    def test_trusted_absent_set(self) -> None:
        """A trusted peer that sent none gets ours."""
        out = forward([(b"Host", b"example.com")], trusted=True, proto=b"https")
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"example.com"])

    def test_no_host_no_forwarded_host(self) -> None:
        """With no host known, no empty X-Forwarded-Host is sent."""
        out = forward([], host=b"")
        self.assertEqual(values(out, b"x-forwarded-host"), [])


class ForwardedTests(SynchronousTestCase):
    def test_element_ipv4(self) -> None:
        """RFC 7239 §4: an IPv4 node and a token host go unquoted."""
        self.assertEqual(forwarded_element("192.0.2.7", 0, b"http", b"example.com", b""), b"for=192.0.2.7;proto=http;host=example.com")

    def test_element_ipv6_quoted(self) -> None:
        """RFC 7239 §6: an IPv6 node is bracketed and quoted."""
        self.assertEqual(forwarded_element("2001:db8::1", 0, b"https", b"", b""), b'for="[2001:db8::1]";proto=https')

    def test_element_port(self) -> None:
        """RFC 7239 §6: a known peer port is sent as node-port, which needs quoting."""
        self.assertEqual(forwarded_element("192.0.2.7", 4711, b"http", b"", b""), b'for="192.0.2.7:4711";proto=http')
        self.assertEqual(forwarded_element("2001:db8::1", 4711, b"http", b"", b""), b'for="[2001:db8::1]:4711";proto=http')

    def test_element_host_with_port_quoted(self) -> None:
        """RFC 7239 §4: a host with ':' is not a token and is quoted."""
        self.assertEqual(
            forwarded_element("192.0.2.7", 0, b"http", b"example.com:8080", b""),
            b'for=192.0.2.7;proto=http;host="example.com:8080"',
        )

    def test_element_host_escaped(self) -> None:
        """RFC 9110 §5.6.4: a quote or backslash inside a quoted host is escaped."""
        element = forwarded_element("192.0.2.7", 0, b"http", b'a"b\\c', b"")
        self.assertEqual(element, b'for=192.0.2.7;proto=http;host="a\\"b\\\\c"')

    def test_element_unknown_peer(self) -> None:
        """RFC 7239 §6.2: an unknown peer is 'unknown'."""
        self.assertEqual(forwarded_element("", 0, b"http", b"", b""), b"for=unknown;proto=http")

    def test_element_by_listener(self) -> None:
        """RFC 7239 §6.3: the listener is an obfuscated identifier, '_' then safe characters."""
        self.assertEqual(forwarded_element("192.0.2.7", 0, b"http", b"", b"public"), b"for=192.0.2.7;proto=http;by=_public")
        self.assertEqual(forwarded_element("192.0.2.7", 0, b"http", b"", b"a b:c"), b"for=192.0.2.7;proto=http;by=_a_b_c")

    def test_untrusted_replaced(self) -> None:
        """An untrusted peer's Forwarded is replaced by our element alone."""
        out = forward([(b"Host", b"example.com"), (b"Forwarded", b"for=6.6.6.6")])
        self.assertEqual(values(out, b"forwarded"), [b"for=192.0.2.7;proto=http;host=example.com"])

    def test_trusted_appended(self) -> None:
        """RFC 7239 §4: a trusted peer's elements are kept and ours appended."""
        out = forward(
            [(b"Forwarded", b"for=203.0.113.5"), (b"Host", b"example.com"), (b"forwarded", b"for=10.0.0.1")],
            trusted=True,
        )
        self.assertEqual(values(out, b"forwarded"), [b"for=203.0.113.5, for=10.0.0.1, for=192.0.2.7;proto=http;host=example.com"])


class RequestViaTests(SynchronousTestCase):
    def test_added(self) -> None:
        """RFC 9110 §7.6.3: a proxy adds Via with the received protocol and its pseudonym."""
        out = forward([(b"Host", b"h")], version=b"1.0", via=b"edge")
        self.assertEqual(values(out, b"via"), [b"1.0 edge"])

    def test_appended_even_when_untrusted(self) -> None:
        """RFC 9110 §7.6.3: Via is appended to whatever was received, trusted or not."""
        out = forward([(b"Via", b"1.1 a"), (b"Host", b"h"), (b"via", b"1.0 b")], trusted=False)
        self.assertEqual(values(out, b"via"), [b"1.1 a, 1.0 b, 1.1 gateway"])


class ResponseHeadersTests(SynchronousTestCase):
    def test_drops_hop_by_hop_keeps_length(self) -> None:
        """RFC 9110 §7.6.1: framing and connection fields go; Content-Length stays."""
        out = answer(
            [
                (b"Connection", b"keep-alive, X-Backend"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Content-Length", b"10"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"X-Backend", b"node7"),
                (b"Content-Type", b"text/plain"),
            ],
            connection=frozenset({b"keep-alive", b"x-backend"}),
        )
        self.assertEqual(
            out,
            [
                (b"Content-Length", b"10"),
                (b"Content-Type", b"text/plain"),
                (b"Server", b"gateway"),
                (b"Date", DATE),
                (b"Via", b"1.1 gateway"),
            ],
        )

    def test_date_added_when_missing(self) -> None:
        """RFC 9110 §6.6.1: a forwarded response without Date gets one."""
        self.assertEqual(values(answer([(b"ETag", b'"1"')]), b"date"), [DATE])

    def test_date_kept_when_present(self) -> None:
        """The origin's Date is kept as it is, and no second one is added."""
        out = answer([(b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")])
        self.assertEqual(values(out, b"date"), [b"Mon, 01 Jan 2024 00:00:00 GMT"])

    def test_server_replaced_in_place(self) -> None:
        """The backend's Server is replaced in place by ours, repeats dropped."""
        out = answer([(b"Date", b"x"), (b"server", b"Apache/2.4.1"), (b"Server", b"again"), (b"ETag", b'"1"')])
        self.assertEqual(out[:3], [(b"Date", b"x"), (b"Server", b"gateway"), (b"ETag", b'"1"')])
        self.assertEqual(values(out, b"server"), [b"gateway"])

    def test_server_added(self) -> None:
        """Without a backend Server, ours is added."""
        self.assertEqual(values(answer([]), b"server"), [b"gateway"])

    def test_server_hidden(self) -> None:
        """server=b'' removes Server entirely."""
        out = answer([(b"Server", b"Apache/2.4.1")], server=b"")
        self.assertEqual(values(out, b"server"), [])

    def test_hsts_replaces_backend_policy(self) -> None:
        """With the listener's HSTS, every backend Strict-Transport-Security gives way to one of ours."""
        received = [(b"Strict-Transport-Security", b"max-age=9"), (b"strict-transport-security", b"x")]
        out = answer(received, hsts=b"max-age=31536000")
        self.assertEqual(values(out, b"strict-transport-security"), [b"max-age=31536000"])

    def test_backend_policy_named_in_connection_dropped(self) -> None:
        """RFC 9110 §7.6.1: a Strict-Transport-Security the backend lists in Connection is hop-by-hop."""
        out = answer([(b"Strict-Transport-Security", b"max-age=9")],
                     connection=frozenset({b"strict-transport-security"}))
        self.assertEqual(values(out, b"strict-transport-security"), [])

    def test_no_hsts_passes_backend_policy(self) -> None:
        """Without one (a plain listener, or HSTS off), the backend's field passes unchanged."""
        out = answer([(b"Strict-Transport-Security", b"max-age=9")])
        self.assertEqual(values(out, b"strict-transport-security"), [b"max-age=9"])

    def test_via_added(self) -> None:
        """RFC 9110 §7.6.3: Via names the response's protocol version and our pseudonym."""
        self.assertEqual(values(answer([], version=b"1.0"), b"via"), [b"1.0 gateway"])

    def test_via_appended(self) -> None:
        """RFC 9110 §7.6.3: received Via values are kept and ours appended, as one field."""
        out = answer([(b"Via", b"1.1 cdn"), (b"Via", b"1.1 inner")])
        self.assertEqual(values(out, b"via"), [b"1.1 cdn, 1.1 inner, 1.1 gateway"])

    def test_passes_others_in_order(self) -> None:
        """Fields without a rule keep their order, repeats and case."""
        received = [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Y", b"z")]
        self.assertEqual(answer(received)[:3], received)


class SerializeHeadTests(SynchronousTestCase):
    def test_format(self) -> None:
        """RFC 9112 §2.1: start line, one field per line, then an empty line."""
        head = serialize_head(b"GET / HTTP/1.1", [(b"Host", b"h"), (b"X-A", b"1")])
        self.assertEqual(head, b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n")

    def test_no_headers(self) -> None:
        """A head without fields is the start line and two CRLFs."""
        self.assertEqual(serialize_head(b"HTTP/1.1 204 No Content", []), b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_empty_value(self) -> None:
        """An empty field value is written as 'Name: '."""
        self.assertEqual(serialize_head(b"X", [(b"Host", b"")]), b"X\r\nHost: \r\n\r\n")


class ContentLengthTests(SynchronousTestCase):
    """RFC 9110 §8.6: one canonical Content-Length travels on, whatever came in."""

    def test_request_duplicates_collapsed(self) -> None:
        """Two identical Content-Length fields reach the upstream as one."""
        out = forward([(b"Host", b"a"), (b"Content-Length", b"3"), (b"Content-Length", b"3")])
        self.assertEqual(values(out, b"content-length"), [b"3"])

    def test_request_list_collapsed(self) -> None:
        """A list value ``1, 1`` reaches the upstream as the single value ``1``."""
        out = forward([(b"Host", b"a"), (b"Content-Length", b"1, 1")])
        self.assertEqual(values(out, b"content-length"), [b"1"])

    def test_response_duplicates_collapsed(self) -> None:
        """Duplicate response Content-Length fields reach the client as one."""
        out = answer([(b"Content-Length", b"5"), (b"Content-Length", b"5, 5")])
        self.assertEqual(values(out, b"content-length"), [b"5"])
