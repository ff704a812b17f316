"""One cache directory shared by two worker processes, over real sockets.

A real ``twistd gateway`` with ``workers = 2`` and a caching route in front of
the counting origin (tests/integration/origin.py). Requests on fresh
connections land on either worker; which one served a request is read from
the access log (``[worker=N gateway.access#info]``). Each request carries a
``round`` query parameter that the route leaves out of the cache key
(``cache_key_drop_params``), so the log tells requests apart while they all
share one entry. The test reads the cache journal itself
(:class:`gateway.cache.journal.Journal`) to know when a commit was announced:
the entry is committed just after the last byte went to the client, so a
request sent at once could race it. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import time

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.journal import JOURNAL_NAME, Change, Journal, Op

from .support import IO_TIMEOUT, Gateway, Origin, new_tempdir, wait_until
from .test_cache_live import cache_ini, fetch, target

WORKERS = 2
#: Requests on fresh connections per batch; batches go on (within
#: SPREAD_TIMEOUT) until both workers have served some.
BATCH = 20
SPREAD_TIMEOUT = 15.0
PATH = target("shared", "max-age=600")


class SharedDirectoryTests(SynchronousTestCase):
    """``workers = 2`` on one ``cache_dir``: what one worker stored, the other serves."""

    def setUp(self) -> None:
        self.origin = Origin(self).start()
        self.directory = new_tempdir(self)
        ini = cache_ini(
            [self.origin.url], self.directory,
            gateway={"workers": WORKERS, "cache_purge_from": "127.0.0.1"},
            route={"cache_key_drop_params": "round"},
        )  # fmt: skip
        self.gateway = Gateway(self, ini).start()
        self.gateway.wait_for_log(r"worker \d+ started \(pid \d+\)", count=WORKERS)
        self.journal = Journal(os.path.join(self.directory, JOURNAL_NAME))
        self.journal.open()

    def committed(self) -> None:
        """Wait until a worker announced a commit in the journal."""
        wait_until(
            lambda: any(isinstance(r, Change) and r.op is Op.ADDED for r in self.journal.read().records),
            IO_TIMEOUT, "a commit in the cache journal",
        )  # fmt: skip

    def served_by(self, name: str, count: int) -> set[int]:
        """The workers whose access log shows round ``name``, once all ``count`` of its requests are there."""

        def logged() -> set[int]:
            found = re.findall(rf"\[worker=(\d+) gateway\.access#info\] [^\n]*round={name}-\d+ ", self.gateway.log())
            return {int(n) for n in found} if len(found) >= count else set()

        return wait_until(logged, IO_TIMEOUT, f"{count} access log lines of round {name}")

    def hits_on_both(self, name: str, body: bytes) -> set[int]:
        """Batches of fresh-connection GETs, each a hit answering ``body``, until both workers served some."""
        deadline = time.monotonic() + SPREAD_TIMEOUT
        sent = 0
        seen: set[int] = set()
        while len(seen) < WORKERS and time.monotonic() < deadline:
            for _ in range(BATCH):
                status, headers, got = fetch(self.gateway.port, f"{PATH}&round={name}-{sent}")
                sent += 1
                self.assertEqual((status, got), (200, body))
                self.assertRegex(headers["cache-status"], r"^gateway; hit;", f"request {sent} of round {name}")
            seen = self.served_by(name, sent)
        return seen

    def test_entry_filled_by_one_worker_is_a_hit_on_the_other(self) -> None:
        """One origin request fills the entry; fresh connections served by either worker are all hits."""
        status, headers, body = fetch(self.gateway.port, f"{PATH}&round=fill-0")
        self.assertEqual(status, 200)
        self.assertIn("stored", headers["cache-status"])
        self.committed()
        self.assertEqual(self.hits_on_both("hit", body), {1, 2}, self.gateway.log()[-3000:])
        self.assertEqual(self.origin.hits()["/cache/shared"], 1)

    def test_purge_on_one_worker_reaches_both(self) -> None:
        """A PURGE served by either worker empties both indexes: one refetch, then hits on both again."""
        _, _, first = fetch(self.gateway.port, f"{PATH}&round=fill-0")
        self.committed()
        status, _, answer = fetch(self.gateway.port, "/cache/shared*", method="PURGE")
        self.assertEqual((status, answer), (200, b"purged 1\n"))
        status, headers, second = fetch(self.gateway.port, f"{PATH}&round=refill-0")
        self.assertEqual(status, 200)
        self.assertIn("fwd=uri-miss", headers["cache-status"])
        self.assertNotEqual(second, first)
        self.committed()
        self.assertEqual(self.hits_on_both("after", second), {1, 2}, self.gateway.log()[-3000:])
        self.assertEqual(self.origin.hits()["/cache/shared"], 2)
