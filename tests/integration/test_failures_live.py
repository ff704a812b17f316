"""Upstream failures over real sockets: the gateway answers with its own page and lives on.

One gateway per test, in front of two backends: ``live`` (a real origin, with a
short ``timeout_response``) and ``dead`` (a port where nothing listens), routed
by path prefix.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from .support import Gateway, Origin, free_port, listener_ini

#: Short enough to keep the suite fast, long enough that a loaded machine answers.
TIMEOUT_RESPONSE = 0.5


def failures_ini(origin_url: str, dead_port: int) -> str:
    return listener_ini() + f"""
[route:dead]
path_prefix = /dead/
backend = dead

[route:live]
backend = live

[backend:live]
timeout_response = {int(TIMEOUT_RESPONSE * 1000)}ms

[server:origin]
backend = live
address = {origin_url}

[backend:dead]
timeout_connect = 2s

[server:nothing]
backend = dead
address = http://127.0.0.1:{dead_port}
"""


class UpstreamFailureTests(SynchronousTestCase):
    """Each upstream failure kind gets its status and the gateway's own page."""

    def setUp(self) -> None:
        self.origin = Origin(self).start()
        self.dead_port = free_port()
        self.gateway = Gateway(self, failures_ini(self.origin.url, self.dead_port)).start()

    def assert_own_page(self, status: int, reason: str, headers: dict[str, str],
                        body: bytes) -> None:
        """The body is the gateway's page for ``status``; nothing of the upstream shows."""
        self.assertEqual(headers.get("Content-Type"), "text/html; charset=utf-8")
        self.assertIn(f"<h1>{status} {reason}</h1>".encode(), body)
        text = body.decode("utf-8", errors="replace")
        for leak in ("Traceback", "File \"", "refused", "origin", "nothing", "127.0.0.1",
                     str(self.dead_port), str(self.origin.port), "Python", "Twisted"):
            self.assertNotIn(leak, text)

    def test_refused_upstream_is_502(self) -> None:
        """Nothing listening upstream: 502 with the gateway's page, no cause shown."""
        status, headers, body = self.gateway.get("/dead/x")
        self.assertEqual(status, 502, body)
        self.assert_own_page(502, "Bad Gateway", headers, body)

    def test_slow_upstream_is_504(self) -> None:
        """No response head within timeout_response: 504 soon after the timeout."""
        started = time.monotonic()
        status, headers, body = self.gateway.get("/sleep/5")
        elapsed = time.monotonic() - started
        self.assertEqual(status, 504, body)
        self.assert_own_page(504, "Gateway Timeout", headers, body)
        self.assertGreaterEqual(elapsed, TIMEOUT_RESPONSE * 0.9)
        self.assertLess(elapsed, 4.0)

    def test_upstream_closing_without_answer_is_502(self) -> None:
        """The origin closes the connection without a response: 502."""
        status, headers, body = self.gateway.get("/close")
        self.assertEqual(status, 502, body)
        self.assert_own_page(502, "Bad Gateway", headers, body)

    def test_still_serving_after_failures(self) -> None:
        """After refused, slow and closed upstreams, the same process serves normally."""
        for path, expected in (("/dead/x", 502), ("/sleep/5", 504), ("/close", 502)):
            status, _, _ = self.gateway.get(path)
            self.assertEqual(status, expected, path)
        self.gateway.assert_serving()
        log = self.gateway.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
