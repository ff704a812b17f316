"""Tests for gateway.routing: host normalisation, target splitting, route matching."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from collections.abc import Iterator
from typing import Any

from gateway.config import RouteConfig
from gateway.routing import RouteTable, normalize_host, shadowed, split_target


def route(name: str, **fields: Any) -> RouteConfig:
    """A route to backend ``b-NAME`` with the given fields."""
    return RouteConfig(name=name, backend=f"b-{name}", **fields)


def matched(
    table: RouteTable,
    host: bytes,
    path: bytes,
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> str | None:
    """The name of the route ``table`` picks, or None."""
    found = table.match(host, path, method, headers or [])
    return None if found is None else found.name


def table(*routes: RouteConfig, default_backend: str = "") -> RouteTable:
    """A table for listener ``main``."""
    return RouteTable(routes, "main", default_backend)


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
        self.table = table(route("api", path_prefix="/api"))

    def test_exact(self) -> None:
        """A prefix matches the same path."""
        self.assertEqual(matched(self.table, b"h", b"/api"), "api")

    def test_subpath(self) -> None:
        """A prefix matches paths below it."""
        self.assertEqual(matched(self.table, b"h", b"/api/x/y"), "api")

    def test_query(self) -> None:
        """A prefix matches the same path with a query."""
        self.assertEqual(matched(self.table, b"h", b"/api?x=1"), "api")

    def test_query_not_matched(self) -> None:
        """The query is not part of the path: a prefix can't match into it."""
        plain = table(route("a", path_prefix="/a/"))
        self.assertIsNone(matched(plain, b"h", b"/a?/x"))
        self.assertIsNone(matched(self.table, b"h", b"/?/api"))

    def test_not_partial_segment(self) -> None:
        """Matching is segment-aware: /api does not match /apix."""
        self.assertIsNone(matched(self.table, b"h", b"/apix"))

    def test_case_sensitive(self) -> None:
        """RFC 3986 §6.2.2.1: paths are case-sensitive."""
        self.assertIsNone(matched(self.table, b"h", b"/API"))

    def test_trailing_slash_plain_prefix(self) -> None:
        """A prefix ending in '/' is a plain prefix."""
        plain = table(route("api", path_prefix="/api/"))
        self.assertEqual(matched(plain, b"h", b"/api/x"), "api")
        self.assertIsNone(matched(plain, b"h", b"/api"))

    def test_root_matches_everything(self) -> None:
        """The default prefix '/' matches every origin-form path."""
        everything = table(route("all"))
        self.assertEqual(matched(everything, b"h", b"/"), "all")
        self.assertEqual(matched(everything, b"h", b"/anything?q"), "all")

    def test_raw_bytes(self) -> None:
        """Paths are not percent-decoded: /%61pi is not /api."""
        self.assertIsNone(matched(self.table, b"h", b"/%61pi"))

    def test_non_ascii_prefix_encoded(self) -> None:
        """A non-ASCII configured prefix matches its percent-encoded UTF-8 form."""
        cafe = table(route("cafe", path_prefix="/café"))
        self.assertEqual(matched(cafe, b"h", b"/caf%C3%A9/menu"), "cafe")


class ExactTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = table(route("login", path_exact="/login"))

    def test_same_path(self) -> None:
        """An exact path matches that path."""
        self.assertEqual(matched(self.table, b"h", b"/login"), "login")

    def test_query_ignored(self) -> None:
        """An exact path matches that path with any query."""
        self.assertEqual(matched(self.table, b"h", b"/login?next=/x"), "login")

    def test_nothing_else(self) -> None:
        """Sub-paths, a trailing slash and longer names don't match."""
        for path in (b"/login/", b"/login/x", b"/logins", b"/", b"/Login"):
            self.assertIsNone(matched(self.table, b"h", path), path)

    def test_exact_beats_default_prefix(self) -> None:
        """With path_exact set, the default path_prefix "/" plays no part."""
        self.assertIsNone(matched(self.table, b"h", b"/other"))

    def test_non_ascii_encoded(self) -> None:
        """A non-ASCII exact path matches its percent-encoded UTF-8 form."""
        cafe = table(route("cafe", path_exact="/café"))
        self.assertEqual(matched(cafe, b"h", b"/caf%C3%A9"), "cafe")


