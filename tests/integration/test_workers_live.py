"""Multi-core over loopback: ``--workers 2`` runs a supervisor and two worker processes.

Which worker served a request is read from the access log, whose lines carry
``[worker=N gateway.access#info]``; worker pids from ``worker N started (pid P)``.
Every test is bounded (start, requests, stop) well under 30 s.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from .support import IO_TIMEOUT, Gateway, Origin, accepts, simple_ini, wait_until

WORKERS = 2
#: Requests on fresh connections: with SO_REUSEPORT each lands on a worker
#: picked by a hash of its address; 40 all on one of two is a 2**-39 chance.
SPREAD = 40
STOP_DEADLINE = 15.0
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def worker_pids(log: str) -> dict[int, int]:
    """The latest pid of each worker number, from the log."""
    return {int(number): int(pid) for number, pid in _STARTED.findall(log)}


def serving_workers(log: str, prefix: str) -> set[int]:
    """The workers whose access log shows a request for a path starting with ``prefix``."""
    pattern = rf"\[worker=(\d+) gateway\.access#info\] [^\n]*\"GET {re.escape(prefix)}"
    return {int(number) for number in re.findall(pattern, log)}


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (no such process, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class WorkersLiveTests(SynchronousTestCase):
    """``workers = 2``: both serve, a killed one is replaced, SIGTERM stops them all."""

    def start(self) -> tuple[Gateway, dict[int, int]]:
        """An origin and a two-worker gateway, both workers started: (gateway, pids)."""
        origin = Origin(self, name="origin").start()
        gateway = Gateway(self, simple_ini([origin.url]), args=["--workers", str(WORKERS)])
        gateway.start()
        log = gateway.wait_for_log(_STARTED.pattern, count=WORKERS)
        pids = worker_pids(log)
        self.assertEqual(sorted(pids), list(range(1, WORKERS + 1)), log)
        self.assertNotIn(gateway.pid, pids.values())
        return gateway, pids

    def spread(self, gateway: Gateway, prefix: str) -> set[int]:
        """SPREAD requests on fresh connections; the workers that served them (from the log)."""
        for number in range(SPREAD):
            status, _, body = gateway.get(f"{prefix}{number}")
            self.assertEqual(status, 200, body)

        def logged() -> set[int]:
            text = gateway.log()
            seen = serving_workers(text, prefix)
            return seen if len(re.findall(rf"\"GET {re.escape(prefix)}", text)) >= SPREAD else set()

        return wait_until(logged, IO_TIMEOUT, f"{SPREAD} access log lines")

    def test_both_workers_serve(self) -> None:
        """Requests on fresh connections are served by worker 1 and by worker 2."""
        gateway, _ = self.start()
        self.assertEqual(self.spread(gateway, "/echo/spread/"), {1, 2})

    def test_killed_worker_is_restarted_and_retry_succeeds(self) -> None:
        """SIGKILL to worker 1: a client retrying once sees no failure; a new worker 1 serves."""
        gateway, pids = self.start()
        # Keep-alive connections, some on each worker: those on worker 1 die with it.
        clients = [gateway.connection() for _ in range(6)]
        for client in clients:
            client.request("GET", "/echo/before")
            response = client.getresponse()
            self.assertEqual(response.status, 200)
            response.read()
        os.kill(pids[1], signal.SIGKILL)
        retried = 0
        for number, client in enumerate(clients):
            path = f"/echo/after/{number}"
            try:
                client.request("GET", path)
                response = client.getresponse()
            except (OSError, http.client.HTTPException):
                retried += 1
                client = gateway.connection()
                client.request("GET", path)
                response = client.getresponse()
            self.assertEqual(response.status, 200)
            response.read()

        def restarted() -> int:
            new = worker_pids(gateway.log()).get(1, pids[1])
            return new if new != pids[1] else 0

        new_pid = wait_until(restarted, IO_TIMEOUT, "worker 1 to be restarted")
        wait_until(lambda: gone(pids[1]), IO_TIMEOUT, "the killed worker to be reaped")
        self.assertFalse(gone(new_pid))
        self.assertRegex(gateway.log(), rf"worker 1 \(pid {pids[1]}\) was killed by signal 9")
        # The replacement accepts on worker 1's socket: it serves its share again.
        self.assertIn(1, self.spread(gateway, "/echo/restarted/"))
        self.assertTrue(gateway.alive())

    def test_sigterm_stops_every_process(self) -> None:
        """SIGTERM to the supervisor: it and both workers exit, in time, and the port closes."""
        gateway, pids = self.start()
        self.assertEqual(self.spread(gateway, "/echo/warm/"), {1, 2})
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        try:
            status = gateway.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail(f"the supervisor still runs {STOP_DEADLINE}s after SIGTERM:\n{gateway.log()}")
        self.assertIn(status, (0, -signal.SIGTERM), gateway.log())
        for pid in pids.values():
            self.assertTrue(gone(pid), f"worker pid {pid} still runs")
        log = gateway.log()
        self.assertIn("every worker has stopped", log)
        self.assertEqual(len(re.findall(r"\[worker=\d\] \(TCP Port \d+ Closed\)", log)), WORKERS)
        self.assertFalse(accepts(gateway.port))
