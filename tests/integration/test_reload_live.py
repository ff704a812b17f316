"""SIGHUP reloads the configuration file: ``twistd -n gateway --config FILE`` and real origins.

Two origins tell which backend served (``X-Served-By``); the test rewrites the
file, sends SIGHUP, and waits for the gateway's log to say the reload was
applied (or refused).  With workers, which worker served comes from the access
log (``[worker=N gateway.access#info]``).  Every test is bounded well under 30 s
and stops every process it started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

from twisted.trial.unittest import SynchronousTestCase

from .support import IO_TIMEOUT, Gateway, Origin, accepts, simple_ini, wait_until
from .test_workers_live import gone, serving_workers, worker_pids

STOP_DEADLINE = 15.0


def served_by(gateway: Gateway, path: str) -> str:
    """The origin that answered a GET for ``path`` on a fresh connection."""
    status, headers, body = gateway.get(path)
    assert status == 200, (status, body[:200])
    return headers["X-Served-By"]


class ReloadLiveTests(SynchronousTestCase):
    """One process: SIGHUP swaps the backend; a bad file keeps the old configuration."""

    def setUp(self) -> None:
        self.first = Origin(self, name="first").start()
        self.second = Origin(self, name="second").start()

    def rewrite(self, gateway: Gateway, text: str) -> None:
        """Write ``text`` as the gateway's file, once it serves (its SIGHUP handler is set then).

        The port accepts as soon as it is bound, before the reactor runs and
        the handler is installed; a first answer proves the reactor runs.
        """
        self.assertEqual(served_by(gateway, "/echo/started"), "first")
        with open(gateway.config_path, "w") as file:
            file.write(text)

    def test_new_backend_after_sighup(self) -> None:
        """After SIGHUP requests go to the new origin, on an old keep-alive connection too."""
        gateway = Gateway(self, simple_ini([self.first.url])).start()
        kept = gateway.connection()
        kept.request("GET", "/echo/before")
        response = kept.getresponse()
        response.read()
        self.assertEqual(response.getheader("X-Served-By"), "first")

        self.rewrite(gateway, simple_ini([self.second.url]))
        os.kill(gateway.pid, signal.SIGHUP)
        gateway.wait_for_log(r"reload: applied .*gateway\.ini")
        self.assertEqual(served_by(gateway, "/echo/fresh"), "second")
        kept.request("GET", "/echo/kept")
        response = kept.getresponse()
        response.read()
        self.assertEqual((response.status, response.getheader("X-Served-By")), (200, "second"))

    def test_bad_file_keeps_old_configuration(self) -> None:
        """A bad file on SIGHUP is logged as FILE:LINE [section] key: and the old one serves."""
        gateway = Gateway(self, simple_ini([self.first.url])).start()
        self.rewrite(gateway, simple_ini([self.second.url]) + "nonsense = 1\n")
        os.kill(gateway.pid, signal.SIGHUP)
        log = gateway.wait_for_log(r"reload refused: ")
        self.assertRegex(log, r"gateway\.ini:\d+ \[route:all\] nonsense: unknown key")
        self.assertEqual(served_by(gateway, "/echo/after"), "first")
        self.assertTrue(gateway.alive())

    def test_new_listener_opens_and_removed_one_closes(self) -> None:
        """A listener added by a reload accepts; the one it replaced stops accepting."""
        gateway = Gateway(self, simple_ini([self.first.url])).start()
        old_port = gateway.port
        text = simple_ini([self.first.url]).replace("[listener:web]", "[listener:other]")
        self.rewrite(gateway, text)
        os.kill(gateway.pid, signal.SIGHUP)
        gateway.wait_for_log(r"reload: applied")
        gateway.port = wait_until(lambda: gateway.listening() - {old_port}, IO_TIMEOUT,
                                  "the new listener").pop()
        self.assertEqual(served_by(gateway, "/echo/new-listener"), "first")
        wait_until(lambda: not accepts(old_port), IO_TIMEOUT, "the old listener to close")


class WorkersReloadLiveTests(SynchronousTestCase):
    """``workers = 2``: a reload starts two new workers on the new file; the old ones drain."""

    def test_reload_reaches_every_worker(self) -> None:
        """Both new workers use the new backend, the old ones exit, nothing fails, SIGTERM ends all."""
        first = Origin(self, name="first").start()
        second = Origin(self, name="second").start()
        workers_ini = "[gateway]\nworkers = 2\n\n"
        gateway = Gateway(self, workers_ini + simple_ini([first.url])).start()
        old = worker_pids(gateway.wait_for_log(r"worker \d+ started \(pid \d+\)", count=2))
        self.assertEqual(sorted(old), [1, 2])

        failures: list[str] = []
        served: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    served.append(served_by(gateway, "/echo/during"))
                except Exception as exc:  # any failure is what the test looks for
                    failures.append(repr(exc))

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        self.addCleanup(thread.join, IO_TIMEOUT)
        self.addCleanup(stop.set)
        wait_until(lambda: len(served) >= 5, IO_TIMEOUT, "requests before the reload")

        with open(gateway.config_path, "w") as file:
            file.write(workers_ini + simple_ini([second.url]))
        os.kill(gateway.pid, signal.SIGHUP)
        gateway.wait_for_log(r"reload: applied .*generation 2")
        gateway.wait_for_log(r"every worker of the previous generation has stopped")
        for pid in old.values():
            wait_until(lambda: gone(pid), IO_TIMEOUT, f"old worker {pid} to be reaped")
        count = len(served)
        wait_until(lambda: len(served) >= count + 5, IO_TIMEOUT, "requests after the reload")
        stop.set()
        thread.join(IO_TIMEOUT)
        self.assertEqual(failures, [])
        self.assertEqual(served[-1], "second")

        # Fresh connections spread over both new workers; each used the new origin.
        for number in range(40):
            self.assertEqual(served_by(gateway, f"/echo/after/{number}"), "second")
        log = wait_until(
            lambda: (lambda text: text if len(re.findall(r'"GET /echo/after/', text)) >= 40
                     else "")(gateway.log()),
            IO_TIMEOUT, "40 access lines",
        )
        self.assertEqual(serving_workers(log, "/echo/after/"), {1, 2})
        after = re.findall(r"\[worker=\d gateway\.access#info\] [^\n]*\"GET /echo/after/"
                           r"[^\n]*upstream=127\.0\.0\.1:(\d+)", log)
        self.assertEqual(set(after), {str(second.port)})
        new = worker_pids(log)
        self.assertFalse(set(new.values()) & set(old.values()))

        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        try:
            gateway.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail(f"the supervisor still runs {STOP_DEADLINE}s after SIGTERM")
        for pid in new.values():
            self.assertTrue(gone(pid), f"worker pid {pid} still runs")
        self.assertIn("every worker has stopped", gateway.log())