class RegexTests(SynchronousTestCase):
    def test_anchored_at_start(self) -> None:
        """re.match: the regex must match from the first byte of the path."""
        versioned = table(route("v", path_regex=r"/v[0-9]+/"))
        self.assertEqual(matched(versioned, b"h", b"/v2/users"), "v")
        self.assertIsNone(matched(versioned, b"h", b"/x/v2/users"))

    def test_not_anchored_at_end(self) -> None:
        """Only $ or \\Z anchors the end."""
        loose = table(route("loose", path_regex=r"/a"))
        self.assertEqual(matched(loose, b"h", b"/abc"), "loose")
        strict = table(route("strict", path_regex=r"/a$"))
        self.assertIsNone(matched(strict, b"h", b"/abc"))
        self.assertEqual(matched(strict, b"h", b"/a"), "strict")

    def test_path_only(self) -> None:
        """The regex sees the path without the query."""
        php = table(route("php", path_regex=r".*\.php$"))
        self.assertEqual(matched(php, b"h", b"/x/index.php?a=1"), "php")
        self.assertIsNone(matched(php, b"h", b"/x?file=a.php"))

    def test_raw_bytes(self) -> None:
        """The regex sees raw bytes, not percent-decoded ones."""
        encoded = table(route("e", path_regex=r"/caf%C3%A9$"))
        self.assertEqual(matched(encoded, b"h", b"/caf%C3%A9"), "e")

    def test_regex_beats_default_prefix(self) -> None:
        """With path_regex set, the default path_prefix "/" plays no part."""
        self.assertIsNone(matched(table(route("r", path_regex=r"/only$")), b"h", b"/x"))


class MethodTests(SynchronousTestCase):
    def test_listed_methods_only(self) -> None:
        """A route with methods matches only those; the next route gets the rest."""
        routes = table(route("write", methods=("POST", "PUT")), route("rest"))
        self.assertEqual(matched(routes, b"h", b"/", b"POST"), "write")
        self.assertEqual(matched(routes, b"h", b"/", b"PUT"), "write")
        self.assertEqual(matched(routes, b"h", b"/", b"GET"), "rest")

    def test_empty_means_any(self) -> None:
        """No methods: any method, even an unknown one."""
        self.assertEqual(matched(table(route("any")), b"h", b"/", b"BREW"), "any")

    def test_case_sensitive(self) -> None:
        """RFC 9110 §9.1: methods are case-sensitive, so get is not GET."""
        self.assertIsNone(matched(table(route("get", methods=("GET",))), b"h", b"/", b"get"))

    def test_get_does_not_imply_head(self) -> None:
        """HEAD must be listed itself."""
        self.assertIsNone(matched(table(route("get", methods=("GET",))), b"h", b"/", b"HEAD"))


class _Untouchable(list[tuple[bytes, bytes]]):
    """Header fields that fail the test if anything reads them."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        raise AssertionError("headers were scanned")


class HeaderTests(SynchronousTestCase):
    def test_present(self) -> None:
        """``Name`` matches when a field of that name is present, whatever its value."""
        canary = table(route("canary", header="x-canary"), route("rest"))
        self.assertEqual(matched(canary, b"h", b"/", headers=[(b"X-Canary", b"")]), "canary")
        self.assertEqual(matched(canary, b"h", b"/", headers=[(b"X-Other", b"1")]), "rest")
        self.assertEqual(matched(canary, b"h", b"/"), "rest")

    def test_name_case_insensitive(self) -> None:
        """RFC 9110 §5.1: field names compare case-insensitively, on both sides."""
        canary = table(route("canary", header="X-Canary: yes"))
        for name in (b"x-canary", b"X-CANARY", b"X-Canary"):
            self.assertEqual(matched(canary, b"h", b"/", headers=[(name, b"yes")]), "canary")

    def test_value_exact(self) -> None:
        """``Name: value`` needs that exact value: no case folding, no substring."""
        canary = table(route("canary", header="x-canary: yes"))
        for value in (b"Yes", b"yes, no", b"ye", b""):
            self.assertIsNone(matched(canary, b"h", b"/", headers=[(b"x-canary", value)]))

    def test_any_field_line(self) -> None:
        """With the field repeated, any one of its lines may carry the value."""
        canary = table(route("canary", header="x-canary: yes"))
        fields = [(b"x-canary", b"no"), (b"Host", b"h"), (b"x-canary", b"yes")]
        self.assertEqual(matched(canary, b"h", b"/", headers=fields), "canary")

    def test_not_scanned_without_condition(self) -> None:
        """Routes without a header condition never read the header fields."""
        routes = table(route("a", path_prefix="/a"), route("rest"))
        self.assertEqual(routes.match(b"h", b"/x", b"GET", _Untouchable()).name, "rest")

    def test_not_scanned_when_path_fails(self) -> None:
        """A route whose path doesn't match never reads the header fields."""
        routes = table(route("a", path_prefix="/a", header="x-a"), route("rest"))
        self.assertEqual(routes.match(b"h", b"/x", b"GET", _Untouchable()).name, "rest")

    def test_all_conditions(self) -> None:
        """Path, methods and header must all hold."""
        strict = table(route("s", path_prefix="/a", methods=("POST",), header="x-a: 1"))
        fields = [(b"x-a", b"1")]
        self.assertEqual(matched(strict, b"h", b"/a", b"POST", fields), "s")
        self.assertIsNone(matched(strict, b"h", b"/b", b"POST", fields))
        self.assertIsNone(matched(strict, b"h", b"/a", b"GET", fields))
        self.assertIsNone(matched(strict, b"h", b"/a", b"POST", [(b"x-a", b"2")]))


