"""Tests for gateway.config: INI -> frozen values, and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.config import (
    SECTION_KEYS,
    BackendConfig,
    Config,
    ConfigError,
    DemoConfig,
    GatewaySettings,
    ListenerConfig,
    RouteConfig,
    ServerConfig,
    SiteConfig,
)

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
[listener:web]
bind = tcp:8080
[backend:app]
[server:app1]
backend = app
address = http://127.0.0.1:8081
[route:all]
backend = app
"""


def problems(text: str, source: str = "gw.ini") -> tuple[str, ...]:
    """The problems ``loads`` finds in ``text``; fails if it finds none."""
    try:
        config.loads(text, source)
    except ConfigError as exc:
        return exc.problems
    raise AssertionError("expected a ConfigError")


def parse(kind: str, key: str, raw: str) -> object:
    """``raw`` through the parser that the key table gives ``kind``/``key``."""
    return SECTION_KEYS[kind][key].parser.parse(raw)


class LoadTests(SynchronousTestCase):
    """Well-formed files become the frozen values they describe."""

    def test_minimal(self) -> None:
        """A listener, a backend with a server, and a route: everything else defaults."""
        server = ServerConfig("app1", "app", "http", "127.0.0.1", 8081)
        self.assertEqual(
            config.loads(MINIMAL, "gw.ini"),
            Config(
                source="gw.ini",
                listeners=(ListenerConfig("web", "tcp:8080"),),
                routes=(RouteConfig("all", "app"),),
                backends=(BackendConfig("app", servers=(server,)),),
            ),
        )

    def test_every_key(self) -> None:
        """Every key of every section lands in its field, converted."""
        loaded = config.loads(
            """\
[gateway]
access_log = off
server_header =
via_pseudonym = edge
trusted_proxies = 10.1.2.3/8 ::1
[listener:web]
bind = tcp:8080:interface=127.0.0.1
max_request_line = 16k
max_header_size = 64KiB
max_header_count = 50
max_body_size = 0
max_connections = 5
timeout_header = 500ms
timeout_idle = 2m
timeout_client = 1h
timeout_request = 0
[backend:app]
balance = leastconn
host_header = app.internal:8000
timeout_connect = 1.5
timeout_response = 2s
timeout_read = 3s
pool_max_idle = 0
pool_idle_timeout = 4s
pool_max_conns = 7
queue_size = 0
timeout_queue = 250ms
[server:a]
backend = app
address = http://[::1]:9000/
weight = 3
[route:r]
backend = app
host = WWW.Example.com
path_prefix = /api/
listeners = web
[demo:d]
bind = unix:/tmp/demo.sock
""",
            "gw.ini",
        )
        self.assertEqual(
            loaded.gateway, GatewaySettings(False, "", "edge", ("10.0.0.0/8", "::1/128"))
        )
        self.assertEqual(
            loaded.listeners,
            (
                ListenerConfig(
                    "web", "tcp:8080:interface=127.0.0.1", 16384, 65536, 50, 0, 5,
                    0.5, 120.0, 3600.0, 0.0,
                ),
            ),
        )
        server = ServerConfig("a", "app", "http", "::1", 9000, 3)
        self.assertEqual(
            loaded.backends,
            (
                BackendConfig(
                    "app", (server,), "leastconn", "app.internal:8000",
                    1.5, 2.0, 3.0, 0, 4.0, 7, 0, 0.25,
                ),
            ),
        )
        self.assertEqual(
            loaded.routes, (RouteConfig("r", "app", "www.example.com", "/api/", ("web",)),)
        )
        self.assertEqual(loaded.demos, (DemoConfig("d", "unix:/tmp/demo.sock"),))
        self.assertEqual(loaded.warnings, ())

    def test_route_order(self) -> None:
        """Routes keep the order written, because the first match wins."""
        text = MINIMAL + "[route:z]\nbackend = app\n[route:a]\nbackend = app\n"
        routes = config.loads(text, "gw.ini").routes
        self.assertEqual([route.name for route in routes], ["all", "z", "a"])

    def test_servers_in_file_order(self) -> None:
        """Servers attach to their own backend in file order, wherever they are written."""
        text = MINIMAL + (
            "[server:b2]\nbackend = b\naddress = http://h2:1\n"
            "[backend:b]\n"
            "[server:app2]\nbackend = app\naddress = http://h3:1\n"
            "[server:b1]\nbackend = b\naddress = http://h1:1\n"
        )
        loaded = config.loads(text, "gw.ini")
        self.assertEqual([s.name for s in loaded.backend("app").servers], ["app1", "app2"])
        self.assertEqual([s.name for s in loaded.backend("b").servers], ["b2", "b1"])

    def test_comments(self) -> None:
        """Lines starting with # or ; and text after a spaced # or ; are comments."""
        comments = "# c\n  ; c\n[backend:app] ; c\nbalance = leastconn # c"
        text = MINIMAL.replace("[backend:app]", comments)
        self.assertEqual(config.loads(text, "gw.ini").backend("app").balance, "leastconn")

    def test_continuation_lines(self) -> None:
        """An indented line continues the value above it, which suits long lists."""
        text = MINIMAL + "[gateway]\ntrusted_proxies = 10.0.0.1,\n    10.0.0.2\n"
        loaded = config.loads(text, "gw.ini")
        self.assertEqual(loaded.gateway.trusted_proxies, ("10.0.0.1/32", "10.0.0.2/32"))

    def test_keys_case_insensitive(self) -> None:
        """Keys are case-insensitive, as configparser reads them."""
        text = MINIMAL.replace("[backend:app]", "[backend:app]\nBALANCE = leastconn")
        self.assertEqual(config.loads(text, "gw.ini").backend("app").balance, "leastconn")

    def test_percent_is_plain(self) -> None:
        """There is no interpolation: % is an ordinary character."""
        loaded = config.loads(MINIMAL + "[gateway]\nserver_header = 100%(x)s\n", "gw.ini")
        self.assertEqual(loaded.gateway.server_header, "100%(x)s")

    def test_backend_lookup(self) -> None:
        """Config.backend finds a backend by name and raises KeyError otherwise."""
        loaded = config.loads(MINIMAL, "gw.ini")
        self.assertEqual(loaded.backend("app").name, "app")
        self.assertRaises(KeyError, loaded.backend, "nope")


