"""Tests for gateway.routing: host normalisation, target splitting, route matching."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import RouteConfig
from gateway.routing import RouteTable, normalize_host, split_target


def route(name: str, host: str = "", path_prefix: str = "/", listeners: tuple[str, ...] = ()) -> RouteConfig:
    return RouteConfig(name=name, backend=f"b-{name}", host=host, path_prefix=path_prefix, listeners=listeners)


def matched(table: RouteTable, host: bytes, path: bytes) -> str | None:
    found = table.match(host, path)
    return None if found is None else found.name


class NormalizeHostTests(SynchronousTestCase):
    def test_lower(self) -> None:
        """RFC 9110 §4.2.3: hosts compare case-insensitively."""
        self.assertEqual(normalize_host(b"Example.COM"), b"example.com")

    def test_port_removed(self) -> None:
        """A :port suffix is removed."""
        self.assertEqual(normalize_host(b"example.com:8080"), b"example.com")

    def test_ipv6_port_removed(self) -> None:
        """An IPv6 literal keeps its brackets and loses only the port."""
        self.assertEqual(normalize_host(b"[2001:DB8::1]:8080"), b"[2001:db8::1]")
        self.assertEqual(normalize_host(b"[::1]"), b"[::1]")

    def test_trailing_dot(self) -> None:
        """A fully qualified name's root dot is removed."""
        self.assertEqual(normalize_host(b"example.com.:80"), b"example.com")

    def test_empty(self) -> None:
        """An empty host stays empty."""
        self.assertEqual(normalize_host(b""), b"")


class SplitTargetTests(SynchronousTestCase):
    def test_origin_form(self) -> None:
        """RFC 9112 §3.2.1: origin-form comes back whole with no host."""
        self.assertEqual(split_target(b"/a/b?c=d"), (b"", b"/a/b?c=d"))

    def test_absolute_form(self) -> None:
        """RFC 9112 §3.2.2: absolute-form yields the authority and the path with query."""
        self.assertEqual(split_target(b"http://Example.com:8080/a?b"), (b"Example.com:8080", b"/a?b"))

    def test_absolute_form_no_path(self) -> None:
        """An absolute-form target without a path routes as '/'."""
        self.assertEqual(split_target(b"https://example.com"), (b"example.com", b"/"))
        self.assertEqual(split_target(b"http://example.com?q=1"), (b"example.com", b"/?q=1"))

    def test_absolute_form_userinfo(self) -> None:
        """RFC 9110 §4.2.4: userinfo is not part of the host."""
        self.assertEqual(split_target(b"http://user:pw@example.com/x"), (b"example.com", b"/x"))

    def test_absolute_form_ipv6(self) -> None:
        """An IPv6 authority is returned with its brackets and port."""
        self.assertEqual(split_target(b"http://[::1]:8080/x"), (b"[::1]:8080", b"/x"))

    def test_authority_and_asterisk(self) -> None:
        """Authority-form and asterisk-form come back unchanged."""
        self.assertEqual(split_target(b"example.com:443"), (b"", b"example.com:443"))
        self.assertEqual(split_target(b"*"), (b"", b"*"))


class PrefixTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = RouteTable((route("api", path_prefix="/api"),), "main")

    def test_exact(self) -> None:
        """A prefix matches the same path."""
        self.assertEqual(matched(self.table, b"h", b"/api"), "api")

    def test_subpath(self) -> None:
        """A prefix matches paths below it."""
        self.assertEqual(matched(self.table, b"h", b"/api/x/y"), "api")

    def test_query(self) -> None:
        """A prefix matches the same path with a query."""
        self.assertEqual(matched(self.table, b"h", b"/api?x=1"), "api")

    def test_not_partial_segment(self) -> None:
        """Matching is segment-aware: /api does not match /apix."""
        self.assertIsNone(self.table.match(b"h", b"/apix"))

    def test_case_sensitive(self) -> None:
        """RFC 3986 §6.2.2.1: paths are case-sensitive."""
        self.assertIsNone(self.table.match(b"h", b"/API"))

    def test_trailing_slash_plain_prefix(self) -> None:
        """A prefix ending in '/' is a plain prefix."""
        table = RouteTable((route("api", path_prefix="/api/"),), "main")
        self.assertEqual(matched(table, b"h", b"/api/x"), "api")
        self.assertIsNone(table.match(b"h", b"/api"))

    def test_root_matches_everything(self) -> None:
        """The default prefix '/' matches every origin-form path."""
        table = RouteTable((route("all"),), "main")
        self.assertEqual(matched(table, b"h", b"/"), "all")
        self.assertEqual(matched(table, b"h", b"/anything?q"), "all")

    def test_raw_bytes(self) -> None:
        """Paths are not percent-decoded: /%61pi is not /api."""
        self.assertIsNone(self.table.match(b"h", b"/%61pi"))

    def test_non_ascii_prefix_encoded(self) -> None:
        """A non-ASCII configured prefix matches its percent-encoded UTF-8 form."""
        table = RouteTable((route("cafe", path_prefix="/café"),), "main")
        self.assertEqual(matched(table, b"h", b"/caf%C3%A9/menu"), "cafe")