class HostTests(SynchronousTestCase):
    def test_any_host(self) -> None:
        """A route with an empty host matches any host, including none."""
        anyhost = table(route("any"))
        self.assertEqual(matched(anyhost, b"whatever.example", b"/"), "any")
        self.assertEqual(matched(anyhost, b"", b"/"), "any")

    def test_exact_host(self) -> None:
        """A route host matches that host only."""
        one = table(route("a", host="a.example"))
        self.assertEqual(matched(one, b"a.example", b"/"), "a")
        self.assertIsNone(matched(one, b"b.example", b"/"))

    def test_host_case_and_port(self) -> None:
        """The request host matches case-insensitively and without its port."""
        self.assertEqual(matched(table(route("a", host="A.Example")), b"a.EXAMPLE:8443", b"/"), "a")

    def test_ipv6_host(self) -> None:
        """An IPv6 route host (bracketed or bare in the config) matches [addr]:port."""
        for configured in ("[::1]", "::1"):
            v6 = table(route("v6", host=configured))
            self.assertEqual(matched(v6, b"[::1]:8080", b"/"), "v6")

    def test_idn_host(self) -> None:
        """A non-ASCII route host matches its IDNA A-label, as clients send it."""
        idn = table(route("idn", host="bücher.example"))
        self.assertEqual(matched(idn, b"xn--bcher-kva.example", b"/"), "idn")

    def test_wildcard_one_or_more_labels(self) -> None:
        """*.example.com matches a.example.com and a.b.example.com."""
        wild = table(route("w", host="*.example.com"))
        for host in (b"a.example.com", b"a.b.example.com", b"A.Example.COM.:8080"):
            self.assertEqual(matched(wild, host, b"/"), "w", host)

    def test_wildcard_not_base(self) -> None:
        """*.example.com does not match example.com, nor look-alike names."""
        wild = table(route("w", host="*.example.com"))
        for host in (b"example.com", b"badexample.com", b"a.example.org", b".example.com", b""):
            self.assertIsNone(matched(wild, host, b"/"), host)

    def test_wildcard_not_ip(self) -> None:
        """A wildcard never matches an IP address."""
        self.assertIsNone(matched(table(route("w", host="*.com")), b"10.0.0.1", b"/"))

    def test_wildcard_idn(self) -> None:
        """A non-ASCII wildcard suffix matches its A-label form."""
        wild = table(route("w", host="*.bücher.example"))
        self.assertEqual(matched(wild, b"a.xn--bcher-kva.example", b"/"), "w")