class DefaultsTests(SynchronousTestCase):
    """[defaults] supplies values to every listener and backend that lacks them."""

    def test_listener_inherits(self) -> None:
        """A listener without the key takes the [defaults] value."""
        text = MINIMAL + "[defaults]\ntimeout_idle = 5s\nmax_header_count = 7\n"
        listener = config.loads(text, "gw.ini").listeners[0]
        self.assertEqual((listener.timeout_idle, listener.max_header_count), (5.0, 7))

    def test_backend_inherits(self) -> None:
        """A backend without the key takes the [defaults] value."""
        text = MINIMAL + "[defaults]\nbalance = leastconn\ntimeout_connect = 1s\n"
        backend = config.loads(text, "gw.ini").backend("app")
        self.assertEqual((backend.balance, backend.timeout_connect), ("leastconn", 1.0))

    def test_section_wins(self) -> None:
        """A section's own value beats the [defaults] value."""
        text = "[defaults]\ntimeout_idle = 5s\n" + MINIMAL.replace(
            "bind = tcp:8080", "bind = tcp:8080\ntimeout_idle = 9s"
        )
        self.assertEqual(config.loads(text, "gw.ini").listeners[0].timeout_idle, 9.0)

    def test_unset_keeps_builtin(self) -> None:
        """A key set neither in [defaults] nor in the section keeps the built-in default."""
        text = MINIMAL + "[defaults]\ntimeout_idle = 5s\n"
        self.assertEqual(config.loads(text, "gw.ini").listeners[0].timeout_header, 10.0)

    def test_bind_refused(self) -> None:
        """bind names one listener's socket, so [defaults] can't hold it."""
        (problem,) = problems(MINIMAL + "[defaults]\nbind = tcp:1\n")
        self.assertTrue(
            problem.startswith(
                "gw.ini:10 [defaults] bind: is set per section, never in [defaults]; "
                "allowed: max_request_line,"
            ),
            problem,
        )

    def test_route_key_refused(self) -> None:
        """[defaults] holds listener and backend keys only."""
        (problem,) = problems(MINIMAL + "[defaults]\npath_prefix = /\n")
        expected = "gw.ini:10 [defaults] path_prefix: unknown key; allowed: "
        self.assertTrue(problem.startswith(expected), problem)

    def test_bad_value(self) -> None:
        """A [defaults] value is checked where it is written."""
        self.assertEqual(
            problems(MINIMAL + "[defaults]\nbalance = rr\n"),
            ("gw.ini:10 [defaults] balance: expected roundrobin|leastconn|hash|random2, got 'rr'",),
        )

    def test_table(self) -> None:
        """[defaults] takes exactly the listener and backend keys except bind."""
        expected = (set(SECTION_KEYS["listener"]) | set(SECTION_KEYS["backend"])) - {"bind"}
        self.assertEqual(set(SECTION_KEYS["defaults"]), expected)


class ErrorTests(SynchronousTestCase):
    """Every problem reads ``FILE:LINE [section] key: what; allowed: ...``."""

    def test_style_guide_example(self) -> None:
        """A bad choice names file, line, section and key, then what was expected."""
        text = MINIMAL.replace("[backend:app]", "[backend:app]\nbalance = rr")
        self.assertEqual(
            problems(text, "etc/gw.ini"),
            ("etc/gw.ini:4 [backend:app] balance: "
             "expected roundrobin|leastconn|hash|random2, got 'rr'",),
        )

    def test_unknown_section_kind(self) -> None:
        """An unknown kind points at its header and lists the kinds there are."""
        self.assertEqual(
            problems(MINIMAL + "[frontend:x]\n"),
            (
                "gw.ini:9 [frontend:x] -: unknown section kind 'frontend'; allowed: gateway, "
                "defaults, listener:NAME, route:NAME, backend:NAME, server:NAME, demo:NAME, "
                "site:NAME",
            ),
        )

    def test_configparser_default_section(self) -> None:
        """[DEFAULT] has no magic here: it is just an unknown section."""
        (problem,) = problems(MINIMAL + "[DEFAULT]\nbind = tcp:1\n")
        self.assertTrue(problem.startswith("gw.ini:9 [DEFAULT] -: unknown section kind 'DEFAULT'"))

    def test_missing_name(self) -> None:
        """A named kind without a name is refused."""
        self.assertEqual(
            problems(MINIMAL + "[listener]\n"),
            ("gw.ini:9 [listener] -: expected [listener:NAME], got 'listener'; "
             "allowed: NAME of [A-Za-z0-9_.-]+",),
        )

    def test_bad_name(self) -> None:
        """A name with characters outside [A-Za-z0-9_.-] is refused."""
        (problem,) = problems(MINIMAL + "[demo:a b]\nbind = tcp:1\n")
        self.assertTrue(problem.startswith("gw.ini:9 [demo:a b] -: expected [demo:NAME]"))

    def test_name_on_single_kind(self) -> None:
        """[gateway] and [defaults] take no name."""
        self.assertEqual(
            problems(MINIMAL + "[gateway:x]\n"),
            ("gw.ini:9 [gateway:x] -: [gateway] takes no name; allowed: [gateway]",),
        )

    def test_unknown_key(self) -> None:
        """An unknown key is named with its line and the keys the section takes."""
        self.assertEqual(
            problems(MINIMAL.replace("[route:all]", "[route:all]\nprefix = /")),
            ("gw.ini:8 [route:all] prefix: unknown key; allowed: backend, host, "
             "path_prefix, path_exact, path_regex, methods, header, listeners, buffering, "
             "request_buffering, cache, cache_key_sort_query, cache_key_drop_params, "
             "cache_store_set_cookie, cache_status, cache_stale_if_error, "
             "cache_collapse_timeout, cache_target_field, cache_heuristic_max",),
        )

    def test_duplicate_section(self) -> None:
        """A section written twice is refused at its second header (and its keys repeat)."""
        self.assertEqual(
            problems(MINIMAL + "[listener:web]\nbind = tcp:8090\n"),
            (
                "gw.ini:9 [listener:web] -: duplicate section; first at line 1",
                "gw.ini:10 [listener:web] bind: duplicate key; first at line 2",
            ),
        )

    def test_duplicate_key(self) -> None:
        """A key written twice in a section is refused at the second one."""
        self.assertEqual(
            problems(MINIMAL.replace("bind = tcp:8080", "bind = tcp:8080\nBind = tcp:8090")),
            ("gw.ini:3 [listener:web] bind: duplicate key; first at line 2",),
        )

    def test_every_duplicate(self) -> None:
        """Every duplicate is reported, although configparser stops at the first."""
        text = MINIMAL + "[route:all]\nbackend = app\n[gateway]\naccess_log = 1\naccess_log = 0\n"
        self.assertEqual(
            problems(text),
            (
                "gw.ini:9 [route:all] -: duplicate section; first at line 7",
                "gw.ini:10 [route:all] backend: duplicate key; first at line 8",
                "gw.ini:13 [gateway] access_log: duplicate key; first at line 12",
            ),
        )

    def test_key_before_section(self) -> None:
        """A key above every header belongs to no section."""
        self.assertEqual(
            problems("bind = tcp:1\n" + MINIMAL),
            ("gw.ini:1 [*] -: 'bind = tcp:1' is outside any section; allowed: a header first",),
        )

    def test_unparseable_line(self) -> None:
        """A line that is neither header, key = value nor comment is reported."""
        self.assertEqual(
            problems(MINIMAL.replace("[backend:app]", "[backend:app]\nbalance leastconn")),
            ("gw.ini:4 [backend:app] -: cannot parse 'balance leastconn'; allowed: "
             "key = value, [kind:NAME], or a comment starting with # or ;",),
        )

    def test_colon_is_not_a_delimiter(self) -> None:
        """Only = separates key and value; ``key: value`` does not parse."""
        (problem,) = problems(MINIMAL.replace("[backend:app]", "[backend:app]\nbalance: rr"))
        self.assertTrue(problem.startswith("gw.ini:4 [backend:app] -: cannot parse"))

    def test_missing_required_key(self) -> None:
        """A missing required key is reported at its section's header."""
        self.assertEqual(
            problems(MINIMAL + "[server:s]\naddress = http://h:1\n"),
            ("gw.ini:9 [server:s] backend: required key is missing",),
        )

    def test_route_to_missing_backend(self) -> None:
        """A route's backend must exist."""
        self.assertEqual(
            problems(MINIMAL.replace("[route:all]\nbackend = app", "[route:all]\nbackend = nope")),
            ("gw.ini:8 [route:all] backend: no [backend:nope] section; allowed: app",),
        )

    def test_route_to_missing_listener(self) -> None:
        """Every listener a route names must exist."""
        self.assertEqual(
            problems(MINIMAL + "listeners = web, other\n"),
            ("gw.ini:9 [route:all] listeners: no [listener:other] section; allowed: web",),
        )

    def test_server_of_missing_backend(self) -> None:
        """A server's backend must exist."""
        self.assertEqual(
            problems(MINIMAL + "[server:s]\nbackend = ap\naddress = http://h:1\n"),
            ("gw.ini:10 [server:s] backend: no [backend:ap] section; allowed: app",),
        )

    def test_backend_without_servers(self) -> None:
        """A backend that no server names is refused at its header."""
        self.assertEqual(
            problems(MINIMAL + "[backend:empty]\n"),
            ("gw.ini:9 [backend:empty] servers: no [server:NAME] has backend = empty; "
             "allowed: at least one server",),
        )

    def test_no_listener(self) -> None:
        """A file without listeners is refused as a whole (line 0)."""
        self.assertEqual(
            problems(MINIMAL.replace("[listener:web]\nbind = tcp:8080\n", "")),
            ("gw.ini:0 [listener:*] -: no listener is defined; "
             "allowed: at least one [listener:NAME] section",),
        )

    def test_no_route(self) -> None:
        """A file without routes is refused as a whole (line 0)."""
        self.assertEqual(
            problems(MINIMAL.replace("[route:all]\nbackend = app\n", "")),
            ("gw.ini:0 [route:*] -: no route is defined; allowed: at least one "
             "[route:NAME] section, or a listener's default_backend",),
        )

    def test_empty_file(self) -> None:
        """An empty file lacks both listeners and routes."""
        self.assertEqual(len(problems("")), 2)

    def test_same_bind_twice(self) -> None:
        """A listener and a demo can't bind the same endpoint."""
        self.assertEqual(
            problems(MINIMAL + "[demo:d]\nbind = tcp:8080\n"),
            ("gw.ini:10 [demo:d] bind: 'tcp:8080' is bound by [listener:web]; "
             "allowed: one per endpoint",),
        )

    def test_all_problems_in_line_order(self) -> None:
        """All problems of a file are reported at once, sorted by line."""
        text = (
            "[listener:web]\nbind = tcp:99999\nmax_header_count = 0\n"
            "[frontend:x]\n"
            "[route:all]\nbackend = nope\npath_prefix = api\n"
        )
        found = problems(text)
        lines = [int(p.split(":")[1].split(" ")[0]) for p in found]
        self.assertEqual(lines, [2, 3, 4, 6, 7])

    def test_error_type(self) -> None:
        """ConfigError is an Exception whose text is its problems, one per line."""
        error = ConfigError(["a", "b"])
        self.assertIsInstance(error, Exception)
        self.assertEqual((error.problems, str(error)), (("a", "b"), "a\nb"))

    def test_unreadable_file(self) -> None:
        """A file that can't be read is one problem at line 0."""
        path = os.path.join(tempfile.mkdtemp(), "missing.ini")
        error = self.assertRaises(ConfigError, config.load, path)
        self.assertEqual(
            error.problems, (f"{path}:0 [*] -: cannot read the file: No such file or directory",)
        )

    def test_load_names_the_path(self) -> None:
        """load() names the file as given in its messages."""
        path = os.path.join(tempfile.mkdtemp(), "bad.ini")
        Path(path).write_text("\ufeff" + MINIMAL + "[gateway]\naccess_log = maybe\n")
        error = self.assertRaises(ConfigError, config.load, path)
        self.assertEqual(
            error.problems,
            (f"{path}:10 [gateway] access_log: expected true|false|yes|no|on|off|1|0, "
             "got 'maybe'",),
        )


