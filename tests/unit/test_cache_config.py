"""The cache's configuration keys: defaults, bounds on both sides, rules between keys, quick mode."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.cache.route import route_policy
from gateway.config import SECTION_KEYS, ConfigError, GatewaySettings, RouteConfig

BASE = """\
[gateway]
{gateway}
[listener:web]
bind = tcp:8080
[backend:app]
[server:app1]
backend = app
address = http://127.0.0.1:8081
[route:all]
backend = app
{route}
"""


def load(gateway: str = "", route: str = "", source: str = "/etc/gw/gw.ini") -> config.Config:
    return config.loads(BASE.format(gateway=gateway, route=route), source)


def problems(gateway: str = "", route: str = "") -> tuple[str, ...]:
    try:
        load(gateway, route)
    except ConfigError as exc:
        return exc.problems
    raise AssertionError("expected a ConfigError")


def parse(kind: str, key: str, raw: str) -> object:
    return SECTION_KEYS[kind][key].parser.parse(raw)


class DefaultTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Cache off by default; documented defaults for every key."""
        loaded = load()
        settings = loaded.gateway
        self.assertEqual(settings.cache_dir, "")
        self.assertEqual(settings.cache_max_size, 1024**3)
        self.assertEqual(settings.cache_max_object, 64 * 1024**2)
        self.assertFalse(settings.cache_fsync)
        self.assertEqual(settings.cache_purge_from, ())
        self.assertEqual(settings.cache_status_name, "gateway")
        route = loaded.routes[0]
        self.assertFalse(route.cache)
        self.assertTrue(route.cache_status)
        self.assertEqual(route.cache_stale_if_error, 0.0)
        self.assertEqual(route.cache_collapse_timeout, 5.0)
        self.assertEqual(route.cache_heuristic_max, 86400.0)

    def test_cache_on(self) -> None:
        """cache_dir (relative to the file) and cache = true turn the route's cache on."""
        loaded = load("cache_dir = cache\ncache_purge_from = 10.1.2.3/8", "cache = yes")
        self.assertEqual(loaded.gateway.cache_dir, os.path.normpath("/etc/gw/cache"))
        self.assertEqual(loaded.gateway.cache_purge_from, ("10.0.0.0/8",))
        self.assertTrue(loaded.routes[0].cache)


class BoundTests(SynchronousTestCase):
    """Every limit, tested on both sides."""

    def check(self, kind: str, key: str, good: list[str], bad: list[str]) -> None:
        for raw in good:
            parse(kind, key, raw)
        for raw in bad:
            self.assertRaises(ValueError, parse, kind, key, raw)

    def test_max_size(self) -> None:
        self.check("gateway", "cache_max_size", ["1m", "1024g"], ["1023k", "1025g", "0", "-1m"])

    def test_max_object(self) -> None:
        self.check("gateway", "cache_max_object", ["1k", "1024g"], ["1023", "1025g", "0"])

    def test_status_name(self) -> None:
        self.check("gateway", "cache_status_name", ["edge-1", "gw.cache"], ["two words", "", "a;b"])

    def test_purge_from(self) -> None:
        self.check("gateway", "cache_purge_from", ["", "127.0.0.1, ::1/128"], ["localhost", "10.0.0.0/33"])

    def test_stale_if_error(self) -> None:
        self.check("route", "cache_stale_if_error", ["0", "1s", "8760h"], ["0.5s", "8761h", "-1"])

    def test_collapse_timeout(self) -> None:
        self.check("route", "cache_collapse_timeout", ["0", "1ms", "1h"], ["0.5ms", "61m"])

    def test_heuristic_max(self) -> None:
        self.check("route", "cache_heuristic_max", ["0", "1s", "8760h"], ["0.5s", "8761h"])

    def test_target_field(self) -> None:
        self.check("route", "cache_target_field", ["", "Gateway-Cache-Control"], ["A:B", "a b"])

    def test_drop_params(self) -> None:
        self.assertEqual(parse("route", "cache_key_drop_params", "utm_source, fbclid"), ("utm_source", "fbclid"))
        self.check("route", "cache_key_drop_params", ["", "a%20b"], ["a=b", "a&b", "x, x", "a#"])


class RuleTests(SynchronousTestCase):
    """Rules between cache keys."""

    def test_cache_needs_dir(self) -> None:
        """cache = true with no cache_dir is an error naming the route's key."""
        (problem,) = problems(route="cache = true")
        self.assertIn("[route:all] cache: is true but [gateway] cache_dir is empty", problem)

    def test_object_fits_in_store(self) -> None:
        """cache_max_object may equal cache_max_size, never exceed it."""
        load("cache_max_size = 64m\ncache_max_object = 64m")
        (problem,) = problems("cache_max_size = 64m\ncache_max_object = 65m")
        self.assertIn("[gateway] cache_max_object: cache_max_object 65m is larger than cache_max_size 64m", problem)

    def test_small_store_blamed_when_object_default(self) -> None:
        """A cache_max_size below the default object size is reported at cache_max_size."""
        (problem,) = problems("cache_max_size = 10m")
        self.assertIn("[gateway] cache_max_size:", problem)


class QuickTests(SynchronousTestCase):
    """config.quick(..., cache_dir=...) for ``--cache DIR``."""

    def test_without_cache(self) -> None:
        quick = config.quick("tcp:8080", ["http://127.0.0.1:8081"])
        self.assertEqual(quick.gateway.cache_dir, "")
        self.assertFalse(quick.routes[0].cache)

    def test_with_cache(self) -> None:
        quick = config.quick("tcp:8080", ["http://127.0.0.1:8081"], cache_dir="var/cache")
        self.assertEqual(quick.gateway.cache_dir, os.path.abspath("var/cache"))
        self.assertTrue(quick.routes[0].cache)

    def test_empty_cache_dir(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.quick("tcp:8080", ["http://127.0.0.1:8081"], cache_dir="")
        self.assertIn("--cache", str(caught.exception))


class PolicyTests(SynchronousTestCase):
    """route_policy: what a route's keys mean to the cache."""

    def test_policy(self) -> None:
        route = RouteConfig(
            "r", "app", cache=True, cache_key_sort_query=True, cache_key_drop_params=("utm",),
            cache_store_set_cookie=True, cache_status=False, cache_stale_if_error=30.0,
            cache_collapse_timeout=0.0, cache_target_field="Gateway-Cache-Control", cache_heuristic_max=60.0,
        )  # fmt: skip
        policy = route_policy(route, GatewaySettings())
        self.assertEqual(policy.keys.key(b"http", b"a", b"/?utm=1&b=2&a=1"), b"http://a/?a=1&b=2")
        self.assertEqual(policy.rules.targets, (b"gateway-cache-control", b"cdn-cache-control"))
        self.assertTrue(policy.rules.store_set_cookie)
        self.assertEqual(policy.rules.default_stale_if_error, 30.0)
        self.assertEqual(policy.rules.heuristic_max, 60.0)
        self.assertIsNone(policy.status(hit=True))
        self.assertEqual(policy.collapse_timeout, 0.0)