class PrecedenceTests(SynchronousTestCase):
    def test_first_match_wins(self) -> None:
        """Within a group, routes are tried in configuration order."""
        ordered = table(route("first", path_prefix="/a"), route("second", path_prefix="/a/b"))
        self.assertEqual(matched(ordered, b"h", b"/a/b"), "first")

    def test_exact_before_any(self) -> None:
        """A host route beats an any-host route, even one written before it."""
        routes = table(route("any", path_prefix="/x"), route("host", host="h.example"))
        self.assertEqual(matched(routes, b"h.example", b"/x"), "host")
        self.assertEqual(matched(routes, b"other.example", b"/x"), "any")

    def test_exact_before_wildcard(self) -> None:
        """An exact host beats a wildcard that covers it, even one written before it."""
        routes = table(route("wild", host="*.example.com"), route("www", host="www.example.com"))
        self.assertEqual(matched(routes, b"www.example.com", b"/"), "www")
        self.assertEqual(matched(routes, b"api.example.com", b"/"), "wild")

    def test_wildcard_before_any(self) -> None:
        """A wildcard route beats an any-host route written before it."""
        routes = table(route("any"), route("wild", host="*.example.com"))
        self.assertEqual(matched(routes, b"a.example.com", b"/"), "wild")
        self.assertEqual(matched(routes, b"example.com", b"/"), "any")

    def test_longest_wildcard_first(self) -> None:
        """Of two wildcards that cover a host, the longer suffix is tried first."""
        routes = table(route("short", host="*.example.com"), route("long", host="*.eu.example.com"))
        self.assertEqual(matched(routes, b"a.eu.example.com", b"/"), "long")
        self.assertEqual(matched(routes, b"eu.example.com", b"/"), "short")
        self.assertEqual(matched(routes, b"a.us.example.com", b"/"), "short")

    def test_fall_through_groups(self) -> None:
        """When no route of a group matches, the next group is tried, down to any-host."""
        routes = table(
            route("any"),
            route("wild-api", host="*.example.com", path_prefix="/api"),
            route("www-static", host="www.example.com", path_prefix="/static"),
        )
        self.assertEqual(matched(routes, b"www.example.com", b"/static/a"), "www-static")
        self.assertEqual(matched(routes, b"www.example.com", b"/api/a"), "wild-api")
        self.assertEqual(matched(routes, b"www.example.com", b"/other"), "any")

    def test_exact_host_gets_all_covering_wildcards(self) -> None:
        """An exact host's candidates include every wildcard that covers it, longest first."""
        routes = table(
            route("short", host="*.example.com", path_prefix="/s"),
            route("long", host="*.a.example.com", path_prefix="/l"),
            route("exact", host="b.a.example.com", path_prefix="/e"),
        )
        for path, name in ((b"/e", "exact"), (b"/l", "long"), (b"/s", "short")):
            self.assertEqual(matched(routes, b"b.a.example.com", path), name)

    def test_no_match(self) -> None:
        """None when no route matches and there is no default backend."""
        self.assertIsNone(matched(table(route("a", host="a.example")), b"b.example", b"/"))

    def test_empty_table(self) -> None:
        """A table with no routes matches nothing."""
        self.assertIsNone(matched(table(), b"h", b"/"))


class DefaultBackendTests(SynchronousTestCase):
    def test_default_route(self) -> None:
        """With no match, the default backend answers, as a route called default."""
        found = table(route("a", host="a.example"), default_backend="fallback").match(
            b"b.example", b"/", b"GET", []
        )
        self.assertEqual(found, RouteConfig(name="default", backend="fallback"))

    def test_routes_first(self) -> None:
        """A matching route still wins over the default backend."""
        routes = table(route("a", path_prefix="/a"), default_backend="fallback")
        self.assertEqual(matched(routes, b"h", b"/a"), "a")
        self.assertEqual(matched(routes, b"h", b"/b"), "default")

    def test_without_routes(self) -> None:
        """A listener with only a default backend sends everything there."""
        self.assertEqual(matched(table(default_backend="fallback"), b"h", b"*"), "default")


class ListenerTests(SynchronousTestCase):
    def test_listener_filter(self) -> None:
        """A route bound to other listeners is not in this listener's table."""
        routes = table(
            route("admin", listeners=("admin",)), route("public", listeners=("main", "alt"))
        )
        self.assertEqual(matched(routes, b"h", b"/"), "public")
        self.assertEqual([r.name for r in routes.routes], ["public"])

    def test_unbound_route_everywhere(self) -> None:
        """A route with no listeners applies to every listener."""
        for listener in ("main", "admin"):
            self.assertEqual(matched(RouteTable((route("all"),), listener), b"h", b"/"), "all")


def shadows(*routes: RouteConfig, listeners: tuple[str, ...] = ("main",)) -> list[tuple[str, str]]:
    """(route, shadowed by) names from :func:`shadowed`."""
    return [(later.name, earlier.name) for later, earlier in shadowed(routes, listeners)]