class DurationTests(SynchronousTestCase):
    """Durations: a number and a unit ms|s|m|h, stored as float seconds."""

    def test_units(self) -> None:
        """Each unit scales to seconds; a bare number is seconds."""
        for raw, seconds in [("10", 10.0), ("1.5", 1.5), ("250ms", 0.25), ("3s", 3.0),
                             ("2m", 120.0), ("1h", 3600.0), (".5s", 0.5), ("2 M", 120.0)]:
            self.assertEqual(parse("listener", "timeout_idle", raw), seconds, raw)

    def test_malformed(self) -> None:
        """Unknown units, signs, and non-numbers are refused with the allowed range."""
        for raw in ["1d", "-1", "+1", "inf", "nan", "s", "", "1e3", "1,5"]:
            error = self.assertRaises(ValueError, parse, "listener", "timeout_idle", raw)
            self.assertEqual(
                str(error),
                f"expected a duration like 500ms, 10s, 2m or 1h, got {raw!r}; "
                "allowed: 1ms..24h",
            )

    def test_timeout_bounds(self) -> None:
        """Timeouts accept 1ms..24h and refuse either side, 0 included."""
        for kind, key in [("listener", "timeout_header"), ("listener", "timeout_idle"),
                          ("listener", "timeout_client"), ("backend", "timeout_connect"),
                          ("backend", "timeout_response"), ("backend", "timeout_read"),
                          ("backend", "pool_idle_timeout"), ("backend", "timeout_queue")]:
            self.assertEqual(parse(kind, key, "1ms"), 0.001)
            self.assertEqual(parse(kind, key, "24h"), 86400.0)
            for raw in ["0", "0.0009", "86401"]:
                error = self.assertRaises(ValueError, parse, kind, key, raw)
                self.assertEqual(str(error), f"expected a duration in 1ms..24h, got {raw!r}")

    def test_request_timeout_zero(self) -> None:
        """timeout_request = 0 means no cap; between 0 and 1ms is still refused."""
        self.assertEqual(parse("listener", "timeout_request", "0"), 0.0)
        self.assertEqual(parse("listener", "timeout_request", "24h"), 86400.0)
        for raw in ["0.5ms", "25h"]:
            error = self.assertRaises(ValueError, parse, "listener", "timeout_request", raw)
            self.assertEqual(
                str(error), f"expected a duration in 0 (no cap) or 1ms..24h, got {raw!r}"
            )