class HostTests(SynchronousTestCase):
    def test_any_host(self) -> None:
        """A route with an empty host matches any host, including none."""
        table = RouteTable((route("any"),), "main")
        self.assertEqual(matched(table, b"whatever.example", b"/"), "any")
        self.assertEqual(matched(table, b"", b"/"), "any")

    def test_exact_host(self) -> None:
        """A route host matches that host only."""
        table = RouteTable((route("a", host="a.example"),), "main")
        self.assertEqual(matched(table, b"a.example", b"/"), "a")
        self.assertIsNone(table.match(b"b.example", b"/"))

    def test_host_case_and_port(self) -> None:
        """The request host matches case-insensitively and without its port."""
        table = RouteTable((route("a", host="A.Example"),), "main")
        self.assertEqual(matched(table, b"a.EXAMPLE:8443", b"/"), "a")

    def test_ipv6_host(self) -> None:
        """An IPv6 route host (bracketed or bare in the config) matches [addr]:port."""
        for configured in ("[::1]", "::1"):
            table = RouteTable((route("v6", host=configured),), "main")
            self.assertEqual(matched(table, b"[::1]:8080", b"/"), "v6")

    def test_idn_host(self) -> None:
        """A non-ASCII route host matches its IDNA A-label, as clients send it."""
        table = RouteTable((route("idn", host="bücher.example"),), "main")
        self.assertEqual(matched(table, b"xn--bcher-kva.example", b"/"), "idn")


class OrderTests(SynchronousTestCase):
    def test_first_match_wins(self) -> None:
        """Routes are tried in configuration order; the first match wins."""
        table = RouteTable((route("first", path_prefix="/a"), route("second", path_prefix="/a/b")), "main")
        self.assertEqual(matched(table, b"h", b"/a/b"), "first")

    def test_any_before_exact_keeps_order(self) -> None:
        """An any-host route listed before a host route still wins for that host."""
        table = RouteTable((route("any", path_prefix="/x"), route("host", host="h.example")), "main")
        self.assertEqual(matched(table, b"h.example", b"/x"), "any")
        self.assertEqual(matched(table, b"h.example", b"/y"), "host")

    def test_exact_before_any(self) -> None:
        """A host route listed first wins for its host; others fall to the any-host route."""
        table = RouteTable((route("host", host="h.example"), route("any")), "main")
        self.assertEqual(matched(table, b"h.example", b"/"), "host")
        self.assertEqual(matched(table, b"other.example", b"/"), "any")

    def test_no_match(self) -> None:
        """None when no route matches."""
        table = RouteTable((route("a", host="a.example"),), "main")
        self.assertIsNone(table.match(b"b.example", b"/"))

    def test_empty_table(self) -> None:
        """A table with no routes matches nothing."""
        self.assertIsNone(RouteTable((), "main").match(b"h", b"/"))


class ListenerTests(SynchronousTestCase):
    def test_listener_filter(self) -> None:
        """A route bound to other listeners is not in this listener's table."""
        routes = (route("admin", listeners=("admin",)), route("public", listeners=("main", "alt")))
        table = RouteTable(routes, "main")
        self.assertEqual(matched(table, b"h", b"/"), "public")
        self.assertEqual([r.name for r in table.routes], ["public"])

    def test_unbound_route_everywhere(self) -> None:
        """A route with no listeners applies to every listener."""
        for listener in ("main", "admin"):
            self.assertEqual(matched(RouteTable((route("all"),), listener), b"h", b"/"), "all")