class ShadowTests(SynchronousTestCase):
    def test_prefix_covers_longer_prefix(self) -> None:
        """/api shadows /api/v1, and / shadows everything after it."""
        self.assertEqual(
            shadows(route("a", path_prefix="/api"), route("b", path_prefix="/api/v1")), [("b", "a")]
        )
        self.assertEqual(shadows(route("all"), route("b", path_prefix="/x")), [("b", "all")])

    def test_segment_aware(self) -> None:
        """/api does not shadow /apix, and /api/ does not shadow /api."""
        api, apix = route("a", path_prefix="/api"), route("b", path_prefix="/apix")
        self.assertEqual(shadows(api, apix), [])
        slash, bare = route("a", path_prefix="/api/"), route("b", path_prefix="/api")
        self.assertEqual(shadows(slash, bare), [])

    def test_same_prefix(self) -> None:
        """A route with the same prefix as an earlier one is shadowed."""
        self.assertEqual(
            shadows(route("a", path_prefix="/api"), route("b", path_prefix="/api")), [("b", "a")]
        )

    def test_later_first(self) -> None:
        """A broad route written after a narrow one shadows nothing."""
        self.assertEqual(shadows(route("narrow", path_prefix="/api"), route("all")), [])

    def test_exact_paths(self) -> None:
        """A prefix shadows exact paths it covers; an exact path shadows only the same one."""
        self.assertEqual(
            shadows(route("a", path_prefix="/api"), route("b", path_exact="/api/x")), [("b", "a")]
        )
        self.assertEqual(
            shadows(route("a", path_exact="/x"), route("b", path_exact="/x")), [("b", "a")]
        )
        self.assertEqual(shadows(route("a", path_exact="/x"), route("b", path_prefix="/x")), [])
        self.assertEqual(shadows(route("a", path_prefix="/x"), route("b", path_exact="/xy")), [])

    def test_methods(self) -> None:
        """Earlier methods must be none or a superset of the later route's."""
        self.assertEqual(
            shadows(route("a", methods=("GET", "HEAD")), route("b", methods=("GET",))), [("b", "a")]
        )
        get, get_post = route("a", methods=("GET",)), route("b", methods=("GET", "POST"))
        self.assertEqual(shadows(get, get_post), [])
        self.assertEqual(shadows(route("a", methods=("GET",)), route("b")), [])
        self.assertEqual(shadows(route("a"), route("b", methods=("GET",))), [("b", "a")])

    def test_header(self) -> None:
        """An earlier header condition must be absent or the identical one."""
        self.assertEqual(
            shadows(route("a", header="x-a: 1"), route("b", header="X-A: 1")), [("b", "a")]
        )
        self.assertEqual(shadows(route("a", header="x-a: 1"), route("b", header="x-a: 2")), [])
        self.assertEqual(shadows(route("a", header="x-a"), route("b", header="x-a: 1")), [])
        self.assertEqual(shadows(route("a", header="x-a"), route("b")), [])
        self.assertEqual(shadows(route("a"), route("b", header="x-a")), [("b", "a")])

    def test_host_groups(self) -> None:
        """Only routes of the same host group shadow each other."""
        self.assertEqual(shadows(route("any"), route("h", host="h.example")), [])
        self.assertEqual(shadows(route("w", host="*.example"), route("h", host="h.example")), [])
        self.assertEqual(shadows(route("h", host="h.example"), route("i", host="i.example")), [])
        self.assertEqual(
            shadows(route("w", host="*.example"), route("v", host="*.Example")), [("v", "w")]
        )

    def test_regex_opaque(self) -> None:
        """Regex routes shadow nothing, and only an unconditioned / shadows them."""
        regex = route("r", path_regex="/api/.*")
        self.assertEqual(shadows(route("a", path_prefix="/api"), regex), [])
        self.assertEqual(shadows(route("all"), regex), [("r", "all")])
        self.assertEqual(shadows(route("all", methods=("GET",)), regex), [])
        self.assertEqual(shadows(route("all", header="x-a"), regex), [])
        self.assertEqual(shadows(route("x", path_exact="/"), regex), [])
        self.assertEqual(shadows(regex, route("b", path_regex="/api/.*")), [])
        self.assertEqual(shadows(regex, route("b", path_prefix="/api/x")), [])

    def test_listeners(self) -> None:
        """An earlier route must apply on every listener the later one does."""
        both = ("main", "admin")
        self.assertEqual(
            shadows(route("a", listeners=("admin",)), route("b"), listeners=both), []
        )
        self.assertEqual(
            shadows(route("a"), route("b", listeners=("admin",)), listeners=both), [("b", "a")]
        )
        self.assertEqual(
            shadows(route("a", listeners=both), route("b"), listeners=both), [("b", "a")]
        )

    def test_first_shadow_named(self) -> None:
        """A route shadowed twice is reported once, against the first."""
        routes = route("all"), route("api", path_prefix="/api"), route("v1", path_prefix="/api/v1")
        found = shadows(*routes)
        self.assertEqual(found, [("api", "all"), ("v1", "all")])