class SizeTests(SynchronousTestCase):
    """Sizes: an integer and a binary unit, stored as int bytes."""

    def test_units(self) -> None:
        """k/kb/kib, m/mb/mib, g/gb/gib in any case are powers of 1024."""
        for unit, factor in [("", 1), ("k", 1024), ("KB", 1024), ("KiB", 1024),
                             ("m", 1024**2), ("MB", 1024**2), ("mib", 1024**2),
                             ("g", 1024**3), ("Gb", 1024**3), ("GIB", 1024**3)]:
            self.assertEqual(parse("listener", "max_body_size", f"2{unit}"), 2 * factor)

    def test_malformed(self) -> None:
        """Fractions, signs, unknown units and words are refused with the range."""
        for raw in ["1.5k", "-1", "+1", "1t", "1kk", "k", "", "lots"]:
            error = self.assertRaises(ValueError, parse, "listener", "max_request_line", raw)
            self.assertEqual(
                str(error), f"expected a size like 512, 64k or 1m, got {raw!r}; allowed: 256..1m"
            )

    def test_request_line_bounds(self) -> None:
        """max_request_line accepts 256..1m bytes."""
        self.assertEqual(parse("listener", "max_request_line", "256"), 256)
        self.assertEqual(parse("listener", "max_request_line", "1m"), 1024**2)
        for raw in ["255", "1048577", "0"]:
            error = self.assertRaises(ValueError, parse, "listener", "max_request_line", raw)
            self.assertEqual(str(error), f"expected a size in 256..1m, got {raw!r}")

    def test_header_size_bounds(self) -> None:
        """max_header_size accepts 1k..1m bytes."""
        self.assertEqual(parse("listener", "max_header_size", "1024"), 1024)
        self.assertEqual(parse("listener", "max_header_size", "1m"), 1024**2)
        for raw in ["1023", "1025k"]:
            error = self.assertRaises(ValueError, parse, "listener", "max_header_size", raw)
            self.assertEqual(str(error), f"expected a size in 1k..1m, got {raw!r}")

    def test_body_size_bounds(self) -> None:
        """max_body_size accepts 0 (no limit) and 1..1024g."""
        self.assertEqual(parse("listener", "max_body_size", "0"), 0)
        self.assertEqual(parse("listener", "max_body_size", "1"), 1)
        self.assertEqual(parse("listener", "max_body_size", "1024g"), 1024**4)
        error = self.assertRaises(ValueError, parse, "listener", "max_body_size", "1025g")
        self.assertEqual(
            str(error), "expected a size in 0 (no limit) or 1..1024g, got '1025g'"
        )


class CountTests(SynchronousTestCase):
    """Integers: plain digits within a range."""

    BOUNDS = [
        ("listener", "max_header_count", 1, 10000),
        ("listener", "max_connections", 1, 1_000_000),
        ("backend", "pool_max_idle", 0, 100_000),
        ("backend", "pool_max_conns", 1, 100_000),
        ("backend", "queue_size", 0, 1_000_000),
        ("server", "weight", 1, 1000),
        ("server", "max_conns", 0, 100_000),
        ("backend", "retries", 0, 10),
        ("backend", "retry_budget_min", 0, 10_000),
        ("backend", "check_rise", 1, 100),
        ("backend", "check_fall", 1, 100),
        ("backend", "eject_consecutive", 0, 1000),
    ]

    def test_bounds(self) -> None:
        """Each count accepts its low and high bound and refuses one beyond each."""
        for kind, key, low, high in self.BOUNDS:
            self.assertEqual(parse(kind, key, str(low)), low)
            self.assertEqual(parse(kind, key, str(high)), high)
            for raw in [str(low - 1), str(high + 1)]:
                error = self.assertRaises(ValueError, parse, kind, key, raw)
                self.assertEqual(str(error), f"expected an integer {low}..{high}, got {raw!r}")

    def test_malformed(self) -> None:
        """Units, fractions, spaces inside and non-ASCII digits are refused."""
        for raw in ["1k", "1.0", "1 0", "\u0663", "", "ten"]:
            self.assertRaises(ValueError, parse, "listener", "max_header_count", raw)


class ValueTests(SynchronousTestCase):
    """The other value types: booleans, tokens, hosts, paths, lists, endpoints, URLs."""

    def test_booleans(self) -> None:
        """true/yes/on/1 and false/no/off/0 in any case; nothing else."""
        for raw in ["true", "YES", "On", "1"]:
            self.assertIs(parse("gateway", "access_log", raw), True)
        for raw in ["false", "No", "OFF", "0"]:
            self.assertIs(parse("gateway", "access_log", raw), False)
        self.assertRaises(ValueError, parse, "gateway", "access_log", "maybe")

    def test_via_pseudonym_token(self) -> None:
        """via_pseudonym must be an RFC 9110 token: not empty, no spaces or separators."""
        self.assertEqual(parse("gateway", "via_pseudonym", "edge-1.a_b~"), "edge-1.a_b~")
        for raw in ["", "a b", "a/b", "a,b", "é"]:
            self.assertRaises(ValueError, parse, "gateway", "via_pseudonym", raw)

    def test_server_header(self) -> None:
        """server_header may be empty but can't carry control characters."""
        self.assertEqual(parse("gateway", "server_header", ""), "")
        self.assertEqual(parse("gateway", "server_header", "edge (v1)"), "edge (v1)")
        for raw in ["a\r\nX-Evil: 1", "a\x00", "\u20ac"]:
            self.assertRaises(ValueError, parse, "gateway", "server_header", raw)

    def test_trusted_proxies(self) -> None:
        """Addresses and networks separated by commas or spaces, normalised."""
        self.assertEqual(
            parse("gateway", "trusted_proxies", "10.1.2.3/8, 192.168.1.7 fd00::/8"),
            ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8"),
        )
        error = self.assertRaises(ValueError, parse, "gateway", "trusted_proxies", "10.0.0.0/33")
        self.assertEqual(str(error), "expected an IP address or CIDR network, got '10.0.0.0/33'")

    def test_route_host(self) -> None:
        """A route host is a name or IP without port, stored in lower case."""
        self.assertEqual(parse("route", "host", "WWW.Example.COM."), "www.example.com")
        self.assertEqual(parse("route", "host", "[::1]"), "[::1]")
        self.assertEqual(parse("route", "host", "10.0.0.1"), "10.0.0.1")
        for raw in ["example.com:80", "::1", "a b", "-a.com", "1.2.3.999"]:
            self.assertRaises(ValueError, parse, "route", "host", raw)

    def test_route_host_wildcard(self) -> None:
        """*.NAME covers the names under NAME; NAME must be a DNS name, not an IP."""
        self.assertEqual(parse("route", "host", "*.Example.COM."), "*.example.com")
        self.assertEqual(parse("route", "host", "*.com"), "*.com")
        for raw in ["*", "*.", "*example.com", "a.*.com", "*.*.com", "*.10.0.0.1",
                    "*.[::1]", "*.example.com:80", "**.example.com"]:
            error = self.assertRaises(ValueError, parse, "route", "host", raw)
            self.assertIn(repr(raw), str(error))

    def test_path_prefix(self) -> None:
        """A path prefix starts with / and has no spaces, query or fragment."""
        self.assertEqual(parse("route", "path_prefix", "/api/v1"), "/api/v1")
        for raw in ["api", "", "/a b", "/a?b", "/a#b"]:
            self.assertRaises(ValueError, parse, "route", "path_prefix", raw)

    def test_listeners_list(self) -> None:
        """Route listeners are names separated by commas or spaces, each once."""
        self.assertEqual(parse("route", "listeners", "a, b c"), ("a", "b", "c"))
        self.assertEqual(parse("route", "listeners", ""), ())
        self.assertRaises(ValueError, parse, "route", "listeners", "a, a")
        self.assertRaises(ValueError, parse, "route", "listeners", "a, b/c")

    def test_host_header(self) -> None:
        """host_header is empty, host or host:port."""
        for raw in ["", "app.internal", "app.internal:8080", "[::1]:80"]:
            self.assertEqual(parse("backend", "host_header", raw), raw)
        for raw in ["a b", "a/b", "a:0", "a:x", "u@a", "a:70000"]:
            self.assertRaises(ValueError, parse, "backend", "host_header", raw)

    def test_bind(self) -> None:
        """bind takes tcp, tcp6 and unix endpoint strings that Twisted accepts."""
        for raw in ["tcp:0", "tcp:8080:interface=127.0.0.1:backlog=5", "tcp6:8080", "unix:/x"]:
            self.assertEqual(parse("listener", "bind", raw), raw)

    def test_bind_refused(self) -> None:
        """Endpoint strings Twisted refuses, ports out of range and other kinds are errors."""
        for raw in ["tcp:http", "tcp:8080:nonsense=1", "tcp:65536", "tcp:-1", "", "onion:80"]:
            self.assertRaises(ValueError, parse, "listener", "bind", raw)

    def test_bind_ssl_missing_key(self) -> None:
        """An ssl: endpoint whose key file is missing fails the check (fail closed)."""
        error = self.assertRaises(
            ValueError, parse, "listener", "bind", "ssl:443:privateKey=/nonexistent/key.pem"
        )
        self.assertIn("ssl:443", str(error))

    def test_address(self) -> None:
        """A server address is http://HOST[:PORT][/]; the port defaults to 80."""
        cases = [
            ("http://10.0.0.1:8000", ("http", "10.0.0.1", 8000)),
            ("http://app.internal/", ("http", "app.internal", 80)),
            ("http://[::1]:1", ("http", "::1", 1)),
            ("http://h:65535", ("http", "h", 65535)),
        ]
        for raw, expected in cases:
            self.assertEqual(parse("server", "address", raw), expected)

    def test_address_refused(self) -> None:
        """Other schemes, paths, queries, users and bad ports are errors."""
        for raw in ["ftp://h:1", "h:1", "http://h:0", "http://h:65536", "http://h/x",
                    "http://h:1?q", "http://u@h:1", "http://:80", "http://999.1.1.1:1"]:
            self.assertRaises(ValueError, parse, "server", "address", raw)

    def test_address_https(self) -> None:
        """https is TLS to the server; its port defaults to 443."""
        self.assertEqual(parse("server", "address", "https://h"), ("https", "h", 443))
        self.assertEqual(parse("server", "address", "https://h:8443/"), ("https", "h", 8443))
        error = self.assertRaises(ValueError, parse, "server", "address", "ftp://h:21")
        self.assertEqual(
            str(error),
            "expected http://HOST:PORT or https://HOST:PORT, got 'ftp://h:21'; "
            "allowed: scheme http or https",
        )


class TableTests(SynchronousTestCase):
    """The key tables are the single source of truth and agree with the dataclasses."""

    def test_fields_covered(self) -> None:
        """Every dataclass field except the identity fields has a key, and no more."""
        classes = {"gateway": GatewaySettings, "listener": ListenerConfig,
                   "route": RouteConfig, "backend": BackendConfig, "demo": DemoConfig,
                   "site": SiteConfig}
        for kind, cls in classes.items():
            names = {f.name for f in dataclasses.fields(cls)} - {"name", "servers"}
            self.assertEqual(set(SECTION_KEYS[kind]), names, kind)
        server_fields = {f.name for f in dataclasses.fields(ServerConfig)}
        self.assertEqual(
            set(SECTION_KEYS["server"]),
            server_fields - {"name", "scheme", "host", "port"} | {"address"},
        )

    def test_defaults_round_trip(self) -> None:
        """Every default, written back by its parser, parses to itself."""
        for kind, table in SECTION_KEYS.items():
            for key, spec in table.items():
                if not spec.required:
                    shown = spec.parser.show(spec.default)
                    raw = "" if shown == "(empty)" else shown
                    self.assertEqual(spec.parser.parse(raw), spec.default, f"{kind}.{key}")


BALANCED = MINIMAL.replace("[backend:app]\n", "[backend:app]\n{backend}").replace(
    "address = http://127.0.0.1:8081\n", "address = http://127.0.0.1:8081\n{server}"
)


def balanced(backend: str = "", server: str = "", more: str = "") -> str:
    """MINIMAL with lines added to [backend:app] and [server:app1], and ``more`` at the end."""
    return BALANCED.format(backend=backend, server=server) + more


class BalancingKeysTests(SynchronousTestCase):
    """Load balancing, health checks, retries and ejection keys land in their fields."""

    def test_every_key(self) -> None:
        """Every backend and server key of the balancing issue, converted."""
        backend_keys = """\
balance = hash
hash_key = header:X-User
retries = 0
retry_budget = 0.5
retry_budget_min = 0
retry_window = 1m
retry_after = 30s
check = http
check_interval = 5s
check_timeout = 500ms
check_rise = 1
check_fall = 10
check_method = HEAD
check_path = /health?full=1
check_host = health.internal
check_status = 200
check_body = ok
eject_consecutive = 0
eject_statuses = 500 502
eject_time = 10s
eject_time_max = 1h
eject_max_share = 1
slow_start = 20s
"""
        server_keys = "max_conns = 100\nbackup = no\ndrain = yes\n"
        loaded = config.loads(balanced(backend_keys, server_keys), "gw.ini")
        server = ServerConfig(
            "app1", "app", "http", "127.0.0.1", 8081, max_conns=100, backup=False, drain=True
        )
        expected = BackendConfig(
            "app", (server,), balance="hash", hash_key="header:x-user", retries=0,
            retry_budget=0.5, retry_budget_min=0, retry_window=60.0, retry_after=30.0,
            check="http", check_interval=5.0, check_timeout=0.5, check_rise=1, check_fall=10,
            check_method="HEAD", check_path="/health?full=1", check_host="health.internal",
            check_status=(200, 200), check_body="ok", eject_consecutive=0,
            eject_statuses=(500, 502), eject_time=10.0, eject_time_max=3600.0,
            eject_max_share=1.0, slow_start=20.0,
        )
        self.assertEqual(loaded.backends, (expected,))

    def test_defaults(self) -> None:
        """Unset, the keys take their documented defaults."""
        backend = config.loads(MINIMAL, "gw.ini").backend("app")
        self.assertEqual(
            (backend.balance, backend.hash_key, backend.retries, backend.retry_budget,
             backend.retry_budget_min, backend.retry_window, backend.retry_after, backend.check,
             backend.check_status, backend.eject_statuses, backend.slow_start),
            ("roundrobin", "client_ip", 2, 0.2, 10, 10.0, 5.0, "none", (200, 399),
             (502, 503, 504), 0.0),
        )
        server = backend.servers[0]
        self.assertEqual((server.weight, server.max_conns, server.backup, server.drain),
                         (1, 0, False, False))

    def test_in_defaults_section(self) -> None:
        """Every new backend key may be set in [defaults] and is inherited."""
        text = MINIMAL + "[defaults]\nbalance = random2\ncheck = tcp\neject_time_max = 1m\n"
        backend = config.loads(text, "gw.ini").backend("app")
        self.assertEqual((backend.balance, backend.check, backend.eject_time_max),
                         ("random2", "tcp", 60.0))
        for key in ("hash_key", "retries", "retry_budget", "check_status", "slow_start"):
            self.assertIn(key, SECTION_KEYS["defaults"])

    def test_hash_key_without_hash(self) -> None:
        """hash_key with another balance is allowed (it is simply unused)."""
        backend = config.loads(balanced("hash_key = uri\n"), "gw.ini").backend("app")
        self.assertEqual((backend.balance, backend.hash_key), ("roundrobin", "uri"))


class BalancingValueTests(SynchronousTestCase):
    """Each new value type and range, on both sides of each bound."""

    def test_balance(self) -> None:
        """balance is one of four algorithms."""
        for raw in ["roundrobin", "leastconn", "hash", "random2"]:
            self.assertEqual(parse("backend", "balance", raw), raw)
        error = self.assertRaises(ValueError, parse, "backend", "balance", "random")
        self.assertEqual(
            str(error), "expected roundrobin|leastconn|hash|random2, got 'random'"
        )

    def test_check(self) -> None:
        """check is none, http or tcp."""
        for raw in ["none", "http", "tcp"]:
            self.assertEqual(parse("backend", "check", raw), raw)
        for raw in ["HTTP", "off", ""]:
            self.assertRaises(ValueError, parse, "backend", "check", raw)

    def test_hash_key(self) -> None:
        """client_ip, uri, header:NAME (lower-cased) or cookie:NAME (kept), NAME a token."""
        cases = [("client_ip", "client_ip"), ("uri", "uri"), ("header:X-User", "header:x-user"),
                 ("cookie:SessionID", "cookie:SessionID")]
        for raw, value in cases:
            self.assertEqual(parse("backend", "hash_key", raw), value)
        for raw in ["", "ip", "header", "header:", "cookie:a b", "header:a:b", "Header:x",
                    "query:q"]:
            error = self.assertRaises(ValueError, parse, "backend", "hash_key", raw)
            self.assertEqual(
                str(error), f"expected client_ip|uri|header:NAME|cookie:NAME, got {raw!r}; "
                "allowed: NAME an RFC 9110 token",
            )

    def test_ratios(self) -> None:
        """retry_budget and eject_max_share are decimals 0..1."""
        for key in ("retry_budget", "eject_max_share"):
            for raw, value in [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (".5", 0.5), ("1.0", 1.0)]:
                self.assertEqual(parse("backend", key, raw), value)
            for raw in ["1.01", "-0.1", "20%", "", "1e-1", "nan", "2"]:
                error = self.assertRaises(ValueError, parse, "backend", key, raw)
                self.assertEqual(str(error), f"expected a decimal 0..1, got {raw!r}")

    def test_duration_bounds(self) -> None:
        """Each new duration accepts its bounds and refuses either side."""
        cases = [
            ("retry_window", "1s", 1.0, "1h", 3600.0, ["999ms", "3601s"], "1s..1h"),
            ("retry_after", "1s", 1.0, "1h", 3600.0, ["0", "3601"], "1s..1h"),
            ("check_interval", "100ms", 0.1, "1h", 3600.0, ["99ms", "61m"], "100ms..1h"),
            ("check_timeout", "1ms", 0.001, "1h", 3600.0, ["0", "3601s"], "1ms..1h"),
            ("eject_time", "1s", 1.0, "1h", 3600.0, ["0.5s", "2h"], "1s..1h"),
            ("eject_time_max", "1s", 1.0, "24h", 86400.0, ["999ms", "25h"], "1s..24h"),
            ("slow_start", "1s", 1.0, "1h", 3600.0, ["500ms", "3601"], "0 (off) or 1s..1h"),
        ]
        for key, low, low_value, high, high_value, outside, allowed in cases:
            self.assertEqual(parse("backend", key, low), low_value, key)
            self.assertEqual(parse("backend", key, high), high_value, key)
            for raw in outside:
                error = self.assertRaises(ValueError, parse, "backend", key, raw)
                self.assertEqual(str(error), f"expected a duration in {allowed}, got {raw!r}")

    def test_slow_start_off(self) -> None:
        """slow_start = 0 turns it off."""
        self.assertEqual(parse("backend", "slow_start", "0"), 0.0)

    def test_retry_after_whole_seconds(self) -> None:
        """Retry-After is sent as delay-seconds, so only whole seconds are accepted."""
        self.assertEqual(parse("backend", "retry_after", "2000ms"), 2.0)
        self.assertEqual(parse("backend", "retry_after", "1.5m"), 90.0)
        error = self.assertRaises(ValueError, parse, "backend", "retry_after", "1.5s")
        self.assertEqual(
            str(error), "expected a duration in whole seconds, got '1.5s'; allowed: 1s..1h"
        )

    def test_booleans(self) -> None:
        """backup and drain are booleans."""
        for key in ("backup", "drain"):
            self.assertIs(parse("server", key, "yes"), True)
            self.assertIs(parse("server", key, "off"), False)
            self.assertRaises(ValueError, parse, "server", key, "maybe")

    def test_check_method(self) -> None:
        """check_method is an RFC 9110 method token, kept as written."""
        for raw in ["GET", "HEAD", "OPTIONS", "PROPFIND"]:
            self.assertEqual(parse("backend", "check_method", raw), raw)
        for raw in ["", "G ET", "GET/", "GÉT"]:
            self.assertRaises(ValueError, parse, "backend", "check_method", raw)

    def test_check_path(self) -> None:
        """check_path is origin-form: a path starting with /, maybe a query."""
        for raw in ["/", "/health", "/health?full=1&x=/y?"]:
            self.assertEqual(parse("backend", "check_path", raw), raw)
        for raw in ["", "health", "/a b", "/a#b", "http://h/x", "?x"]:
            error = self.assertRaises(ValueError, parse, "backend", "check_path", raw)
            self.assertTrue(str(error).startswith("expected a path starting with /"), raw)

    def test_check_host(self) -> None:
        """check_host is empty (the server's address), host or host:port."""
        for raw in ["", "health.internal", "health.internal:8080", "[::1]:80"]:
            self.assertEqual(parse("backend", "check_host", raw), raw)
        for raw in ["a b", "a/b", "a:0", "u@h"]:
            self.assertRaises(ValueError, parse, "backend", "check_host", raw)

    def test_check_status(self) -> None:
        """check_status is LO-HI or one code, 100 <= LO <= HI <= 599."""
        cases = [("200-399", (200, 399)), ("200", (200, 200)), ("100-599", (100, 599)),
                 ("204 - 204", (204, 204))]
        for raw, value in cases:
            self.assertEqual(parse("backend", "check_status", raw), value)
        for raw in ["099-200", "99", "200-600", "600", "400-300", "2xx", "200-", "", "-200"]:
            error = self.assertRaises(ValueError, parse, "backend", "check_status", raw)
            self.assertEqual(
                str(error), f"expected a status range like 200-399, or one status, got {raw!r}; "
                "allowed: 100..599, low first",
            )

    def test_check_status_show(self) -> None:
        """A range is written LO-HI, a single code alone."""
        spec = SECTION_KEYS["backend"]["check_status"].parser
        self.assertEqual((spec.show((200, 399)), spec.show((200, 200))), ("200-399", "200"))

    def test_check_body(self) -> None:
        """check_body is text: empty (no body check) or printable."""
        self.assertEqual(parse("backend", "check_body", ""), "")
        self.assertEqual(parse("backend", "check_body", "status: ok"), "status: ok")
        self.assertRaises(ValueError, parse, "backend", "check_body", "a\nb")

    def test_eject_statuses(self) -> None:
        """eject_statuses lists codes 500..599, each once; empty is allowed."""
        self.assertEqual(parse("backend", "eject_statuses", "500, 599 503"), (500, 599, 503))
        self.assertEqual(parse("backend", "eject_statuses", ""), ())
        for raw in ["499", "600", "5xx", "50", "5000"]:
            error = self.assertRaises(ValueError, parse, "backend", "eject_statuses", raw)
            self.assertEqual(
                str(error), f"expected status codes 500..599, got {raw!r}; allowed: comma separated"
            )
        error = self.assertRaises(ValueError, parse, "backend", "eject_statuses", "502, 502")
        self.assertEqual(str(error), "expected each status once, got '502, 502'")


class BackendRuleTests(SynchronousTestCase):
    """Rules between the keys of one backend, and of its servers."""

    def test_check_timeout_below_interval(self) -> None:
        """check_timeout must be shorter than check_interval: equal is refused."""
        config.loads(balanced("check_interval = 2s\ncheck_timeout = 1999ms\n"), "gw.ini")
        self.assertEqual(
            problems(balanced("check_interval = 2s\ncheck_timeout = 2s\n")),
            ("gw.ini:5 [backend:app] check_timeout: check_timeout 2s is not shorter than "
             "check_interval 2s; allowed: check_timeout < check_interval",),
        )

    def test_check_interval_blamed(self) -> None:
        """When the backend sets only check_interval, the problem is reported there."""
        self.assertEqual(
            problems(balanced("check_interval = 500ms\n")),
            ("gw.ini:4 [backend:app] check_interval: check_timeout 1s is not shorter than "
             "check_interval 500ms; allowed: check_timeout < check_interval",),
        )

    def test_clash_from_defaults(self) -> None:
        """A clash inherited from [defaults] is reported once, at [defaults]."""
        text = MINIMAL + "[backend:b]\n[server:b1]\nbackend = b\naddress = http://h:1\n"
        self.assertEqual(
            problems(text + "[defaults]\ncheck_timeout = 3s\n"),
            ("gw.ini:14 [defaults] check_timeout: check_timeout 3s is not shorter than "
             "check_interval 2s; allowed: check_timeout < check_interval",),
        )

    def test_clash_with_defaults(self) -> None:
        """A backend's own key clashing with a [defaults] value is reported at the backend."""
        text = balanced("check_interval = 1s\n", more="[defaults]\ncheck_timeout = 1s\n")
        (problem,) = problems(text)
        self.assertTrue(problem.startswith("gw.ini:4 [backend:app] check_interval: "), problem)

    def test_eject_time_max(self) -> None:
        """eject_time_max must be at least eject_time: equal is fine, shorter is not."""
        config.loads(balanced("eject_time = 1m\neject_time_max = 60s\n"), "gw.ini")
        self.assertEqual(
            problems(balanced("eject_time = 1m\neject_time_max = 59s\n")),
            ("gw.ini:5 [backend:app] eject_time_max: eject_time_max 59s is shorter than "
             "eject_time 1m; allowed: eject_time_max >= eject_time",),
        )

    def test_all_backup(self) -> None:
        """A backend whose servers are all backups is refused at its header."""
        self.assertEqual(
            problems(balanced(server="backup = yes\n")),
            ("gw.ini:3 [backend:app] servers: every server of this backend has backup = true, "
             "so none serves while all are up; allowed: at least one server with backup = false",),
        )

    def test_one_primary_enough(self) -> None:
        """One server that is not a backup is enough; draining servers are fine too."""
        more = "[server:app2]\nbackend = app\naddress = http://h:2\nbackup = yes\n"
        loaded = config.loads(balanced(server="drain = yes\n", more=more), "gw.ini")
        self.assertEqual([s.backup for s in loaded.backend("app").servers], [False, True])


class RouteKeysTests(SynchronousTestCase):
    """Route conditions and a listener's default backend."""

    def test_conditions_load(self) -> None:
        """path_exact, path_regex, methods and header land in their fields."""
        text = MINIMAL + (
            "[route:exact]\nbackend = app\npath_exact = /login\nmethods = POST, PUT\n"
            "header = X-Canary: yes\n"
            "[route:regex]\nbackend = app\nhost = *.Example.com\npath_regex = /v[0-9]+/\n"
        )
        loaded = config.loads(text, "gw.ini")
        self.assertEqual(
            loaded.routes[1:],
            (
                RouteConfig("exact", "app", path_exact="/login", methods=("POST", "PUT"),
                            header="x-canary: yes"),
                RouteConfig("regex", "app", host="*.example.com", path_regex="/v[0-9]+/"),
            ),
        )

    def test_one_path_condition(self) -> None:
        """At most one of path_prefix, path_exact and path_regex."""
        text = MINIMAL + "path_prefix = /a\npath_exact = /a\npath_regex = /a\n"
        self.assertEqual(
            problems(text),
            (
                "gw.ini:10 [route:all] path_exact: conflicts with path_prefix; "
                "allowed: one of path_prefix, path_exact, path_regex",
                "gw.ini:11 [route:all] path_regex: conflicts with path_prefix; "
                "allowed: one of path_prefix, path_exact, path_regex",
            ),
        )

    def test_exact_and_regex(self) -> None:
        """path_exact with path_regex is refused too, at path_regex."""
        (problem,) = problems(MINIMAL + "path_regex = /a\npath_exact = /a\n")
        self.assertTrue(problem.startswith("gw.ini:9 [route:all] path_regex: conflicts with "
                                           "path_exact;"), problem)

    def test_empty_conditions_are_unset(self) -> None:
        """An empty path_exact or path_regex sets nothing, so path_prefix may stay."""
        text = MINIMAL + "path_prefix = /a\npath_exact =\npath_regex =\n"
        self.assertEqual(config.loads(text, "gw.ini").routes[0].path_prefix, "/a")

    def test_path_exact(self) -> None:
        """path_exact is empty (none) or a path without query."""
        self.assertEqual(parse("route", "path_exact", "/a/b"), "/a/b")
        self.assertEqual(parse("route", "path_exact", ""), "")
        for raw in ["a", "/a?b", "/a b", "/a#b"]:
            self.assertRaises(ValueError, parse, "route", "path_exact", raw)

    def test_path_regex(self) -> None:
        """path_regex must compile with Python's re, in printable ASCII."""
        for raw in ["", "/v[0-9]+/", r".*\.php$", "/(a|b)"]:
            self.assertEqual(parse("route", "path_regex", raw), raw)
        error = self.assertRaises(ValueError, parse, "route", "path_regex", "/(a")
        self.assertTrue(
            str(error).startswith(
                "expected a regular expression Python's re compiles, got '/(a'; allowed: missing )"
            ),
            str(error),
        )
        for raw in ["/é", "/a\tb"]:
            error = self.assertRaises(ValueError, parse, "route", "path_regex", raw)
            self.assertEqual(
                str(error), f"expected a regular expression, got {raw!r}; allowed: printable ASCII"
            )

    def test_methods(self) -> None:
        """methods are tokens separated by commas or spaces, each once, kept as written."""
        self.assertEqual(parse("route", "methods", "GET, HEAD POST"), ("GET", "HEAD", "POST"))
        self.assertEqual(parse("route", "methods", ""), ())
        self.assertRaises(ValueError, parse, "route", "methods", "GET, GET")
        self.assertRaises(ValueError, parse, "route", "methods", "GET/1")

    def test_header(self) -> None:
        """header is Name or Name: value; the name is lower-cased, the value kept."""
        cases = [("X-Canary", "x-canary"), ("X-Canary: Yes", "x-canary: Yes"),
                 ("X-A :  a b ", "x-a: a b"), ("", "")]
        for raw, value in cases:
            self.assertEqual(parse("route", "header", raw), value)
        for raw in ["X A", "X-A:", ": v", "X-A: \x01", "X-A: é", "X-A/B: 1"]:
            error = self.assertRaises(ValueError, parse, "route", "header", raw)
            self.assertEqual(
                str(error), f"expected Name or Name: value, got {raw!r}; "
                "allowed: Name an RFC 9110 token; value printable ASCII, not empty",
            )

    def test_default_backend(self) -> None:
        """A listener's default_backend must name a backend."""
        text = MINIMAL.replace("bind = tcp:8080", "bind = tcp:8080\ndefault_backend = app")
        self.assertEqual(config.loads(text, "gw.ini").listeners[0].default_backend, "app")
        self.assertEqual(
            problems(text.replace("default_backend = app", "default_backend = nope")),
            ("gw.ini:3 [listener:web] default_backend: no [backend:nope] section; "
             "allowed: app",),
        )
        self.assertRaises(ValueError, parse, "listener", "default_backend", "a b")

    def test_default_backend_in_defaults(self) -> None:
        """default_backend may be set in [defaults]; it is checked there."""
        loaded = config.loads(MINIMAL + "[defaults]\ndefault_backend = app\n", "gw.ini")
        self.assertEqual(loaded.listeners[0].default_backend, "app")
        self.assertEqual(
            problems(MINIMAL + "[defaults]\ndefault_backend = x\n"),
            ("gw.ini:10 [defaults] default_backend: no [backend:x] section; allowed: app",),
        )

    def test_no_route_with_default_backend(self) -> None:
        """A default backend is enough: routes become optional."""
        text = MINIMAL.replace("[route:all]\nbackend = app\n", "").replace(
            "bind = tcp:8080", "bind = tcp:8080\ndefault_backend = app"
        )
        self.assertEqual(config.loads(text, "gw.ini").routes, ())


class ShadowWarningTests(SynchronousTestCase):
    """Routes that can never match are warned about, and the file still loads."""

    def test_warning_format(self) -> None:
        """FILE:LINE [route:NAME] -: never matches: shadowed by [route:OTHER] (line N)."""
        text = MINIMAL + "[route:api]\nbackend = app\npath_prefix = /api\n"
        self.assertEqual(
            config.loads(text, "gw.ini").warnings,
            ("gw.ini:9 [route:api] -: never matches: shadowed by [route:all] (line 7)",),
        )

    def test_no_warning(self) -> None:
        """Routes in the useful order, or in other host groups, raise no warning."""
        text = MINIMAL.replace("[route:all]", "[route:api]\nbackend = app\npath_prefix = /api\n"
                               "[route:all]") + "[route:h]\nbackend = app\nhost = h.example\n"
        self.assertEqual(config.loads(text, "gw.ini").warnings, ())

    def test_listeners_considered(self) -> None:
        """A catch-all on one listener doesn't shadow a route on another."""
        text = MINIMAL + (
            "listeners = web\n[listener:admin]\nbind = tcp:8090\n"
            "[route:admin]\nbackend = app\nlisteners = admin\n"
        )
        self.assertEqual(config.loads(text, "gw.ini").warnings, ())



class QuickTests(SynchronousTestCase):
    """quick(): the configuration for --listen/--upstream."""

    def test_same_as_ini(self) -> None:
        """quick() builds what the equivalent INI file loads to."""
        text = (
            "[listener:quick]\nbind = tcp:8080\n"
            "[route:quick]\nbackend = quick\n"
            "[backend:quick]\nbalance = roundrobin\n"
            "[server:quick1]\nbackend = quick\naddress = http://a:1\n"
            "[server:quick2]\nbackend = quick\naddress = http://b:2\n"
        )
        expected = dataclasses.replace(config.loads(text, "x"), source="<command line>")
        self.assertEqual(config.quick("tcp:8080", ["http://a:1", "http://b:2"]), expected)

    def test_bad_listen(self) -> None:
        """A bad --listen is reported against the command line."""
        error = self.assertRaises(ConfigError, config.quick, "tcp:http", ["http://a:1"])
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(
            error.problems[0].startswith(
                "<command line>: --listen: expected an endpoint Twisted accepts, got 'tcp:http'"
            ),
            error.problems[0],
        )

    def test_bad_upstreams(self) -> None:
        """Every bad --upstream is reported, after a bad --listen."""
        error = self.assertRaises(ConfigError, config.quick, "x", ["http://a:1", "a:1", "b"])
        self.assertEqual(len(error.problems), 3)
        self.assertTrue(error.problems[0].startswith("<command line>: --listen: "))
        self.assertTrue(error.problems[1].startswith("<command line>: --upstream: "))

    def test_no_upstreams(self) -> None:
        """At least one --upstream is required."""
        error = self.assertRaises(ConfigError, config.quick, "tcp:8080", [])
        self.assertEqual(
            error.problems,
            ("<command line>: --upstream: missing; allowed: one or more http://HOST:PORT",),
        )


class ShippedFilesTests(SynchronousTestCase):
    """The packaged default and the examples in etc/ load."""

    def test_default_path(self) -> None:
        """default_path() is the packaged gateway/data/default.ini, and it loads."""
        path = config.default_path()
        self.assertEqual(Path(path), REPO / "gateway" / "data" / "default.ini")
        loaded = config.load(path)
        self.assertEqual([listener.bind for listener in loaded.listeners],
                         ["tcp:8080:interface=127.0.0.1"])
        self.assertEqual([d.name for d in loaded.demos], ["demo1", "demo2"])
        ports = [server.port for server in loaded.backend("demo").servers]
        self.assertEqual(ports, [8081, 8082])

    def test_etc_examples(self) -> None:
        """Every etc/*.ini loads."""
        paths = sorted(glob.glob(str(REPO / "etc" / "*.ini")))
        self.assertIn(str(REPO / "etc" / "gateway.ini"), paths)
        for path in paths:
            config.load(path)

    def test_demo_is_default(self) -> None:
        """etc/demo.ini describes the same configuration as the packaged default."""
        demo = config.load(str(REPO / "etc" / "demo.ini"))
        default = config.load(config.default_path())
        self.assertEqual(dataclasses.replace(demo, source=default.source), default)


class CheckCommandTests(SynchronousTestCase):
    """``python -m gateway check`` exits 0 when every file loads and 1 otherwise."""

    def run_check(self, *files: str) -> subprocess.CompletedProcess[str]:
        """Run the command from the repository root."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", *files],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )

    def test_ok(self) -> None:
        """Good files print FILE: OK to stdout and exit 0."""
        result = self.run_check("etc/gateway.ini", "etc/demo.ini")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, "etc/gateway.ini: OK\netc/demo.ini: OK\n", ""),
        )

    def test_problems(self) -> None:
        """Problems go to stderr, one per line, and the exit status is 1."""
        path = os.path.join(tempfile.mkdtemp(), "bad.ini")
        Path(path).write_text(MINIMAL.replace("[backend:app]", "[backend:app]\nbalance = rr"))
        result = self.run_check("etc/demo.ini", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "etc/demo.ini: OK\n")
        self.assertEqual(
            result.stderr,
            f"{path}:4 [backend:app] balance: "
            "expected roundrobin|leastconn|hash|random2, got 'rr'\n",
        )

    def test_warnings(self) -> None:
        """Warnings follow FILE: OK on stdout, and the exit status stays 0."""
        path = os.path.join(tempfile.mkdtemp(), "shadow.ini")
        Path(path).write_text(MINIMAL + "[route:api]\nbackend = app\npath_prefix = /api\n")
        result = self.run_check(path)
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, f"{path}: OK\n{path}:9 [route:api] -: never matches: "
                "shadowed by [route:all] (line 7)\n", ""),
        )

    def test_usage(self) -> None:
        """check without a file is a usage error (argparse exits 2)."""
        self.assertEqual(self.run_check().returncode, 2)
